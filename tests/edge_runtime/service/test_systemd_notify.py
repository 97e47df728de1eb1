"""The systemd notification client against real datagram sockets, and the service under a test's NOTIFY_SOCKET:
READY only once a part is inspected, WATCHDOG while the frame loop turns (and not when it is stuck), STOPPING."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edge_runtime.service.service_config import parse_config
from edge_runtime.service.systemd_notify import (
    CameraProgress,
    SystemdLink,
    SystemdNotifier,
    socket_address,
    watchdog_interval,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
# The camera's first frame comes only after this long: READY before it would be too early.
FIRST_FRAME_DELAY_S = 3
DELAYED_CAMERA = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=10/1 "
    f"! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 min-threshold-time={FIRST_FRAME_DELAY_S}000000000"
)


class Receiver:
    """The systemd side: a bound datagram socket; a thread records (arrival time, fields) of every message."""

    def __init__(self, address: str | bytes) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.socket.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.socket.recv(4096)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def received(self, key: str | None = None) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if key is None or key in m]

    def wait_for(self, key: str, timeout: float, count: int = 1) -> list[tuple[float, dict[str, str]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(key)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no {count} x {key} within {timeout} s; got {self.received()}")

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.socket.close()


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A short path: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer."""
    folder = tempfile.mkdtemp(prefix="sd-")
    yield os.path.join(folder, "notify")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def receiver(socket_path: str) -> Iterator[Receiver]:
    listening = Receiver(socket_path)
    yield listening
    listening.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the client --------------------------------------------------------------------------------------------


def test_ready_status_and_stopping_reach_a_path_socket(receiver, socket_path):
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": socket_path})
    assert notifier.active
    assert notifier.ready("inspecting, 1 part\nmodel 1.0.0")
    assert notifier.status("camera lost")
    assert notifier.stopping("stopping")
    receiver.wait_for("STOPPING", 2)
    fields = [m for _, m in receiver.received()]
    assert fields == [
        {"READY": "1", "STATUS": "inspecting, 1 part model 1.0.0"},  # one line: a newline would be a new field
        {"STATUS": "camera lost"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_abstract_socket_names_start_with_an_at_sign():
    name = f"d3ad-test-{secrets.token_hex(4)}"
    listening = Receiver(b"\0" + name.encode())
    try:
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.address == b"\0" + name.encode()
        assert notifier.ready()
        assert listening.wait_for("READY", 2)[0][1] == {"READY": "1"}
    finally:
        listening.close()


def test_nothing_happens_outside_systemd():
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"NOTIFY_SOCKET": "vsock:2:9"}):
        notifier = SystemdNotifier.from_environment({**environ, "WATCHDOG_USEC": "1000000"})
        assert not notifier.active
        assert notifier.watchdog_interval_s is None
        assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
    assert socket_address("@") is None


def test_watchdog_interval_honours_watchdog_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=42) is None, "another's"
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"}, pid=1)
    assert notifier.watchdog_interval_s == 2.0


def test_watchdog_is_sent_at_most_every_half_interval(receiver, socket_path):
    clock = FakeClock()
    notifier = SystemdNotifier(socket_path, watchdog_interval_s=2.0, clock=clock)
    sent_at = []
    for _ in range(20):  # 5 s of ticks every 0.25 s
        if notifier.watchdog():
            sent_at.append(clock.now - 100.0)
        clock.now += 0.25
    assert sent_at == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(receiver.wait_for("WATCHDOG", 2, count=5)) == 5


def test_a_failed_send_is_not_fatal_and_not_counted_as_fed(socket_path):
    clock = FakeClock()
    notifier = SystemdNotifier(socket_path, watchdog_interval_s=2.0, clock=clock)
    assert not notifier.watchdog(), "nobody listens yet"
    listening = Receiver(socket_path)
    try:
        assert notifier.watchdog(), "tried again at once, not after the rate limit"
        listening.wait_for("WATCHDOG", 2)
    finally:
        listening.close()


# --- the link, with a stand-in service and a notifier that records instead of sending ----------------------------


class RecordingNotifier(SystemdNotifier):
    def __init__(self, clock: FakeClock, watchdog_interval_s: float | None = None) -> None:
        super().__init__(None, clock=clock)
        self.watchdog_interval_s = watchdog_interval_s
        self.sent: list[tuple[float, dict[str, str]]] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append((self.clock(), dict(a.split("=", 1) for a in assignments)))
        return True

    def times(self, key: str) -> list[float]:
        return [t for t, fields in self.sent if key in fields]

    def fields(self, key: str) -> list[dict[str, str]]:
        return [fields for _, fields in self.sent if key in fields]


def stand_in_service(kind: str, frames_in: int = 0) -> SimpleNamespace:
    config = parse_config({"bundle": {"slot": "unused"}, "mode": {"kind": kind}}, "test")
    service = SimpleNamespace(config=config, source=SimpleNamespace(frames_in=frames_in, reconnects=0))
    service.status_payload = lambda: {
        "state": "running" if service.source.frames_in else "starting",
        "model_version": "1.2.0",
        "camera": {
            "state": "streaming",
            "frames_in": service.source.frames_in,
            "reconnects": service.source.reconnects,
        },
        "last_error": None,
    }
    service.publisher_alive = lambda: True
    return service


def started_link(service: SimpleNamespace, notifier: RecordingNotifier, clock: FakeClock) -> SystemdLink:
    """The link as a service starts it; the loading STATUS that `starting` sends is set aside."""
    link = SystemdLink(notifier, clock)
    link.starting(service)
    assert [fields["STATUS"] for fields in notifier.fields("STATUS")] == [
        "loading and warming up the model (compiling can take minutes on first start)"
    ]
    notifier.sent.clear()
    return link


def test_continuous_mode_is_ready_after_the_first_inspected_part():
    service = stand_in_service("continuous", frames_in=3)
    notifier = RecordingNotifier(FakeClock())
    link = started_link(service, notifier, notifier.clock)
    link.on_tick()
    assert not link.ready and notifier.fields("READY") == [], "frames alone are not enough: no part inspected yet"
    status = notifier.fields("STATUS")[0]["STATUS"]
    assert status == "model 1.2.0 loaded, waiting for the first inspected part (camera streaming)"
    link.on_result(None)
    assert link.ready
    assert notifier.fields("READY") == [{"READY": "1", "STATUS": "inspecting, 1 part, model 1.2.0"}]
    link.on_result(None)
    link.on_tick()
    assert len(notifier.fields("READY")) == 1, "READY is sent once"


def test_triggered_mode_is_ready_once_a_frame_arrived():
    service = stand_in_service("triggered")
    notifier = RecordingNotifier(FakeClock())
    link = started_link(service, notifier, notifier.clock)
    link.on_tick()
    assert not link.ready
    assert notifier.fields("STATUS")[0]["STATUS"].startswith("model 1.2.0 loaded, waiting for the first frame")
    service.source.frames_in = 1
    link.on_tick()
    assert notifier.fields("READY") == [{"READY": "1", "STATUS": "waiting for triggers, 0 parts, model 1.2.0"}]


def test_watchdog_starves_when_the_camera_thread_stops_moving():
    clock = FakeClock()
    notifier = RecordingNotifier(clock, watchdog_interval_s=2.0)
    service = stand_in_service("continuous", frames_in=1)
    link = started_link(service, notifier, clock)
    limit = link.camera.limit_s
    assert limit == 5.0 + 30.0 + 30.0, "frame timeout + longest reconnect backoff + grace"
    hang_at = 20.0  # the camera delivers a frame every 0.5 s, then its thread hangs
    while clock.now - 100.0 < hang_at + limit + 10:
        if clock.now - 100.0 < hang_at:
            service.source.frames_in += 1
        link.on_tick()
        clock.now += 0.5
    fed = [t - 100.0 for t in notifier.times("WATCHDOG")]
    assert fed == [float(second) for second in range(len(fed))], "fed every half interval while it moved"
    last_frame = hang_at - 0.5
    assert last_frame + limit - 1.0 < fed[-1] <= last_frame + limit


def test_camera_progress_counts_frames_and_reconnects():
    clock = FakeClock()
    progress = CameraProgress(10.0, clock)
    assert progress.alive(0, 0)
    clock.now += 10.0
    assert progress.alive(0, 0)
    clock.now += 0.1
    assert not progress.alive(0, 0)
    assert progress.alive(0, 1), "a reconnect attempt is progress"
    clock.now += 5
    assert progress.alive(1, 1)


# --- the real service ------------------------------------------------------------------------------------------


def test_service_watchdog_stops_while_the_frame_loop_is_stuck(
    receiver, socket_path, broker, make_config, run_service, monkeypatch
):
    monkeypatch.setenv("NOTIFY_SOCKET", socket_path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # fed every 0.2 s
    service = run_service(make_config(broker.port))
    receiver.wait_for("READY", 20)
    receiver.wait_for("WATCHDOG", 5, count=3)

    stuck, release = threading.Event(), threading.Event()

    def hang() -> None:  # a hung inference as the frame loop sees it: the turn never ends
        stuck.set()
        release.wait(20)

    service.tick_listeners.append(hang)
    try:
        assert stuck.wait(5), "the frame loop reached the hanging listener"
        receiver.clear()
        time.sleep(1.2)  # six watchdog intervals' halves
        assert receiver.received("WATCHDOG") == [], "a stuck loop must starve the watchdog"
    finally:
        service.tick_listeners.remove(hang)
        release.set()
    receiver.wait_for("WATCHDOG", 3, count=2)


def test_service_in_triggered_mode_is_ready_without_a_trigger(
    receiver, socket_path, broker, make_config, run_service, monkeypatch
):
    monkeypatch.setenv("NOTIFY_SOCKET", socket_path)
    service = run_service(make_config(broker.port, mode={"kind": "triggered"}))
    ready = receiver.wait_for("READY", 20)
    assert service.source.frames_in >= 1
    assert ready[0][1]["STATUS"].endswith(f"0 parts, model {service.inspector.model_version}")
    assert receiver.received("WATCHDOG") == [], "no WATCHDOG_USEC, no watchdog"


def test_run_under_a_notify_socket_sends_ready_after_the_first_part_then_watchdog_then_stopping(
    receiver, socket_path, broker, listen, make_config, tmp_path
):
    raw = make_config(broker.port, camera={"pipeline": DELAYED_CAMERA, "frame_timeout_s": 10})
    config = tmp_path / "inspector.yaml"
    config.write_text(yaml.safe_dump(raw))
    listener = listen(broker.port, "test")
    environ = {**os.environ, "NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "1000000"}
    environ.pop("WATCHDOG_PID", None)
    command = [sys.executable, "-m", "edge_runtime", "run", "--config", str(config)]
    log = tmp_path / "service.log"  # a file, not a pipe: a full pipe would stall the service's logging
    with log.open("w") as output:
        process = subprocess.Popen(command, env=environ, cwd=REPO_ROOT, stdout=output, stderr=output)
    try:
        ready_at, ready = receiver.wait_for("READY", 90)[0]
        # The loop was up (waiting for the camera) well before: READY came with the first part, not the model.
        statuses = receiver.received("STATUS")
        assert statuses[0][1]["STATUS"].startswith("loading")
        waiting_at = next(t for t, m in statuses if "waiting for the first frame" in m["STATUS"])
        assert ready_at - waiting_at >= FIRST_FRAME_DELAY_S - 1.0
        assert ready["STATUS"].startswith("inspecting, 1 part, model ")
        listener.wait_for(lambda: listener.payloads("/result"), 10, "the first result")
        assert listener.payloads("/result")[0]["part_id"].endswith("-1")

        watchdog = receiver.wait_for("WATCHDOG", 10, count=6)
        fed_at = [t for t, _ in watchdog[-4:]]
        gaps = [later - earlier for earlier, later in zip(fed_at, fed_at[1:], strict=False)]
        # Every half interval (the rate limit), and always within the interval (systemd would not kill it).
        assert all(0.45 <= gap < 1.0 for gap in gaps), f"fed every half second: {gaps}"
        assert not receiver.received("STOPPING")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stopping = receiver.wait_for("STOPPING", 2)[0][1]
    assert stopping["STATUS"].startswith("stopping, ")
    assert len(receiver.received("READY")) == 1


def test_watchdog_starves_when_the_publisher_thread_stops():
    clock = FakeClock()
    notifier = RecordingNotifier(clock, watchdog_interval_s=2.0)
    service = stand_in_service("continuous", frames_in=1)
    publisher_alive = [True]
    service.publisher_alive = lambda: publisher_alive[0]
    link = started_link(service, notifier, clock)
    for step in range(20):
        if step == 10:
            publisher_alive[0] = False  # results would pile up unsent until a restart
        service.source.frames_in += 1
        link.on_tick()
        clock.now += 0.5
    fed = [t - 100.0 for t in notifier.times("WATCHDOG")]
    assert fed and max(fed) < 5.0, f"fed at {fed}: not after the publisher stopped"
