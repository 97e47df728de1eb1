"""The service's metrics: one Prometheus registry per service, the only place anything is counted. The MQTT
`stats` message, the operator page and `/metrics` all read it, so they cannot disagree.

What the frame loop counts is held in named metric objects here. Figures other parts of the service already
own (frames counted by the camera thread, the outbox's depth and its drop counter kept in its file, the
publisher's acks) are read from them at each collection by `_LiveCollector` instead of being counted twice."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "d3ad_"
# What generate_latest writes: every name here is a classic one, which all 0.0.4 readers take.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Frame leaving the camera pipeline -> result stored; fixed so that scrapes of every device can be summed.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_WINDOW = 500  # results the recent p50 / p99 (stats message, page) are taken over
RECENT_QUANTILES = (0.5, 0.99)
VERDICTS = ("good", "defect")


@dataclass(frozen=True)
class LiveFigures:
    """Figures owned by other parts of the service, read when the registry is collected."""

    frames_in: int = 0
    frames_dropped: int = 0
    bad_frames: int = 0
    camera_reconnects: int = 0
    camera_streaming: bool = False
    outbox_depth: int = 0
    outbox_dropped: int = 0
    results_published: int = 0
    broker_connected: bool = False


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every figure of one collection of the registry, as the stats message and the page show them."""

    frames_in: int
    inspected: int
    good: int
    defects: int
    dropped: int
    skipped: int
    errors: int
    frame_errors: int
    model_failures: int
    bad_frames: int
    camera_reconnects: int
    camera_streaming: bool
    outbox_depth: int
    outbox_dropped: int
    results_published: int
    broker_connected: bool
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_window: int
    model_version: str | None
    uptime_s: float


class ServiceMetrics:
    """Count with the `count_*` and `record_part` methods (frame thread); read with `snapshot()` or
    `exposition()` (any thread). One lock spans a part's figures, so no reader sees a verdict count and a
    histogram count that disagree."""

    def __init__(self, software_version: str, live: Callable[[], LiveFigures] = LiveFigures) -> None:
        self.registry = CollectorRegistry()  # the service's own: services and tests in one process do not collide
        self.software_version = software_version
        self.started = time.monotonic()
        self._lock = threading.RLock()  # re-entered by the collectors below while a reader holds it
        self._recent_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._model_version: str | None = None
        registry = self.registry
        self.parts_inspected = Counter(
            f"{PREFIX}parts_inspected", "Parts inspected and stored in the outbox.", registry=registry
        )
        self.verdicts = Counter(f"{PREFIX}verdicts", "Inspected parts by verdict.", ["verdict"], registry=registry)
        for verdict in VERDICTS:  # both series exist from the start, at 0
            self.verdicts.labels(verdict)
        self.frames_skipped = Counter(
            f"{PREFIX}frames_skipped", "Frames passed over on purpose (max_fps, paused).", registry=registry
        )
        self.inspection_errors = Counter(
            f"{PREFIX}inspection_errors", "Frames that could not be inspected or stored.", registry=registry
        )
        self.frame_errors = Counter(
            f"{PREFIX}frame_errors", "Frames the inspector refused (size, channels, type).", registry=registry
        )
        self.model_failures = Counter(
            f"{PREFIX}model_failures", "Inspections in which the model itself failed.", registry=registry
        )
        self.latency = Histogram(
            f"{PREFIX}inspection_latency_seconds",
            "From the frame leaving the camera pipeline to its result being stored.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.model_info = Gauge(
            f"{PREFIX}model_info",
            "The model inspecting now; always 1, the version is the label.",
            ["version"],
            registry=registry,
        )
        self.inspector_info = Info(
            f"{PREFIX}inspector", "The software and the model inspecting now.", registry=registry
        )
        self.start_time = Gauge(f"{PREFIX}start_time_seconds", "Unix time the service started.", registry=registry)
        self.start_time.set(time.time())
        self._set_info()
        registry.register(_LiveCollector(live))
        registry.register(_RecentLatencyCollector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    # --- counting (the frame thread) -------------------------------------------------------------------

    def record_part(self, latency_ms: float, is_defect: bool) -> None:
        with self._lock:
            self.parts_inspected.inc()
            self.verdicts.labels("defect" if is_defect else "good").inc()
            self.latency.observe(latency_ms / 1000.0)
            self._recent_ms.append(latency_ms)

    def count_skipped(self) -> None:
        self.frames_skipped.inc()

    def count_frame_error(self) -> None:
        with self._lock:
            self.inspection_errors.inc()
            self.frame_errors.inc()

    def count_model_failure(self) -> None:
        with self._lock:
            self.inspection_errors.inc()
            self.model_failures.inc()

    def count_storage_error(self) -> None:
        self.inspection_errors.inc()

    def model_changed(self, version: str) -> None:
        with self._lock:
            self._model_version = version
            self.model_info.clear()
            self.model_info.labels(version).set(1)
            self._set_info()

    def _set_info(self) -> None:
        self.inspector_info.info(
            {"software_version": self.software_version, "model_version": self._model_version or ""}
        )

    # --- reading (any thread) ----------------------------------------------------------------------------

    @property
    def inspected(self) -> int:
        return int(_value(self.parts_inspected))

    @property
    def defects(self) -> int:
        return int(_value(self.verdicts, {"verdict": "defect"}))

    @property
    def errors(self) -> int:
        return int(_value(self.inspection_errors))

    @property
    def skipped(self) -> int:
        return int(_value(self.frames_skipped))

    def recent_latency_ms(self) -> list[float]:
        with self._lock:
            return list(self._recent_ms)

    def exposition(self) -> bytes:
        """The `/metrics` body."""
        with self._lock:
            return generate_latest(self.registry)

    def snapshot(self) -> MetricsSnapshot:
        """Every figure, read from one collection of the registry (what a scrape at this moment returns)."""
        with self._lock:
            samples = _Samples(self.registry.collect())
            model_version = self._model_version
        p50, p99 = (samples.optional("recent_latency_seconds", {"quantile": str(q)}) for q in RECENT_QUANTILES)
        return MetricsSnapshot(
            frames_in=samples.count("frames_received_total"),
            inspected=samples.count("parts_inspected_total"),
            good=samples.count("verdicts_total", {"verdict": "good"}),
            defects=samples.count("verdicts_total", {"verdict": "defect"}),
            dropped=samples.count("frames_dropped_total"),
            skipped=samples.count("frames_skipped_total"),
            errors=samples.count("inspection_errors_total"),
            frame_errors=samples.count("frame_errors_total"),
            model_failures=samples.count("model_failures_total"),
            bad_frames=samples.count("bad_frames_total"),
            camera_reconnects=samples.count("camera_reconnects_total"),
            camera_streaming=samples.count("camera_streaming") == 1,
            outbox_depth=samples.count("outbox_depth"),
            outbox_dropped=samples.count("outbox_dropped_total"),
            results_published=samples.count("results_published_total"),
            broker_connected=samples.count("broker_connected") == 1,
            latency_p50_ms=None if p50 is None else round(p50 * 1000.0, 2),
            latency_p99_ms=None if p99 is None else round(p99 * 1000.0, 2),
            latency_window=samples.count("recent_latency_window"),
            model_version=model_version,
            uptime_s=round(time.monotonic() - self.started, 1),
        )


def _value(metric: Counter, labels: dict[str, str] | None = None) -> float:
    """The `_total` sample of a counter (with these labels), through its public collect()."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == (labels or {}):
                return sample.value
    return 0.0


class _Samples:
    """The samples of one collection, looked up by name (without the prefix) and labels."""

    def __init__(self, families: Iterator[Metric]) -> None:
        self._values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families
            for sample in family.samples
        }

    def optional(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self._values.get((PREFIX + name, tuple(sorted((labels or {}).items()))))

    def count(self, name: str, labels: dict[str, str] | None = None) -> int:
        value = self.optional(name, labels)
        if value is None:
            raise KeyError(f"the registry has no sample {PREFIX}{name} {labels or ''}")
        return int(value)


class _LiveCollector:
    """Counters and gauges of the camera source, the outbox and the publisher, read where they are kept."""

    def __init__(self, live: Callable[[], LiveFigures]) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        figures = self.live()
        yield CounterMetricFamily(
            f"{PREFIX}frames_received", "Frames delivered by the camera pipeline.", value=figures.frames_in
        )
        yield CounterMetricFamily(
            f"{PREFIX}frames_dropped",
            "Frames replaced by a newer one before they could be inspected.",
            value=figures.frames_dropped,
        )
        yield CounterMetricFamily(
            f"{PREFIX}bad_frames",
            "Camera buffers too short for the frame their caps describe; skipped.",
            value=figures.bad_frames,
        )
        yield CounterMetricFamily(
            f"{PREFIX}camera_reconnects", "Camera pipeline restarts.", value=figures.camera_reconnects
        )
        yield GaugeMetricFamily(
            f"{PREFIX}camera_streaming", "1 while the camera delivers frames.", value=int(figures.camera_streaming)
        )
        yield GaugeMetricFamily(
            f"{PREFIX}outbox_depth",
            "Results stored and not yet acknowledged by the broker.",
            value=figures.outbox_depth,
        )
        yield CounterMetricFamily(
            f"{PREFIX}outbox_dropped",
            "Results dropped by the outbox bounds (rows, age); kept in the outbox file across restarts.",
            value=figures.outbox_dropped,
        )
        yield CounterMetricFamily(
            f"{PREFIX}results_published",
            "Results the broker acknowledged (and that left the outbox).",
            value=figures.results_published,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}broker_connected",
            "1 while connected to the MQTT broker.",
            value=int(figures.broker_connected),
        )


class _RecentLatencyCollector:
    """p50 and p99 over the last LATENCY_WINDOW results: what the stats message and the page show."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        recent = np.array(self.metrics.recent_latency_ms(), dtype=np.float64)
        quantiles = GaugeMetricFamily(
            f"{PREFIX}recent_latency_seconds",
            f"Inspection latency quantiles over the last {LATENCY_WINDOW} results.",
            labels=["quantile"],
        )
        if recent.size:
            values_ms = np.percentile(recent, [100 * q for q in RECENT_QUANTILES])
            for quantile, value_ms in zip(RECENT_QUANTILES, values_ms, strict=True):
                quantiles.add_metric([str(quantile)], float(value_ms) / 1000.0)
        yield quantiles
        yield GaugeMetricFamily(
            f"{PREFIX}recent_latency_window", "Results the recent latency quantiles are taken over.", value=recent.size
        )
