"""Telling systemd what the service does: a small sd_notify client (READY, STATUS, WATCHDOG, STOPPING over the
datagram socket named by $NOTIFY_SOCKET) and the link that drives it from a running service (a ServiceObserver,
attached by whoever builds the service).

Readiness: in continuous mode READY=1 is sent once the model is loaded and warmed up and the first camera frame
has been inspected and stored; in triggered mode, where parts are inspected only on command, once the model is
loaded and warmed up and the first camera frame has arrived. The watchdog is fed from the frame loop's ticks, so a
hung inference or a wedged loop starves it; it is also starved when the camera thread stops making progress (no
frame and no reconnect attempt for far longer than its own timeouts allow), since only a restart frees a thread
stuck inside GStreamer. Outside systemd (no $NOTIFY_SOCKET) nothing is sent and nothing is attached."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_runtime.service.service_observer import InspectedPart, ServiceView

log = logging.getLogger(__name__)

Address = str | bytes
Clock = Callable[[], float]

STATUS_INTERVAL_S = 2.0  # how often the STATUS line is refreshed while running (only sent when it changed)
CAMERA_GRACE_S = 30.0  # on top of the camera's own timeouts: slow pipeline state changes are not a stall
_MAX_STATUS_CHARS = 200


# --- the protocol ------------------------------------------------------------------------------------------


def socket_address(value: str) -> Address | None:
    """The address $NOTIFY_SOCKET names: a filesystem path, or '@name' for Linux's abstract namespace."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket name; not notifying", value)
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds from $WATCHDOG_USEC, or None when there is no watchdog for this process ($WATCHDOG_PID names
    another process, e.g. when the variables were inherited from a parent)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if owner and owner != str(pid):
        return None
    try:
        interval = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; not feeding a watchdog", usec)
        return None
    return interval / 1_000_000 if interval > 0 else None


def one_line(text: str) -> str:
    """STATUS is one line of the datagram; newlines would start a new assignment."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_STATUS_CHARS else flat[: _MAX_STATUS_CHARS - 3] + "..."


class SystemdNotifier:
    """Sends notifications to systemd; every method is a no-op returning False when not under systemd.
    The socket is non-blocking: a full queue costs one message (retried by the caller), never a stalled frame."""

    def __init__(
        self, address: Address | None, watchdog_interval_s: float | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s if address is not None else None
        self.clock = clock
        self._last_fed: float | None = None
        self._lock = threading.Lock()
        self._failures = 0
        self._socket: socket.socket | None = None
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> SystemdNotifier:
        environ = os.environ if environ is None else environ
        address = socket_address(environ.get("NOTIFY_SOCKET", ""))
        return cls(address, watchdog_interval(environ, os.getpid() if pid is None else pid))

    @property
    def active(self) -> bool:
        return self._socket is not None

    def notify(self, *assignments: str) -> bool:
        """Send 'KEY=value' lines in one datagram; True when it was handed to the socket."""
        if self._socket is None:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            if self._socket is None:  # closed meanwhile
                return False
            try:
                self._socket.sendto(message, self.address)
            except OSError as error:
                self._failures += 1
                # Once loudly, then quietly: a missing listener would otherwise fill the log at every tick.
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                log.log(level, "systemd notification %s failed: %s", assignments[0], error)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status_lines(status))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status_lines(status))

    def watchdog(self) -> bool:
        """WATCHDOG=1 at most every half interval; True when one was sent now."""
        if self.watchdog_interval_s is None:
            return False
        now = self.clock()
        if self._last_fed is not None and now - self._last_fed < self.watchdog_interval_s / 2:
            return False
        if not self.notify("WATCHDOG=1"):
            return False  # not counted as fed: the next tick tries again
        self._last_fed = now
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    @staticmethod
    def _status_lines(status: str | None) -> list[str]:
        return [] if status is None else [f"STATUS={one_line(status)}"]


# --- the link to a running service -------------------------------------------------------------------------


class CameraProgress:
    """Whether the camera thread still moves: a new frame or a reconnect attempt within `limit_s` seconds."""

    def __init__(self, limit_s: float, clock: Clock = time.monotonic) -> None:
        self.limit_s = limit_s
        self.clock = clock
        self._seen: tuple[int, int] | None = None
        self._moved_at = clock()

    def alive(self, frames_in: int, reconnects: int) -> bool:
        now = self.clock()
        if (frames_in, reconnects) != self._seen:
            self._seen = (frames_in, reconnects)
            self._moved_at = now
        return now - self._moved_at <= self.limit_s


class SystemdLink:
    """A ServiceObserver that drives a SystemdNotifier; `on_result` and `on_tick` are called in the frame thread."""

    def __init__(self, notifier: SystemdNotifier, clock: Clock = time.monotonic) -> None:
        self.notifier = notifier
        self.clock = clock
        self.parts = 0
        self.ready = False
        self._service: ServiceView | None = None
        self.camera: CameraProgress | None = None  # the camera config's timeouts set its limit (starting)
        self._camera_stalled = False
        self._publisher_stalled = False
        self._sent_status = ""
        self._next_status = 0.0

    @property
    def service(self) -> ServiceView:
        if self._service is None:
            raise RuntimeError("the systemd link is not started")
        return self._service

    def starting(self, service: ServiceView) -> None:
        self._service = service
        camera = service.config.camera
        limit = camera.frame_timeout_s + camera.reconnect_max_s + CAMERA_GRACE_S
        self.camera = CameraProgress(limit, self.clock)
        self._send_status("loading and warming up the model (compiling can take minutes on first start)")

    def on_result(self, part: InspectedPart) -> None:
        self.parts += 1
        self._maybe_ready()

    def on_tick(self) -> None:
        self._maybe_ready()
        if self._camera_moves() and self._publisher_moves():
            self.notifier.watchdog()
        if self.clock() >= self._next_status:
            self._next_status = self.clock() + STATUS_INTERVAL_S
            self._send_status(self.status_text())

    def stopping(self) -> None:
        self.notifier.stopping(self.status_text())
        self.notifier.close()

    def ready_condition(self) -> bool:
        """Continuous: a part was inspected and stored. Triggered: a camera frame arrived (the model was warmed
        up on the bundle's reference images before the frame loop started)."""
        if self.service.config.mode.kind == "continuous":
            return self.parts > 0
        return self.service.status_payload()["camera"]["frames_in"] > 0

    def status_text(self) -> str:
        """One line for `systemctl status`, e.g. 'inspecting, 1234 parts, model 1.2.0'."""
        status = self.service.status_payload()
        if not self.ready and status["state"] in ("starting", "running"):
            camera = status["camera"]
            awaited = "frame" if camera["frames_in"] == 0 else "inspected part"
            text = f"model {status['model_version']} loaded, waiting for the first {awaited} (camera {camera['state']})"
            return text + (f"; last error: {status['last_error']}" if status["last_error"] else "")
        return self._running_text(status)

    def _running_text(self, status: dict[str, Any]) -> str:
        triggered = self.service.config.mode.kind == "triggered"
        state = status["state"]
        doing = {
            "running": "waiting for triggers" if triggered else "inspecting",
            "camera_lost": f"camera lost ({status['last_error']})",
        }.get(state, state)
        parts = f"{self.parts} part" + ("" if self.parts == 1 else "s")
        return f"{doing}, {parts}, model {status['model_version']}"

    def _maybe_ready(self) -> None:
        if self.ready or not self.ready_condition():
            return
        text = self._running_text(self.service.status_payload())
        self.ready = self.notifier.ready(text)  # a failed send is retried at the next tick
        if self.ready:
            self._sent_status = one_line(text)

    def _camera_moves(self) -> bool:
        assert self.camera is not None
        camera = self.service.status_payload()["camera"]
        if camera["state"] == "stopped":  # not started yet, or stopping: nothing to stall
            return True
        alive = self.camera.alive(camera["frames_in"], camera["reconnects"])
        if not alive and not self._camera_stalled:
            log.error(
                "the camera thread made no progress for %.0f s; no longer feeding the systemd watchdog, so the "
                "service gets restarted",
                self.camera.limit_s,
            )
        self._camera_stalled = not alive
        return alive

    def _publisher_moves(self) -> bool:
        """A publisher thread that ended or hangs sends nothing more until a restart, so stop feeding."""
        alive = self.service.publisher_alive()
        if not alive and not self._publisher_stalled:
            log.error("the publisher thread has stopped; no longer feeding the systemd watchdog")
        self._publisher_stalled = not alive
        return alive

    def _send_status(self, text: str) -> None:
        text = one_line(text)
        if text != self._sent_status and self.notifier.status(text):
            self._sent_status = text


def systemd_link(notifier: SystemdNotifier | None = None) -> SystemdLink | None:
    """The observer that links a service to systemd when it runs under it ($NOTIFY_SOCKET set); None otherwise."""
    notifier = notifier or SystemdNotifier.from_environment()
    if not notifier.active:
        return None
    return SystemdLink(notifier)
