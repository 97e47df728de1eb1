"""The publisher against a real mosquitto and a real outbox file: it outlives SQLite errors, keeps what the
broker's ACL refuses (MQTT 5 reason codes), and publishes from memory while the disk is full."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_runtime.service.mqtt_topics import Topics
from edge_runtime.service.outbox import Outbox
from edge_runtime.service.publisher import Publisher
from edge_runtime.service.service_config import MqttConfig
from tests.edge_runtime.service.conftest import wait_until

RESULT = "test/cam1/result"


def rows_kept(path: Path) -> int:
    """Results still held in the outbox file, waiting or refused (read with a connection of its own)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return sum(
            db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in {"outbox", "refused"} & tables
        )


@pytest.fixture
def publish(tmp_path):
    """Start a Publisher for (broker port, outbox); stopped after the test."""
    started: list[Publisher] = []

    def start(port: int, outbox: Outbox, **mqtt) -> Publisher:
        mqtt = {"reconnect_max_s": 1, **mqtt}
        config = MqttConfig(host="127.0.0.1", port=port, prefix="test", device_id="cam1", **mqtt)
        publisher = Publisher(config, Topics("test", "cam1"), outbox, lambda topic, payload: None)
        publisher.start()
        started.append(publisher)
        wait_until(publisher.connected.is_set, 15, "the publisher to connect")
        return publisher

    yield start
    for publisher in started:
        publisher.stop(drain_s=0.5)


def test_publishing_goes_on_after_the_outbox_fails_to_delete(broker, listen, publish, tmp_path):
    listener = listen(broker.port, "test")
    outbox = Outbox(tmp_path / "outbox.sqlite", max_rows=1000, max_age_s=3600)
    publisher = publish(broker.port, outbox)
    outbox.add("p0", RESULT, b'{"part_id": "p0"}')
    publisher.wake()
    listener.wait_for(lambda: len(listener.payloads("/result")) == 1, 10, "the first result")
    wait_until(lambda: outbox.depth() == 0, 10, "the first row deleted")

    # Another process holds the write lock for longer than SQLite waits: deleting acked rows fails for real.
    blocker = sqlite3.connect(tmp_path / "outbox.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")

    def add_while_locked() -> None:  # the frame thread goes on producing meanwhile
        outbox.add("p1", RESULT, b'{"part_id": "p1"}')
        publisher.wake()

    threading.Thread(target=add_while_locked, daemon=True).start()
    wait_until(lambda: publisher.store_error is not None or outbox.disk_error is not None, 20, "the SQLite error")
    assert publisher.problem() is not None, "the health checks learn that results do not go out"
    blocker.execute("ROLLBACK")
    blocker.close()

    for i in range(2, 5):
        outbox.add(f"p{i}", RESULT, f'{{"part_id": "p{i}"}}'.encode())
        publisher.wake()
    listener.wait_for(
        lambda: {r["part_id"] for r in listener.payloads("/result")} >= {"p1", "p2", "p3", "p4"},
        20,
        "the results after the error",
    )
    wait_until(lambda: outbox.depth() == 0 and publisher.inflight == 0, 20, "every acked row deleted")
    assert publisher.alive() and publisher.problem() is None
    outbox.close()


def write_acl(acl: Path, results_allowed: bool) -> None:
    """The device may announce itself, but (unless allowed) not publish results; anyone may read."""
    lines = ["topic read test/#", "topic write test/cam1/availability", "topic write test/cam1/status"]
    acl.write_text("\n".join(lines + ([f"topic write {RESULT}"] if results_allowed else [])) + "\n")


@pytest.mark.parametrize("qos", [1, 2])
def test_results_the_broker_refuses_are_kept_and_sent_once_allowed(new_broker, listen, publish, tmp_path, qos):
    # A persistent broker and listener session. The publisher reconnects after the listener: with an ACL,
    # mosquitto 2.0 drops what arrives for a session restored from its database before its client is back.
    # Under QoS 2 the refusal comes in the PUBREC, which paho itself ignores.
    acl = tmp_path / "acl"
    write_acl(acl, results_allowed=False)
    broker = new_broker(persistent=True, extra_config=[f"acl_file {acl}"])
    broker.start()
    listener = listen(broker.port, "test", persistent=True)
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, max_rows=1000, max_age_s=3600)
    slow_reconnect = {"reconnect_min_s": 3, "reconnect_max_s": 3}
    publisher = publish(broker.port, outbox, qos=qos, inflight=20 if qos == 1 else 1, **slow_reconnect)
    problems: list[str] = []
    publisher.on_problem = problems.append
    for i in range(5):
        outbox.add(f"p{i}", RESULT, f'{{"part_id": "p{i}"}}'.encode())
    publisher.wake()
    wait_until(lambda: outbox.depth() == 0 and publisher.inflight == 0, 10, "the answers to every result")
    assert rows_kept(path) == 5, "a refused result is not an acknowledged one"
    assert outbox.refused() == 5 and listener.payloads("/result") == []
    assert problems and "Not authorized" in problems[0], "the refusal is reported (status last_error)"

    broker.stop()
    write_acl(acl, results_allowed=True)  # the site fixes its ACL
    broker.start()
    listener.wait_for(lambda: len(listener.payloads("/result")) == 5, 30, "the refused results, once allowed")
    assert [r["part_id"] for r in listener.payloads("/result")] == [f"p{i}" for i in range(5)]
    wait_until(lambda: rows_kept(path) == 0, 10, "the refused rows deleted once acked")
    outbox.close()


def test_the_311_fallback_is_what_an_older_broker_gets(broker, publish, tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite", max_rows=1000, max_age_s=3600)
    assert publish(broker.port, outbox).protocol == 5, "MQTT 5 where the broker offers it"
    assert publish(broker.port, Outbox(tmp_path / "b.sqlite", 10, 10), protocol="3.1.1").protocol == 4


def test_results_go_out_from_memory_while_the_disk_is_full(broker, listen, publish, small_disk):
    listener = listen(broker.port, "test")
    outbox = Outbox(small_disk.path / "outbox.sqlite", max_rows=100_000, max_age_s=3600)
    publisher = publish(broker.port, outbox)
    small_disk.fill()
    for i in range(20):
        outbox.add(f"p{i}", RESULT, f'{{"part_id": "p{i}", "pad": "{"x" * 2000}"}}'.encode())
        publisher.wake()
    assert outbox.disk_error is not None
    listener.wait_for(lambda: len(listener.payloads("/result")) == 20, 20, "every result, from memory")
    assert [r["part_id"] for r in listener.payloads("/result")] == [f"p{i}" for i in range(20)]
    wait_until(lambda: outbox.depth() == 0, 10, "the memory rows settled")
    assert publisher.problem() is not None and "disk" in publisher.problem()
    small_disk.free()
    wait_until(lambda: publisher.problem() is None, 10, "the disk to be writable again")
    outbox.close()
