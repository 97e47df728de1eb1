"""What the demo shows: results and heatmaps from MQTT matched to the conveyor's parts, one line per part, and
the summary with its confusion counts and latency."""

from __future__ import annotations

import json
import queue
import statistics
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from demo_line.conveyor import Conveyor, ConveyorPart
from demo_line.local_line import LocalLineError
from edge_runtime.service.mqtt_topics import Topics


def say(text: str) -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say(f"\n== {text}")


@dataclass(frozen=True)
class PartRecord:
    """One conveyor part and the first complete result (result plus heatmap) the device gave for it."""

    index: int
    frame: str
    truth: str
    defect_type: str
    part_id: str
    verdict: str
    score: float
    threshold: float
    latency_ms: float
    inspect_ms: float
    defect_boxes: int
    overlay: str

    @property
    def outcome(self) -> str:
        if (self.verdict == "defect") == (self.truth == "defect"):
            return "correct"
        return "MISSED" if self.truth == "defect" else "FALSE ALARM"


@dataclass(frozen=True)
class Confusion:
    defects_found: int
    defects_missed: int
    false_alarms: int
    good_passed: int
    accuracy: float | None  # None when nothing was inspected

    @classmethod
    def of(cls, records: list[PartRecord]) -> Confusion:
        def count(truth: str, verdict: str) -> int:
            return sum(1 for r in records if r.truth == truth and r.verdict == verdict)

        found, missed = count("defect", "defect"), count("defect", "good")
        alarms, passed = count("good", "defect"), count("good", "good")
        accuracy = (found + passed) / len(records) if records else None
        return cls(found, missed, alarms, passed, accuracy)


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float | None
    p50_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, values: list[float]) -> LatencyStats:
        if not values:
            return cls(None, None, None)
        return cls(round(statistics.fmean(values), 2), round(statistics.median(values), 2), round(max(values), 2))


@dataclass(frozen=True)
class DemoSummary:
    data: str  # "real" or "synthetic"
    dataset: str
    model_version: str
    bundle: str
    precision: str
    parts_on_conveyor: int
    defects_on_conveyor: int
    parts_inspected: int
    missing_parts: list[int]
    timed_out: bool
    results_received: int
    repeat_results: int
    confusion: Confusion
    latency: LatencyStats
    overlays_folder: str
    overlays_saved: int
    evaluation_image_auroc: float | None
    gate_auroc_fp32: float | None
    gate_auroc: float | None
    step_seconds: dict[str, float]
    parts: list[PartRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


class Subscriber:
    """An MQTT client on the device's result, heatmap and status topics, queueing what arrives."""

    def __init__(self, port: int, topics: Topics) -> None:
        self.topics = topics
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-viewer-{port}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _client, _data, message: self.inbox.put(Message(message.topic, message.payload))
        self.port = port

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        wanted = [(self.topics.result, 1), (self.topics.heatmap("+"), 0), (self.topics.status, 1)]
        client.subscribe(wanted)

    def __enter__(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.__exit__()
            raise LocalLineError(f"could not subscribe to the broker on 127.0.0.1:{self.port}")
        return self

    def take(self, timeout: float) -> list[Message]:
        """What arrived, waiting up to `timeout` for the first message."""
        try:
            messages = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self.inbox.empty():
            messages.append(self.inbox.get_nowait())
        return messages

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def overlay_name(part: ConveyorPart, verdict: str) -> str:
    truth = part.truth if part.truth == "good" else f"defect-{part.defect_type}"
    return f"{part.index:03d}_{verdict}_truth-{truth}.jpg"


class PartMatcher:
    """Pairs each result with its heatmap (same part id) and places the pair on the conveyor by its frame
    timestamp. The looping stream shows every part again and again: the first complete pair counts, the
    results of later passes are counted as repeats."""

    def __init__(self, conveyor: Conveyor, topics: Topics, overlays: Path) -> None:
        self.conveyor = conveyor
        self.topics = topics
        self.overlays = overlays
        self.records: dict[int, PartRecord] = {}
        self.results_received = 0
        self.repeats = 0
        self.unplaced = 0
        self.status: str | None = None
        self._results: dict[str, dict] = {}
        self._heatmaps: dict[str, bytes] = {}
        self._heatmap_head = topics.heatmap("")

    def complete(self) -> bool:
        return len(self.records) == len(self.conveyor.parts)

    def missing(self) -> list[int]:
        return [part.index for part in self.conveyor.parts if part.index not in self.records]

    def add(self, message: Message) -> PartRecord | None:
        """Take one message; returns the record when it completes a part not seen before."""
        if message.topic == self.topics.status:
            self._note_status(message.payload)
            return None
        if message.topic == self.topics.result:
            result = json.loads(message.payload)
            self.results_received += 1
            self._results[result["part_id"]] = result
            part_id = result["part_id"]
        elif message.topic.startswith(self._heatmap_head):
            part_id = message.topic[len(self._heatmap_head) :]
            self._heatmaps[part_id] = message.payload
        else:
            return None
        if part_id in self._results and part_id in self._heatmaps:
            return self._place(self._results.pop(part_id), self._heatmaps.pop(part_id))
        return None

    def _note_status(self, payload: bytes) -> None:
        if not payload:
            return
        status = json.loads(payload)
        if status.get("state") != self.status:
            self.status = status.get("state")
            error = f", last error: {status['last_error']}" if status.get("last_error") else ""
            say(f"device status: {self.status} (model {status.get('model_version')}{error})")

    def _place(self, result: dict, heatmap: bytes) -> PartRecord | None:
        part = self.conveyor.part_at(result.get("frame", {}).get("pts_s"))
        if part is None:
            self.unplaced += 1
            return None
        if part.index in self.records:
            self.repeats += 1
            return None
        self.overlays.mkdir(parents=True, exist_ok=True)
        overlay = self.overlays / overlay_name(part, result["verdict"])
        overlay.write_bytes(heatmap)
        record = PartRecord(
            index=part.index,
            frame=part.frame,
            truth=part.truth,
            defect_type=part.defect_type,
            part_id=result["part_id"],
            verdict=result["verdict"],
            score=result["score"],
            threshold=result["threshold"],
            latency_ms=result["latency_ms"],
            inspect_ms=result["inspect_ms"],
            defect_boxes=len(result.get("defects", [])),
            overlay=str(overlay),
        )
        self.records[part.index] = record
        return record


def result_line(record: PartRecord, part: ConveyorPart, total: int) -> str:
    return (
        f"part {record.index + 1:>3}/{total}  {record.part_id:<28} {record.verdict.upper():<6}  "
        f"score {record.score:7.3f} (threshold {record.threshold:.3f})  latency {record.latency_ms:6.1f} ms  "
        f"truth {part.truth_text:<20} {record.outcome}"
    )
