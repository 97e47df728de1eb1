"""Service fixtures: an MQTT listener, recorded parts on disk, configs and services started in a thread."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"
PART_SIZE = (192, 160)  # width, height of the recorded frames; not the model size, so boxes are scaled


def wait_until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    """Poll until the predicate holds; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Listener:
    """A PLC-like subscriber that records every message under the device's topics."""

    def __init__(self, port: int, prefix: str, client_id: str = "listener", persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.prefix = prefix
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        self.client.on_connect = lambda client, *_: client.subscribe(f"{prefix}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def payloads(self, suffix: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p in self.messages if t.endswith(suffix) and p]

    def raw(self, part: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p in self.messages if part in t]

    def wait_for(self, predicate, timeout: float, what: str) -> None:  # noqa: ANN001
        wait_until(predicate, timeout, what)

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.wait_for(self.client.is_connected, 15, "the listener to be connected")
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listen() -> Iterator:
    opened: list[Listener] = []

    def open_listener(port: int, prefix: str, **kwargs) -> Listener:
        listener = Listener(port, prefix, **kwargs)
        opened.append(listener)
        listener.wait_for(lambda: listener.client.is_connected(), 10, "the listener to connect")
        time.sleep(0.2)  # the subscription is sent right after CONNACK
        return listener

    yield open_listener
    for listener in opened:
        listener.close()


@pytest.fixture(scope="session")
def recorded_parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """3 good and 3 defective real magnetic-tile images, grayscale PNG (lossless, so GStreamer decodes exactly
    the pixels the test inspects directly) at one size, named for multifilesrc."""
    root = DATASETS / "magnetic_tile" / "test"
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"dataset {root} is missing on CI")
        pytest.skip(f"dataset {root} not present")
    chosen = sorted((root / "good").glob("*.jpg"))[3:6] + sorted((root / "blowhole").glob("*.jpg"))[3:5]
    chosen += sorted((root / "crack").glob("*.jpg"))[3:4]
    folder = tmp_path_factory.mktemp("recorded")
    paths = []
    for index, source in enumerate(chosen):
        image = cv2.resize(cv2.imread(str(source), cv2.IMREAD_GRAYSCALE), PART_SIZE, interpolation=cv2.INTER_AREA)
        path = folder / f"part_{index:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


@pytest.fixture
def make_config(tmp_path: Path, slot: Path):
    """A raw runtime config dict for the tiny bundle and a given broker port, with overrides merged in."""

    def build(port: int, **overrides) -> dict:
        base = {
            "bundle": {"slot": str(slot)},
            "state_dir": str(tmp_path / "state"),
            "camera": {
                "pipeline": "videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=10/1",
                "frame_timeout_s": 3,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1,
            },
            "mode": {"kind": "continuous", "max_fps": 5},
            "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "test", "device_id": "cam1", "reconnect_max_s": 2},
            "heatmaps": {"publish": "off"},
            "stats_interval_s": 1,
            "openvino": {"threads": 1},
            "metrics": {"port": 0},  # any free port: tests (and other test runs) must not collide on 9464
        }
        return deep_merge(base, overrides)

    return build


@pytest.fixture(scope="session")
def shared_inspector(slot: Path):
    """One compiled inspector for every in-process service (compiling is the slow part of a start)."""
    from edge_runtime.inspector import Inspector
    from edge_runtime.openvino_networks import RuntimeOptions

    return Inspector.from_slot(slot, RuntimeOptions(threads=1))


@pytest.fixture
def run_service(shared_inspector, service_threads):
    """Start a Service in a thread from a raw config dict, with the observers `run` attaches (the operator view
    when the config enables it, the systemd link under $NOTIFY_SOCKET); it is stopped (and must end) after the
    test."""
    from edge_runtime.service.observers import standard_observers
    from edge_runtime.service.service_config import parse_config

    def start(raw: dict):  # noqa: ANN202
        config = parse_config(raw, "test config")
        return service_threads.start(config, shared_inspector, standard_observers(config))

    return start


class SmallDisk:
    """A 2 MiB tmpfs mounted for one test, which the test can fill up and free again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write a filler file until the file system refuses more."""
        with self.filler.open("ab", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 1024)
            except OSError:
                pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """Needs root (mount); skipped with the reason otherwise."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield SmallDisk(folder)
    subprocess.run(["umount", "-l", str(folder)], check=False)
