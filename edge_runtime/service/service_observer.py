"""What a running service tells the observers attached to it (the operator view, the systemd link), and what
they may read of it. The service knows observers only through `ServiceObserver`; observers know the service only
through `ServiceView`, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime.preprocess import to_uint8_image
from edge_runtime.service.messages import heatmap_jpeg

if TYPE_CHECKING:  # types only: observers need neither OpenVINO nor GStreamer loaded to import this module
    from edge_runtime.inspector import Inspector
    from edge_runtime.results import InspectionResult
    from edge_runtime.service.frames import Frame
    from edge_runtime.service.service_config import ServiceConfig
    from edge_runtime.service.service_metrics import ServiceMetrics


@dataclass(frozen=True)
class InspectedPart:
    """One part that went through the inspector and into the outbox; handed to every result listener."""

    part_id: str
    frame: Frame
    result: InspectionResult
    latency_ms: float
    payload: dict[str, Any]  # the JSON published on `result`
    inspector: Inspector  # the model that judged it (models can be swapped between frames)

    def overlay_jpeg(self, quality: int) -> bytes:
        """The heatmap overlay at model size (where the map and boxes live), drawn with the judging model."""
        model_image = to_uint8_image(self.inspector.prepare(self.frame.image))
        return heatmap_jpeg(model_image, self.result, self.inspector.calibration.pixel_threshold, quality)


class ObserverUnavailable(Exception):
    """Raised by `ServiceObserver.starting` when the observer cannot run (e.g. its port is taken): the service
    goes on without it and reports the message as `last_error`; results matter more than any observer."""


class ServiceView(Protocol):
    """The read-only face of a running service."""

    @property
    def config(self) -> ServiceConfig: ...

    @property
    def stats(self) -> ServiceMetrics:
        """The service's metrics registry: every counter, read by the stats message, the page and /metrics."""
        ...

    def status_payload(self) -> dict[str, Any]:
        """What the `status` topic carries now (state, model version, camera state and counters, last error)."""
        ...

    def delivery_problem(self) -> str | None:
        """What keeps results from going out (publisher thread ended or hangs, outbox cannot record acks)."""
        ...

    def publisher_alive(self) -> bool:
        """Whether the publisher thread runs and turns (a restart would mend it otherwise)."""
        ...


class ServiceObserver(Protocol):
    """Called by the service: `starting` once at the start of `run()`, before the model is loaded; `on_tick` at
    every turn of the frame loop (at least every 0.2 s) and `on_result` after each part is stored, both in the
    frame thread, so they must be quick and should not raise; `stopping` once, first thing at shutdown."""

    def starting(self, service: ServiceView) -> None: ...

    def on_tick(self) -> None: ...

    def on_result(self, part: InspectedPart) -> None: ...

    def stopping(self) -> None: ...
