"""Prometheus text exposition (format 0.0.4) of the service's counters, gauges and latency histogram."""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass

PREFIX = "d3ad_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Frame leaving the camera pipeline -> result stored; fixed so that scrapes of every device can be summed.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]  # upper bounds, ascending, without +Inf
    cumulative: tuple[int, ...]  # observations <= each bound, then the +Inf bucket (== count)
    total: float  # sum of all observations
    count: int


class LatencyHistogram:
    """Fixed-bucket histogram; observe() from the frame thread, snapshot() from scrape threads."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and ascending")
        self.bounds = bounds
        self._per_bucket = [0] * (len(bounds) + 1)  # the last one is above every bound
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)  # `le` buckets: a value equal to a bound belongs in it
        with self._lock:
            self._per_bucket[index] += 1
            self._total += value

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            per_bucket, total = list(self._per_bucket), self._total
        cumulative, running = [], 0
        for count in per_bucket:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), total, running)


@dataclass(frozen=True)
class MetricsSample:
    """Everything one scrape reports, read at one moment."""

    frames_received: int
    frames_dropped: int
    frames_skipped: int
    good: int
    defects: int
    errors: int
    latency: HistogramSnapshot
    outbox_depth: int
    outbox_dropped: int
    broker_connected: bool
    camera_streaming: bool
    camera_reconnects: int
    model_version: str | None
    start_time_s: float  # Unix time the service started

    @property
    def inspected(self) -> int:
        return self.good + self.defects


def format_value(value: float) -> str:
    """Integers without a fraction, floats in Python's shortest round-trip form, infinities as Prometheus does."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    """Builds the text one metric family at a time: HELP, TYPE, then its samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self._lines.append(f"# TYPE {PREFIX}{name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        rendered = ""
        if labels:
            rendered = "{" + ",".join(f'{key}="{escape_label(text)}"' for key, text in labels.items()) + "}"
        self._lines.append(f"{PREFIX}{name}{rendered} {format_value(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _histogram(out: Exposition, name: str, help_text: str, histogram: HistogramSnapshot) -> None:
    out.family(name, "histogram", help_text)
    for bound, count in zip(histogram.bounds, histogram.cumulative[:-1], strict=True):
        out.sample(f"{name}_bucket", count, {"le": format_value(bound)})
    out.sample(f"{name}_bucket", histogram.count, {"le": "+Inf"})
    out.sample(f"{name}_sum", histogram.total)
    out.sample(f"{name}_count", histogram.count)


def render_metrics(sample: MetricsSample) -> str:
    """The whole `/metrics` body."""
    out = Exposition()
    out.single("frames_received_total", "counter", "Frames delivered by the camera pipeline.", sample.frames_received)
    dropped_help = "Frames replaced by a newer one before they could be inspected."
    out.single("frames_dropped_total", "counter", dropped_help, sample.frames_dropped)
    out.single(
        "frames_skipped_total", "counter", "Frames passed over on purpose (max_fps, paused).", sample.frames_skipped
    )
    out.single("parts_inspected_total", "counter", "Parts inspected and stored in the outbox.", sample.inspected)
    out.family("verdicts_total", "counter", "Inspected parts by verdict.")
    out.sample("verdicts_total", sample.good, {"verdict": "good"})
    out.sample("verdicts_total", sample.defects, {"verdict": "defect"})
    out.single("inspection_errors_total", "counter", "Frames that could not be inspected or stored.", sample.errors)
    _histogram(
        out,
        "inspection_latency_seconds",
        "From the frame leaving the camera pipeline to its result being stored.",
        sample.latency,
    )
    out.single("outbox_depth", "gauge", "Results stored and not yet acknowledged by the broker.", sample.outbox_depth)
    out.single(
        "outbox_dropped_total", "counter", "Results dropped by the outbox bounds (rows, age).", sample.outbox_dropped
    )
    out.single("broker_connected", "gauge", "1 while connected to the MQTT broker.", int(sample.broker_connected))
    out.single("camera_streaming", "gauge", "1 while the camera delivers frames.", int(sample.camera_streaming))
    out.single("camera_reconnects_total", "counter", "Camera pipeline restarts.", sample.camera_reconnects)
    out.family("model_info", "gauge", "The model inspecting now; always 1, the version is the label.")
    if sample.model_version is not None:
        out.sample("model_info", 1, {"version": sample.model_version})
    out.single("start_time_seconds", "gauge", "Unix time the service started.", sample.start_time_s)
    return out.text()
