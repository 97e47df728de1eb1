"""The soak run (`make soak`): the demo model streaming at full rate through broker outages and a kill -9.

A persistent mosquitto, the edge service as a child process on a looping conveyor faster than it can inspect,
and a collector on a persistent session that records every result and stats message as it arrives. On a
timeline scaled to the run's length the broker is stopped twice (`outage_s` each) and the service is killed
once and started again at once, as systemd would. At the end inspection is paused, the outbox drains, and
`demo_line.soak_report` checks that every result arrived exactly once, in order per process, one per inspected
frame. The figures go to `<out>/soak.json`."""

from __future__ import annotations

import json
import platform
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from demo_line import soak_defaults
from demo_line.conveyor import choose_parts, load_truth, write_conveyor
from demo_line.local_line import LocalBroker, LocalLineError, ServiceProcess
from demo_line.soak_report import (
    BootEnd,
    BootRecord,
    Check,
    PartId,
    Received,
    SoakFigures,
    SoakReport,
    boot_figures,
    group_by_boot,
    run_checks,
)
from edge_runtime.bundle import load_trusted_keys, verify_bundle
from edge_runtime.service.mqtt_topics import Topics
from edge_runtime.service.service import OUTBOX_FILE
from edge_runtime.service.service_config import parse_config
from train_host.dataset import list_test_samples

PREFIX = "factory"
DEVICE_ID = "soak"
DRAIN_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class SoakOptions:
    bundle: Path
    trusted_key: Path
    conveyor: Path  # a folder `make demo` wrote: frames and truth.json
    out: Path
    duration_s: float = soak_defaults.DURATION_S
    outage_s: float = soak_defaults.OUTAGE_S
    camera_fps: float = soak_defaults.CAMERA_FPS
    stats_interval_s: float = 2.0
    qos: int | None = None  # of results; None: the service's default
    steady: bool = False  # no outages and no kill: the service's sustained rate and memory, undisturbed

    def __post_init__(self) -> None:
        if self.camera_fps <= 0:
            raise ValueError(f"camera_fps must be positive, got {self.camera_fps}")
        if not self.steady and self.duration_s < 4 * self.outage_s:
            raise ValueError(f"duration_s {self.duration_s} must be at least 4 x outage_s ({self.outage_s})")

    def timeline(self) -> list[tuple[float, str]]:
        """(seconds after streaming began, event), in order."""
        if self.steady:
            return []
        first, second = 0.2 * self.duration_s, 0.65 * self.duration_s
        return [
            (first, "broker_down"),
            (first + self.outage_s, "broker_up"),
            (0.45 * self.duration_s, "kill"),
            (second, "broker_down"),
            (second + self.outage_s, "broker_up"),
        ]


class Collector:
    """A persistent MQTT session on the result and stats topics; every message kept with its arrival time."""

    def __init__(self, port: int, topics: Topics, started: float) -> None:
        self.topics = topics
        self.started = started
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        # clean_session=False: what the broker queued for the collector while it was away is delivered later.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-collector", clean_session=False)
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.on_connect = lambda client, *_: client.subscribe([(topics.result, 2), (topics.stats, 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, _client: mqtt.Client, _data: object, message: mqtt.MQTTMessage) -> None:
        received = Received(time.monotonic() - self.started, message.topic, message.payload, bool(message.dup))
        with self.lock:
            self.messages.append(received)

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port)
        self.client.loop_start()
        if not self.subscribed.wait(15):
            raise LocalLineError(f"the collector could not subscribe on 127.0.0.1:{self.port}")

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def runtime_config(options: SoakOptions, port: int, state_dir: Path) -> dict:
    conveyor = replace(load_truth(options.conveyor), fps=Fraction(options.camera_fps))
    raw = {
        "bundle": {"archive": str(options.bundle.resolve()), "trusted_keys": [str(options.trusted_key.resolve())]},
        "state_dir": str(state_dir.resolve()),
        "camera": {"pipeline": conveyor.source_pipeline(), "frame_timeout_s": 5},
        "mode": {"kind": "continuous", "max_fps": 0},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX, "device_id": DEVICE_ID}
        | ({} if options.qos is None else {"qos": options.qos}),
        "heatmaps": {"publish": "all"},
        "stats_interval_s": options.stats_interval_s,
        "metrics": {"port": 0},  # any free port: never in the way of a service installed on this PC
    }
    parse_config(raw, "soak runtime config")
    return raw


def outbox_part_ids(state_dir: Path, result_topic: str) -> list[str]:
    """Part ids of the results still in the service's outbox (read after a kill, the file as it left it)."""
    path = state_dir / OUTBOX_FILE
    if not path.is_file():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
        rows = database.execute("SELECT part_id FROM outbox WHERE topic = ? ORDER BY seq", (result_topic,))
        return [row[0] for row in rows]


def latest_boot(messages: list[Received], topics: Topics) -> str | None:
    for message in reversed(messages):
        if message.topic == topics.stats and message.payload:
            return json.loads(message.payload)["boot_id"]
        if message.topic == topics.result:
            return PartId.parse(json.loads(message.payload)["part_id"], DEVICE_ID).boot_id
    return None


class Soak:
    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.topics = Topics(PREFIX, DEVICE_ID)
        self.device = options.out / "device"
        self.state_dir = self.device / "state"
        self.ends: dict[str, BootEnd] = {}
        self.outages: list[dict] = []
        self.kills: list[dict] = []
        self.boots = 0
        self.peak_rss_mb: list[float] = []

    def note_memory(self, service: ServiceProcess) -> None:
        peak = service.peak_rss_mb()
        if peak is not None:
            self.peak_rss_mb.append(peak)

    def start_service(self, config_path: Path) -> ServiceProcess:
        self.boots += 1
        service = ServiceProcess(config_path, self.device / f"service-{self.boots}.log")
        service.start()
        return service

    def wait_for_results(self, collector: Collector, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(m.topic == self.topics.result for m in collector.snapshot()):
                return
            time.sleep(0.5)
        raise LocalLineError(f"no result within {timeout_s:.0f} s; see the logs in {self.device}")

    def run(self) -> SoakReport:
        options = self.options
        self.device.mkdir(parents=True, exist_ok=True)
        with LocalBroker(self.device / "broker", persistent=True) as broker:
            config_path = self.device / "config.yaml"
            config_path.write_text(yaml.safe_dump(runtime_config(options, broker.port, self.state_dir)))
            origin = time.monotonic()
            collector = Collector(broker.port, self.topics, origin)
            collector.start()
            service = self.start_service(config_path)
            try:
                self.wait_for_results(collector, 120)
                streaming_from = time.monotonic()
                service = self.follow_timeline(broker, collector, service, config_path, streaming_from)
                streaming_s = time.monotonic() - streaming_from
                self.finish(collector, service)
                self.note_memory(service)
            finally:
                service.stop()
                collector.stop()
        return self.report(collector.snapshot(), streaming_s)

    def follow_timeline(
        self, broker: LocalBroker, collector: Collector, service: ServiceProcess, config_path: Path, start: float
    ) -> ServiceProcess:
        for at_s, event in [*self.options.timeline(), (self.options.duration_s, "end")]:
            time.sleep(max(0.0, start + at_s - time.monotonic()))
            if not service.running():
                raise LocalLineError(f"the service ended on its own before {event}; see {service.log_path}")
            print(f"soak: {time.monotonic() - start:6.1f} s {event}", flush=True)
            if event == "broker_down":
                broker.stop()  # the window starts once mosquitto has ended, so nothing can arrive in it
                self.outages.append({"down_at_s": time.monotonic() - collector.started})
            elif event == "broker_up":
                self.outages[-1]["up_at_s"] = time.monotonic() - collector.started
                broker.restart()
            elif event == "kill":
                service = self.kill_and_restart(collector, service, config_path, time.monotonic() - collector.started)
        return service

    def kill_and_restart(
        self, collector: Collector, service: ServiceProcess, config_path: Path, now_s: float
    ) -> ServiceProcess:
        boot_id = latest_boot(collector.snapshot(), self.topics)
        self.note_memory(service)
        code = service.kill()
        left = [PartId.parse(p, DEVICE_ID) for p in outbox_part_ids(self.state_dir, self.topics.result)]
        if boot_id is not None:
            counters = tuple(p.counter for p in left if p.boot_id == boot_id)
            self.ends[boot_id] = BootEnd(boot_id, "killed", now_s, counters)
        self.kills.append({"at_s": now_s, "boot_id": boot_id, "exit_code": code, "outbox_rows": len(left)})
        return self.start_service(config_path)

    def finish(self, collector: Collector, service: ServiceProcess) -> None:
        """Pause inspection, then wait until the last stats' count of inspected frames has all its results."""
        collector.client.publish(self.topics.command("pause"), b"{}", qos=1)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(2 * self.options.stats_interval_s)
            messages = collector.snapshot()
            records = group_by_boot(messages, self.topics.result, self.topics.stats, DEVICE_ID)
            boot_id = latest_boot(messages, self.topics)
            record = records.get(boot_id) if boot_id else None
            if record is not None and drained(record):
                self.ends[boot_id] = BootEnd(boot_id, "stopped", time.monotonic() - collector.started)
                return
        print(f"soak: the results did not drain within {DRAIN_TIMEOUT_S:.0f} s", flush=True)

    def report(self, messages: list[Received], streaming_s: float) -> SoakReport:
        records = group_by_boot(messages, self.topics.result, self.topics.stats, DEVICE_ID)
        boots = [boot_figures(record, self.ends.get(boot_id)) for boot_id, record in records.items()]
        distinct = sum(b.results_distinct for b in boots)
        received = sum(b.results_received for b in boots)
        options = self.options
        extra = [] if options.steady else [outage_check(self.outages, messages, self.topics.result)]
        return SoakReport(
            command="make soak" if not options.steady else "python -m demo_line soak --steady",
            started_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            machine=f"{platform.node()} ({platform.processor() or platform.machine()})",
            options={k: str(v) for k, v in vars(options).items()},
            figures=SoakFigures(
                streaming_s=round(streaming_s, 1),
                results_distinct=distinct,
                results_received=received,
                frames_inspected=sum(b.inspected or 0 for b in boots),
                results_per_s=round(distinct / streaming_s, 2) if streaming_s else 0.0,
                repeats=received - distinct,
                service_peak_rss_mb=round(max(self.peak_rss_mb), 1) if self.peak_rss_mb else None,
            ),
            boots=boots,
            outages=self.outages,
            kills=self.kills,
            checks=run_checks(boots, expected_boots=len(self.kills) + 1, extra=extra),
        )


def drained(record: BootRecord) -> bool:
    """Paused (two stats with the same count) and every frame it counted has its result here."""
    if len(record.stats) < 2 or record.stats[-1]["inspected"] != record.stats[-2]["inspected"]:
        return False
    return len({counter for _, counter, _ in record.results}) >= record.stats[-1]["inspected"]


def outage_check(outages: list[dict], messages: list[Received], result_topic: str) -> Check:
    """The outages really cut the results off: nothing arrived while the broker was down."""
    results = [m for m in messages if m.topic == result_topic]
    during = [m for m in results for o in outages if o["down_at_s"] < m.at_s < o.get("up_at_s", 0)]
    windows = ", ".join(f"{o['down_at_s']:.0f}-{o.get('up_at_s', float('nan')):.0f} s" for o in outages)
    return Check("broker_was_down", not during and bool(outages), f"{len(during)} results arrived during {windows}")


def run_soak(options: SoakOptions) -> SoakReport:
    report = Soak(options).run()
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "soak.json").write_text(report.to_json())
    return report


def conveyor_of_test_parts(dataset: Path, bundle: Path, trusted_key: Path, folder: Path, parts: int) -> Path:
    """A conveyor of the dataset's test parts at the bundle's input size (its manifest, read once verified)."""
    manifest = verify_bundle(bundle, load_trusted_keys([trusted_key])).manifest
    samples = choose_parts(list_test_samples(dataset), parts, seed=0)
    # The rate is replaced by the soak's camera rate; what is written here only has to be valid.
    write_conveyor(samples, folder, fps=30.0, frame_size=(manifest.input.width, manifest.input.height))
    return folder
