"""Sparkplug B payloads of the inspector: the metric catalogue, births, per-part data, the death certificate and
commands in. Every payload is built and parsed with the protobuf classes compiled from sparkplug_b.proto."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf.message import DecodeError

from edge_runtime.service.sparkplug_b_pb2 import Payload

# Datatype codes of the specification (sparkplug_b.proto lists them all).
INT32, INT64, UINT32, UINT64, DOUBLE, BOOLEAN, STRING, DATETIME = 3, 4, 7, 8, 10, 11, 12, 13
DATATYPE_NAMES = {
    INT32: "Int32",
    INT64: "Int64",
    UINT32: "UInt32",
    UINT64: "UInt64",
    DOUBLE: "Double",
    BOOLEAN: "Boolean",
    STRING: "String",
    DATETIME: "DateTime",
}

BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
TRIGGER = "Command/Trigger"
COMMAND_ERROR = "Command/Last Error"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    datatype: int
    description: str
    writable: bool = False


NODE_METRICS = [
    MetricSpec(BD_SEQ, INT64, "birth/death sequence of this MQTT session; the NDEATH carries the same value"),
    MetricSpec(REBIRTH, BOOLEAN, "write true (NCMD) to have the node publish NBIRTH and DBIRTH again", True),
]

# Metrics of the device; DBIRTH declares all of them, DDATA carries those that changed.
PART_METRICS = [
    MetricSpec("Inspection/Part ID", STRING, "id of the last inspected part"),
    MetricSpec("Inspection/Verdict", STRING, "good or defect"),
    MetricSpec("Inspection/Defect", BOOLEAN, "true when the verdict is defect"),
    MetricSpec("Inspection/Score", DOUBLE, "anomaly score; defect when score >= threshold"),
    MetricSpec("Inspection/Threshold", DOUBLE, "the model's calibrated image threshold"),
    MetricSpec("Inspection/Severity", INT32, "severity bin of the part (0: nearest to good)"),
    MetricSpec("Inspection/Defect Regions", UINT32, "connected regions above the pixel threshold"),
    MetricSpec("Inspection/Latency ms", DOUBLE, "frame out of the camera pipeline -> result stored"),
    MetricSpec("Inspection/Time", DATETIME, "when the part was judged"),
    MetricSpec("Model/Version", STRING, "version of the model that judged it"),
    MetricSpec("Counters/Inspected", UINT64, "parts inspected since the service started"),
    MetricSpec("Counters/Defects", UINT64, "defective parts since the service started"),
    MetricSpec("Counters/Errors", UINT64, "frames that could not be inspected"),
    MetricSpec("Counters/Dropped Frames", UINT64, "frames replaced by a newer one before inspection"),
]
STATUS_METRICS = [MetricSpec("Status/State", STRING, "starting, running, paused, camera_lost or stopping")]
COMMAND_METRICS = [
    MetricSpec(TRIGGER, STRING, "write a part id (DCMD) to inspect the next frame under it (triggered mode)", True),
    MetricSpec(COMMAND_ERROR, STRING, "why the last command was refused; empty when it was accepted"),
]
DEVICE_METRICS = PART_METRICS + STATUS_METRICS + COMMAND_METRICS
_DATATYPE_OF = {spec.name: spec.datatype for spec in NODE_METRICS + DEVICE_METRICS}


class SparkplugPayloadError(ValueError):
    """A command payload that is not a Sparkplug B payload this node understands."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class PartRecord:
    """What one DDATA carries for an inspected part; kept as JSON in the Sparkplug outbox until sent."""

    time_ms: int
    part_id: str
    verdict: str
    score: float
    threshold: float
    severity: int
    regions: int
    latency_ms: float
    model_version: str
    inspected: int
    defects: int
    errors: int
    dropped: int

    @classmethod
    def from_result(cls, payload: dict[str, Any], time_ms: int, counters: dict[str, int]) -> PartRecord:
        """From the JSON result the service publishes on `result` and the service's counters at that part."""
        return cls(
            time_ms=time_ms,
            part_id=payload["part_id"],
            verdict=payload["verdict"],
            score=float(payload["score"]),
            threshold=float(payload["threshold"]),
            severity=int(payload["severity_bin"]),
            regions=len(payload["defects"]),
            latency_ms=float(payload["latency_ms"]),
            model_version=payload["model_version"],
            **counters,
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> PartRecord:
        return cls(**json.loads(data))

    def values(self) -> dict[str, Any]:
        """Metric name -> value, for the device's part and counter metrics."""
        return {
            "Inspection/Part ID": self.part_id,
            "Inspection/Verdict": self.verdict,
            "Inspection/Defect": self.verdict == "defect",
            "Inspection/Score": self.score,
            "Inspection/Threshold": self.threshold,
            "Inspection/Severity": self.severity,
            "Inspection/Defect Regions": self.regions,
            "Inspection/Latency ms": self.latency_ms,
            "Inspection/Time": self.time_ms,
            "Model/Version": self.model_version,
            "Counters/Inspected": self.inspected,
            "Counters/Defects": self.defects,
            "Counters/Errors": self.errors,
            "Counters/Dropped Frames": self.dropped,
        }


def _set_value(metric: Payload.Metric, datatype: int, value: Any) -> None:
    if value is None:
        metric.is_null = True
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype == STRING:
        metric.string_value = str(value)
    elif datatype in (INT32, UINT32):
        metric.int_value = int(value) & 0xFFFFFFFF  # the specification's two's complement for signed types
    elif datatype in (INT64, UINT64, DATETIME):
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    else:
        raise ValueError(f"datatype {datatype} is not used by this node")


def _add_metric(payload: Payload, name: str, value: Any, timestamp_ms: int, historical: bool = False) -> None:
    metric = payload.metrics.add(name=name, timestamp=timestamp_ms, datatype=_DATATYPE_OF[name])
    if historical:
        metric.is_historical = True
    _set_value(metric, metric.datatype, value)


def node_birth(bd_seq: int, timestamp_ms: int) -> bytes:
    """NBIRTH; always seq 0."""
    payload = Payload(timestamp=timestamp_ms, seq=0)
    _add_metric(payload, BD_SEQ, bd_seq, timestamp_ms)
    _add_metric(payload, REBIRTH, False, timestamp_ms)
    return payload.SerializeToString()


def node_death(bd_seq: int, timestamp_ms: int) -> bytes:
    """NDEATH, registered as the MQTT will; no seq, only the bdSeq of the session it ends."""
    payload = Payload(timestamp=timestamp_ms)
    _add_metric(payload, BD_SEQ, bd_seq, timestamp_ms)
    return payload.SerializeToString()


def device_birth(seq: int, values: dict[str, Any], timestamp_ms: int) -> bytes:
    """DBIRTH with every device metric, typed; a metric without a value yet is sent as null."""
    payload = Payload(timestamp=timestamp_ms, seq=seq)
    for spec in DEVICE_METRICS:
        _add_metric(payload, spec.name, values.get(spec.name), timestamp_ms)
    return payload.SerializeToString()


def device_data(seq: int, values: dict[str, Any], metric_time_ms: int, historical: bool, timestamp_ms: int) -> bytes:
    """DDATA with the given metrics; `historical` for values that were current before the present birth."""
    unknown = set(values) - {spec.name for spec in DEVICE_METRICS}
    if unknown:
        raise ValueError(f"not device metrics: {sorted(unknown)}")
    payload = Payload(timestamp=timestamp_ms, seq=seq)
    for name, value in values.items():
        _add_metric(payload, name, value, metric_time_ms, historical)
    return payload.SerializeToString()


def command_metrics(data: bytes) -> list[tuple[str, Any]]:
    """(name, value) of each metric in an NCMD or DCMD payload."""
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except DecodeError as error:
        raise SparkplugPayloadError(f"not a Sparkplug B payload: {error}") from error
    metrics = []
    for metric in payload.metrics:
        if not metric.name:
            raise SparkplugPayloadError("a command metric has no name (this node declares no aliases)")
        kind = metric.WhichOneof("value")
        metrics.append((metric.name, None if kind is None or metric.is_null else getattr(metric, kind)))
    return metrics
