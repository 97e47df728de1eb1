"""The soak's defaults, in a module of their own so that the command line can show them without importing the soak
(and with it the broker client and the dataset code)."""

DURATION_S = 600.0
OUTAGE_S = 60.0
# Faster than the service inspects (a 256 px gated bundle keeps up with 30 fps on two cores), so that it runs at its
# full rate and drops the rest: the steady soak then measures that rate.
CAMERA_FPS = 60.0
