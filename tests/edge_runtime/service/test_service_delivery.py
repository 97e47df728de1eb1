"""Nothing lost: results wait in the outbox through a broker outage and through a kill -9 of the service."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]


def counters_by_boot(part_ids: list[str]) -> dict[str, list[int]]:
    """'cam1-<boot>-<n>' ids grouped by boot, each boot's counters sorted."""
    boots: dict[str, list[int]] = {}
    for part_id in part_ids:
        _, boot, counter = part_id.rsplit("-", 2)
        boots.setdefault(boot, []).append(int(counter))
    return {boot: sorted(counters) for boot, counters in boots.items()}


def pending_in_outbox(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        return [row[0] for row in db.execute("SELECT part_id FROM outbox ORDER BY seq")]


def test_broker_outage_loses_and_duplicates_nothing(persistent_broker, listen, make_config, run_service):
    broker = persistent_broker
    # A persistent session: the broker keeps what arrives for the listener while it reconnects after the outage.
    listener = listen(broker.port, "test", client_id="plc", persistent=True)
    service = run_service(make_config(broker.port, mode={"max_fps": 8}))
    listener.wait_for(lambda: len(listener.payloads("/result")) >= 3, 20, "results before the outage")

    broker.stop()
    time.sleep(3.0)
    assert service.outbox.depth() > 0, "results produced during the outage wait in the outbox"
    during = service.stats.inspected
    broker.start()
    listener.wait_for(service.publisher.connected.is_set, 20, "the service to reconnect")
    listener.wait_for(lambda: service.stats.inspected >= during + 3, 20, "results after the outage")
    listener.publish("test/cam1/cmd/pause", b"")
    listener.wait_for(lambda: service.outbox.depth() == 0 and service.publisher.inflight == 0, 20, "the drain")
    produced = {service.part_id(n) for n in range(1, service.produced + 1)}
    listener.wait_for(lambda: {r["part_id"] for r in listener.payloads("/result")} >= produced, 10, "delivery")

    received = [r["part_id"] for r in listener.payloads("/result")]
    assert set(received) == produced
    duplicates = sum(count - 1 for count in Counter(received).values())
    assert duplicates <= service.config.mqtt.inflight, "at most what was in flight at the outage (QoS 2: none)"
    counters = counters_by_boot(received)[service.boot_id]
    assert counters == sorted(counters), "published in the order produced"


def run_cli(config_path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("a") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "run", "--config", str(config_path)],
            cwd=REPO_ROOT,
            env=env,
            stdout=stream,
            stderr=stream,
        )


def test_kill_9_mid_run_then_restart_drains_the_outbox(persistent_broker, listen, make_config, tmp_path):
    broker = persistent_broker
    listener = listen(broker.port, "test", client_id="plc", persistent=True)
    raw = make_config(broker.port, mode={"max_fps": 8})
    state_dir = Path(raw["state_dir"])
    config_path = tmp_path / "site.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "service.log"

    first = run_cli(config_path, log)
    try:
        listener.wait_for(lambda: len(listener.payloads("/result")) >= 3, 60, "results from the first process")
        broker.stop()  # results now pile up in the outbox ...
        deadline = time.monotonic() + 20
        while len(pending_in_outbox(state_dir)) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)  # ... and the process dies without any chance to clean up
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    pending = pending_in_outbox(state_dir)
    assert len(pending) >= 5, log.read_text()[-3000:]
    first_boot = pending[0].rsplit("-", 2)[1]

    broker.start()
    second = run_cli(config_path, log)
    try:
        listener.wait_for(lambda: {r["part_id"] for r in listener.payloads("/result")} >= set(pending), 60, "drain")
        listener.wait_for(lambda: len(pending_in_outbox(state_dir)) <= 1, 10, "the outbox emptied")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0, log.read_text()[-3000:]

    received = [r["part_id"] for r in listener.payloads("/result")]
    first_counters = counters_by_boot(received)[first_boot]
    # Every result of the killed process arrived: the ones it published and the ones it left in the outbox.
    assert set(first_counters) == set(range(1, max(first_counters) + 1))
    duplicates = sum(count - 1 for count in Counter(received).values())
    assert duplicates <= 20, f"{duplicates} duplicates"
    assert len(counters_by_boot(received)) == 2, "the restarted process produced results under a new boot id"
    assert pending_in_outbox(state_dir) == [], "SIGTERM leaves an empty outbox once the broker acked everything"
    statuses = [s for s in listener.payloads("/status")]
    assert statuses and statuses[-1]["state"] == "stopping"
