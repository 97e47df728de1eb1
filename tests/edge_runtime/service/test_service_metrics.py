"""The service's metrics registry, read back with the Prometheus reference parser."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.service.service_metrics import (
    LATENCY_BUCKETS_S,
    LATENCY_WINDOW,
    LiveFigures,
    ServiceMetrics,
)

FIGURES = LiveFigures(
    frames_in=40,
    frames_dropped=7,
    bad_frames=5,
    camera_reconnects=4,
    camera_streaming=True,
    outbox_depth=12,
    outbox_dropped=2,
    results_published=18,
    broker_connected=False,
)


def live(**changes) -> Callable[[], LiveFigures]:
    return lambda: replace(FIGURES, **changes)


def parsed(metrics: ServiceMetrics) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.exposition().decode())}


def with_parts(latencies_ms: list[float], defects: int, **changes) -> ServiceMetrics:
    """Metrics that recorded one part per latency, the last `defects` of them defective."""
    metrics = ServiceMetrics("0.1.0", live(**changes))
    for index, latency in enumerate(latencies_ms):
        metrics.record_part(latency, index >= len(latencies_ms) - defects)
    return metrics


def test_histogram_buckets_are_cumulative_and_a_value_on_a_bound_counts_in_that_bucket():
    metrics = with_parts([10.0, 50.0, 100.0, 500.0, 3000.0, 2.0], defects=0)
    latency = parsed(metrics)["d3ad_inspection_latency_seconds"]
    cumulative = tuple(s.value for s in latency.samples if s.name.endswith("_bucket"))
    # <=5 ms, 10, 25, 50, 100, 250, 500 ms, 1 s, 2.5, 5, 10 s, +Inf
    assert cumulative == (1, 2, 2, 3, 4, 4, 5, 5, 5, 6, 6, 6)
    totals = {s.name.rsplit("_", 1)[1]: s.value for s in latency.samples if not s.name.endswith("_bucket")}
    assert totals["count"] == 6
    assert totals["sum"] == pytest.approx(3.662)


def test_every_metric_parses_with_its_type_and_the_values_it_was_given():
    before = time.time()
    latencies_ms = [4.0, 30.0, 30.0, 200.0, 700.0, 12000.0] * 5
    metrics = with_parts(latencies_ms, defects=9)
    for _ in range(3):
        metrics.count_skipped()
    metrics.count_frame_error()
    metrics.model_changed("2.1.0")
    families = parsed(metrics)

    def only(name: str) -> float:
        (sample,) = families[name].samples
        return sample.value

    assert families["d3ad_frames_received"].type == "counter"
    assert families["d3ad_frames_received"].samples[0].name == "d3ad_frames_received_total"
    assert only("d3ad_frames_received") == 40 and only("d3ad_frames_dropped") == 7
    assert only("d3ad_frames_skipped") == 3 and only("d3ad_inspection_errors") == 1
    assert only("d3ad_frame_errors") == 1 and only("d3ad_model_failures") == 0
    assert only("d3ad_parts_inspected") == 30
    verdicts = {s.labels["verdict"]: s.value for s in families["d3ad_verdicts"].samples}
    assert verdicts == {"good": 21, "defect": 9}
    assert families["d3ad_outbox_depth"].type == "gauge" and only("d3ad_outbox_depth") == 12
    assert only("d3ad_outbox_dropped") == 2 and only("d3ad_results_published") == 18
    assert only("d3ad_broker_connected") == 0 and only("d3ad_camera_streaming") == 1
    assert only("d3ad_camera_reconnects") == 4 and only("d3ad_bad_frames") == 5
    assert before <= only("d3ad_start_time_seconds") <= time.time()
    (info,) = families["d3ad_model_info"].samples
    assert info.labels == {"version": "2.1.0"} and info.value == 1
    (inspector,) = families["d3ad_inspector_info"].samples
    assert inspector.labels == {"software_version": "0.1.0", "model_version": "2.1.0"} and inspector.value == 1

    latency = families["d3ad_inspection_latency_seconds"]
    assert latency.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in latency.samples if s.name.endswith("_bucket")]
    assert [bound for bound, _ in buckets] == [*LATENCY_BUCKETS_S, math.inf]
    assert buckets == [(bound, sum(v / 1000 <= bound for v in latencies_ms)) for bound, _ in buckets]
    totals = {s.name: s.value for s in latency.samples if not s.name.endswith("_bucket")}
    assert totals["d3ad_inspection_latency_seconds_count"] == len(latencies_ms)
    assert totals["d3ad_inspection_latency_seconds_sum"] == pytest.approx(sum(latencies_ms) / 1000)

    recent = {s.labels["quantile"]: s.value for s in families["d3ad_recent_latency_seconds"].samples}
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    assert recent == {"0.5": pytest.approx(p50 / 1000), "0.99": pytest.approx(p99 / 1000)}
    assert only("d3ad_recent_latency_window") == 30


def test_label_values_are_escaped_and_a_missing_model_has_no_info_sample():
    odd = 'v1 "night"\\shift\nB'
    metrics = ServiceMetrics("0.1.0")
    families = parsed(metrics)
    assert families["d3ad_model_info"].samples == []
    assert families["d3ad_inspector_info"].samples[0].labels == {"software_version": "0.1.0", "model_version": ""}
    assert [s.value for s in families["d3ad_inspection_latency_seconds"].samples][-2:] == [0, 0]
    assert families["d3ad_recent_latency_seconds"].samples == []

    metrics.model_changed(odd)
    families = parsed(metrics)
    assert families["d3ad_model_info"].samples[0].labels["version"] == odd
    assert families["d3ad_inspector_info"].samples[0].labels["model_version"] == odd
    metrics.model_changed("3.0.0")
    (info,) = parsed(metrics)["d3ad_model_info"].samples
    assert info.labels == {"version": "3.0.0"}, "only the model inspecting now"


def test_the_snapshot_reads_the_same_figures_a_scrape_returns():
    latencies_ms = [float(v) for v in range(1, 31)]
    metrics = with_parts(latencies_ms, defects=4, broker_connected=True)
    metrics.count_model_failure()
    metrics.count_storage_error()
    metrics.model_changed("1.0.0")
    figures = metrics.snapshot()
    families = parsed(metrics)

    def value(name: str, **labels: str) -> float:
        return next(s.value for s in families[name].samples if s.labels == labels)

    assert figures.inspected == value("d3ad_parts_inspected") == 30 == metrics.inspected
    assert figures.defects == value("d3ad_verdicts", verdict="defect") == 4 == metrics.defects
    assert figures.good == value("d3ad_verdicts", verdict="good") == 26
    assert figures.errors == value("d3ad_inspection_errors") == 2 == metrics.errors
    assert figures.model_failures == value("d3ad_model_failures") == 1 and figures.frame_errors == 0
    assert (figures.frames_in, figures.dropped, figures.bad_frames) == (40, 7, 5)
    assert (figures.outbox_depth, figures.outbox_dropped, figures.results_published) == (12, 2, 18)
    assert figures.broker_connected and figures.camera_streaming and figures.camera_reconnects == 4
    assert figures.latency_window == 30 and figures.model_version == "1.0.0"
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    assert (figures.latency_p50_ms, figures.latency_p99_ms) == (round(p50, 2), round(p99, 2))
    assert figures.latency_p50_ms == round(value("d3ad_recent_latency_seconds", quantile="0.5") * 1000, 2)


def test_recent_latency_is_over_the_last_window_of_results():
    latencies_ms = [1000.0] * 100 + [float(v % 50) for v in range(LATENCY_WINDOW)]
    figures = with_parts(latencies_ms, defects=0).snapshot()
    p50, p99 = np.percentile(latencies_ms[-LATENCY_WINDOW:], [50, 99])
    assert figures.latency_window == LATENCY_WINDOW and figures.inspected == len(latencies_ms)
    assert (figures.latency_p50_ms, figures.latency_p99_ms) == (round(p50, 2), round(p99, 2))
    assert figures.latency_p99_ms < 1000, "the older slow results have left the window"


def test_each_service_has_its_own_registry_with_the_process_collectors():
    first, second = ServiceMetrics("0.1.0"), ServiceMetrics("0.1.0")
    first.record_part(12.0, True)
    assert (first.inspected, second.inspected) == (1, 0)
    assert b"d3ad_parts_inspected_total" not in generate_latest(REGISTRY), "not on the process-wide default"
    families = parsed(second)
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds"):
        assert families[name].samples[0].value > 0, name
    assert families["python_info"].samples[0].labels["implementation"]
    assert {s.labels["generation"] for s in families["python_gc_collections"].samples} == {"0", "1", "2"}
