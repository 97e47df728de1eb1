"""Prometheus exposition written by the service, read back with the reference parser."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.service.metrics import (
    LATENCY_BUCKETS_S,
    LatencyHistogram,
    MetricsSample,
    format_value,
    render_metrics,
)


def sample_with(histogram: LatencyHistogram, **changes) -> MetricsSample:
    fields = {
        "frames_received": 40,
        "frames_dropped": 7,
        "frames_skipped": 3,
        "good": 21,
        "defects": 9,
        "errors": 1,
        "latency": histogram.snapshot(),
        "outbox_depth": 12,
        "outbox_dropped": 2,
        "broker_connected": False,
        "camera_streaming": True,
        "camera_reconnects": 4,
        "model_version": "2.1.0",
        "start_time_s": 1_700_000_000.25,
    }
    return MetricsSample(**(fields | changes))


def parsed(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_histogram_buckets_are_cumulative_and_a_value_on_a_bound_counts_in_that_bucket():
    histogram = LatencyHistogram((0.01, 0.1, 1.0))
    for value in (0.01, 0.05, 0.1, 0.5, 3.0, 0.002):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.cumulative == (2, 4, 5, 6)  # <=0.01, <=0.1, <=1, +Inf
    assert snapshot.count == 6
    assert snapshot.total == pytest.approx(3.662)
    with pytest.raises(ValueError, match="ascending"):
        LatencyHistogram((0.1, 0.01))


def test_every_metric_parses_with_its_type_and_the_values_it_was_given():
    histogram = LatencyHistogram()
    latencies = [0.004, 0.03, 0.03, 0.2, 0.7, 12.0]
    for value in latencies:
        histogram.observe(value)
    families = parsed(render_metrics(sample_with(histogram)))

    def only(name: str) -> float:
        (sample,) = families[name].samples
        return sample.value

    assert families["d3ad_frames_received"].type == "counter"
    assert families["d3ad_frames_received"].samples[0].name == "d3ad_frames_received_total"
    assert only("d3ad_frames_received") == 40 and only("d3ad_frames_dropped") == 7
    assert only("d3ad_frames_skipped") == 3 and only("d3ad_inspection_errors") == 1
    assert only("d3ad_parts_inspected") == 30
    verdicts = {s.labels["verdict"]: s.value for s in families["d3ad_verdicts"].samples}
    assert verdicts == {"good": 21, "defect": 9}
    assert families["d3ad_outbox_depth"].type == "gauge" and only("d3ad_outbox_depth") == 12
    assert only("d3ad_outbox_dropped") == 2
    assert only("d3ad_broker_connected") == 0 and only("d3ad_camera_streaming") == 1
    assert only("d3ad_camera_reconnects") == 4
    assert only("d3ad_start_time_seconds") == 1_700_000_000.25
    (info,) = families["d3ad_model_info"].samples
    assert info.labels == {"version": "2.1.0"} and info.value == 1

    latency = families["d3ad_inspection_latency_seconds"]
    assert latency.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in latency.samples if s.name.endswith("_bucket")]
    assert [bound for bound, _ in buckets] == [*LATENCY_BUCKETS_S, math.inf]
    assert buckets == [(bound, sum(v <= bound for v in latencies)) for bound, _ in buckets]
    totals = {s.name: s.value for s in latency.samples if not s.name.endswith("_bucket")}
    assert totals["d3ad_inspection_latency_seconds_count"] == len(latencies)
    assert totals["d3ad_inspection_latency_seconds_sum"] == pytest.approx(sum(latencies))


def test_label_values_are_escaped_and_a_missing_model_has_no_info_sample():
    odd = 'v1 "night"\\shift\nB'
    families = parsed(render_metrics(sample_with(LatencyHistogram(), model_version=odd)))
    assert families["d3ad_model_info"].samples[0].labels["version"] == odd

    families = parsed(render_metrics(sample_with(LatencyHistogram(), model_version=None)))
    assert families["d3ad_model_info"].samples == []
    assert [s.value for s in families["d3ad_inspection_latency_seconds"].samples][-2:] == [0, 0]


def test_values_are_written_as_prometheus_reads_them():
    assert format_value(3) == "3" and format_value(2.0) == "2" and format_value(0.025) == "0.025"
    assert format_value(math.inf) == "+Inf" and format_value(-math.inf) == "-Inf" and format_value(math.nan) == "NaN"
    assert format_value(2.0**60) == repr(2.0**60)  # beyond exact integers a float stays a float
