"""Exactly once and in order through a lost connection and through a kill -9 of the publishing process, against
a real mosquitto: results in flight when the connection drops, and half-finished QoS 2 exchanges that a killed
process leaves in its broker session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from edge_runtime.service.mqtt_topics import Topics
from edge_runtime.service.outbox import Outbox
from edge_runtime.service.publisher import Publisher
from edge_runtime.service.service_config import MqttConfig
from tests.edge_runtime.service.conftest import REPO_ROOT, wait_until

RESULT = "test/cam1/result"


def add_results(outbox: Outbox, first: int, count: int) -> None:
    for i in range(first, first + count):
        outbox.add(f"p{i}", RESULT, f'{{"part_id": "p{i}"}}'.encode())


def part_ids(listener) -> list[str]:  # noqa: ANN001
    return [r["part_id"] for r in listener.payloads("/result")]


def start_publisher(port: int, outbox: Outbox, **mqtt) -> Publisher:
    config = MqttConfig(host="127.0.0.1", port=port, prefix="test", device_id="cam1", **mqtt)
    publisher = Publisher(config, Topics("test", "cam1"), outbox, lambda topic, payload: None)
    publisher.start()
    return publisher


@pytest.mark.parametrize("settings", [{}, {"qos": 1, "inflight": 20}], ids=["defaults", "qos1-inflight20"])
def test_results_in_flight_when_the_connection_drops_keep_their_place(broker, listen, tmp_path, settings):
    listener = listen(broker.port, "test")
    outbox = Outbox(tmp_path / "outbox.sqlite", max_rows=1000, max_age_s=3600)
    # The listener reconnects within 1 s, the publisher after 3 s: it is subscribed again before results come.
    publisher = start_publisher(broker.port, outbox, reconnect_min_s=3, reconnect_max_s=3, **settings)
    # What the service does on connecting (status, model state) takes a moment; new results are waiting then.
    publisher.on_connected = lambda: time.sleep(0.3)
    wait_until(publisher.connected.is_set, 15, "the publisher to connect")
    try:
        add_results(outbox, 0, 3)
        publisher.wake()
        listener.wait_for(lambda: len(part_ids(listener)) == 3, 10, "the first results")

        os.kill(broker.process.pid, signal.SIGSTOP)  # the broker hangs: what is handed now stays unacknowledged
        add_results(outbox, 3, 5)
        publisher.wake()
        wait_until(lambda: publisher.inflight >= 1, 10, "a result in flight")
        time.sleep(0.3)
        os.kill(broker.process.pid, signal.SIGKILL)  # it never read them
        broker.stop()
        wait_until(lambda: not publisher.connected.is_set(), 10, "the publisher to notice")
        add_results(outbox, 8, 12)
        broker.start()

        listener.wait_for(lambda: len(part_ids(listener)) >= 20, 30, "every result after the broker returned")
        time.sleep(0.5)
        assert part_ids(listener) == [f"p{i}" for i in range(20)]
    finally:
        publisher.stop(drain_s=0.5)
        outbox.close()


# A publishing process on its own, so that it can be killed with SIGKILL: it sends `early` results normally,
# then, once told on stdin, `late` more, and says how many it has handed over; it never stops by itself.
KILLED_PROCESS = """
import sys, time
from pathlib import Path
from edge_runtime.service.mqtt_topics import Topics
from edge_runtime.service.outbox import Outbox
from edge_runtime.service.publisher import Publisher
from edge_runtime.service.service_config import MqttConfig

port, path, early, late = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
outbox = Outbox(path, max_rows=1000, max_age_s=3600)
config = MqttConfig(host="127.0.0.1", port=port, prefix="test", device_id="cam1")  # the defaults
publisher = Publisher(config, Topics("test", "cam1"), outbox, lambda topic, payload: None)
publisher.start()
def add(first, count):
    for i in range(first, first + count):
        outbox.add(f"p{i}", "test/cam1/result", f'{{"part_id": "p{i}"}}'.encode())
    publisher.wake()
while not publisher.connected.is_set():
    time.sleep(0.05)
add(0, early)
while outbox.depth():
    time.sleep(0.05)
print("ready", flush=True)
sys.stdin.readline()
add(early, late)
while publisher.inflight < min(late, config.inflight):
    time.sleep(0.02)
print("handed", publisher.inflight, flush=True)
time.sleep(3600)
"""


def test_a_kill_during_qos2_exchanges_loses_and_repeats_nothing(broker, listen, tmp_path):
    """With the defaults (QoS 2, one result in flight)."""
    listener = listen(broker.port, "test")
    path = tmp_path / "outbox.sqlite"
    early, late = 7, 30
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PROCESS, str(broker.port), str(path), str(early), str(late)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout.readline().strip() == "ready", "the first process published its early results"
        # The broker hangs while the process hands results over, and the process is killed before any of
        # them finished: the broker then reads them and keeps each as received, waiting for a PUBREL.
        os.kill(broker.process.pid, signal.SIGSTOP)
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().startswith("handed")
        time.sleep(0.3)
    finally:
        process.kill()
        process.wait()
        os.kill(broker.process.pid, signal.SIGCONT)
    time.sleep(0.5)

    outbox = Outbox(path, max_rows=1000, max_age_s=3600)
    assert outbox.depth() == late, "nothing handed over by the killed process was acknowledged"
    publisher = start_publisher(broker.port, outbox, reconnect_max_s=1)
    try:
        wait_until(lambda: outbox.depth() == 0 and publisher.inflight == 0, 30, "the restarted process's drain")
        time.sleep(1.0)
        received = part_ids(listener)
        assert received == [f"p{i}" for i in range(early + late)], f"each result once, in order: {received}"
    finally:
        publisher.stop(drain_s=0.5)
        outbox.close()
