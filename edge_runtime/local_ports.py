"""A free TCP port on this machine, for a local broker or server started next (the demo's line, the tests)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now; another process may take it before the caller binds it, so a caller
    that must not fail retries on another port."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
