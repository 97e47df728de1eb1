"""`/metrics` on its own port: served by a real running service with the operator page off, and in agreement
with the MQTT stats message and the operator page after recorded parts streamed through GStreamer to mosquitto."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.cli import package_version
from edge_runtime.service.metrics_endpoint import MetricsEndpoint
from edge_runtime.service.operator_view import OperatorView
from edge_runtime.service.service_config import ConfigError, MetricsConfig, parse_config
from edge_runtime.service.service_metrics import ServiceMetrics

FPS = 4  # recorded parts play at this rate


def get(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body); an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics answer, by (name, sorted labels)."""
    status, content_type, body = get(url)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def own(samples: dict[tuple[str, tuple], float]) -> dict[tuple[str, tuple], float]:
    return {key: value for key, value in samples.items() if key[0].startswith("d3ad_")}


def labels_of(samples: dict[tuple[str, tuple], float], name: str) -> dict[str, str]:
    (labels,) = [dict(key[1]) for key in samples if key[0] == name]
    return labels


def test_the_endpoint_serves_metrics_only_and_a_taken_port_is_an_error():
    metrics = ServiceMetrics("0.1.0")
    metrics.record_part(20.0, False)
    endpoint = MetricsEndpoint(MetricsConfig(port=0), metrics)
    endpoint.start()
    try:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        assert scrape(endpoint.url)[("d3ad_parts_inspected_total", ())] == 1
        status, _, body = get(f"http://127.0.0.1:{endpoint.port}/")
        assert status == 404 and b"/metrics" in body
        with pytest.raises(OSError):
            MetricsEndpoint(MetricsConfig(port=endpoint.port), metrics).start()
    finally:
        endpoint.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", endpoint.port), timeout=2):
        pass


def test_metrics_are_on_by_default_on_their_own_port_and_strictly_configured(tmp_path):
    config = parse_config({"bundle": {"slot": str(tmp_path)}}, "minimal")
    assert (config.metrics.enabled, config.metrics.host, config.metrics.port) == (True, "127.0.0.1", 9464)
    assert config.operator_view.enabled is False
    with pytest.raises(ConfigError) as refused:
        parse_config({"bundle": {"slot": str(tmp_path)}, "metrics": {"bind": "0.0.0.0"}}, "bad")
    assert refused.value.problems == ["metrics.bind: Extra inputs are not permitted (got '0.0.0.0')"]
    with pytest.raises(ConfigError, match="metrics.port"):
        parse_config({"bundle": {"slot": str(tmp_path)}, "metrics": {"port": 70000}}, "bad")


def test_metrics_answer_with_the_operator_page_off(broker, listen, make_config, run_service, shared_inspector):
    listener = listen(broker.port, "test")
    service = run_service(make_config(broker.port))
    assert not service.config.operator_view.enabled
    assert not any(isinstance(observer, OperatorView) for observer in service.observers)
    listener.wait_for(lambda: len(listener.payloads("/result")) >= 2, 20, "a few results")
    assert service.metrics_endpoint is not None and service.metrics_endpoint.port > 0

    samples = scrape(service.metrics_endpoint.url)
    assert samples[("d3ad_parts_inspected_total", ())] >= 2
    assert labels_of(samples, "d3ad_inspector_info") == {
        "software_version": package_version(),
        "model_version": shared_inspector.model_version,
    }
    assert package_version() != "unknown"
    assert labels_of(samples, "d3ad_model_info") == {"version": shared_inspector.model_version}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert samples[(name, ())] > 0, name
    assert any(name == "python_gc_collections_total" for name, _ in samples)
    assert service.last_error is None


def test_metrics_the_stats_message_and_the_page_agree_after_a_real_run(
    broker, listen, make_config, run_service, recorded_parts
):
    folder = recorded_parts[0].parent
    pipeline = f'multifilesrc location={folder}/part_%03d.png caps="image/png,framerate={FPS}/1" ! pngdec'
    raw = make_config(
        broker.port,
        # A long reconnect backoff: after the last file (end of stream) the recording must not replay.
        camera={"pipeline": pipeline, "reconnect_min_s": 60, "reconnect_max_s": 60},
        mode={"max_fps": 0},
        operator_view={"enabled": True, "port": 0},
    )
    listener = listen(broker.port, "test")
    service = run_service(raw)
    (view,) = [observer for observer in service.observers if isinstance(observer, OperatorView)]
    listener.wait_for(lambda: service.source.reconnects >= 1, 30, "the end of the recording")
    listener.wait_for(lambda: service.outbox.depth() == 0, 10, "the outbox to drain")
    listener.wait_for(lambda: len(listener.payloads("/result")) == service.stats.inspected, 10, "every result")
    settled = len(listener.payloads("/stats"))
    listener.wait_for(lambda: len(listener.payloads("/stats")) > settled, 5, "a stats message after the run")

    stats = listener.payloads("/stats")[-1]
    samples = scrape(service.metrics_endpoint.url)
    page = json.loads(get(view.url + "state.json")[2])["counters"]
    on_page = scrape(view.url + "metrics")

    def metric(name: str, **labels: str) -> float:
        return samples[(f"d3ad_{name}", tuple(sorted(labels.items())))]

    results = listener.payloads("/result")
    assert results and stats["inspected"] == len(results)
    defects = sum(result["verdict"] == "defect" for result in results)
    assert 0 < defects < len(results), "the recording has both verdicts"
    assert metric("parts_inspected_total") == stats["inspected"] == page["inspected"] == len(results)
    assert metric("verdicts_total", verdict="defect") == stats["defects"] == page["defects"] == defects
    assert metric("verdicts_total", verdict="good") == len(results) - defects
    assert metric("frames_received_total") == stats["frames_in"] == page["frames_in"] >= len(results)
    assert metric("frames_dropped_total") == stats["dropped"] == page["dropped"]
    assert metric("frames_skipped_total") == stats["skipped"] == page["skipped"]
    assert metric("inspection_errors_total") == stats["errors"] == page["errors"] == 0
    assert metric("outbox_depth") == stats["outbox"]["depth"] == page["outbox_depth"] == 0
    assert metric("outbox_dropped_total") == stats["outbox"]["dropped"]
    assert metric("camera_reconnects_total") == stats["camera_reconnects"] >= 1
    assert metric("bad_frames_total") == stats["bad_frames"]
    assert metric("results_published_total") == len(results)

    latency = stats["latency_ms"]
    assert latency["window"] == metric("recent_latency_window") == len(results)
    recent_ms = {q: round(metric("recent_latency_seconds", quantile=q) * 1000, 2) for q in ("0.5", "0.99")}
    assert latency["p50"] == page["latency_p50_ms"] == recent_ms["0.5"] is not None
    assert latency["p99"] == page["latency_p99_ms"] == recent_ms["0.99"]
    assert metric("inspection_latency_seconds_count") == len(results)
    published_s = sum(result["latency_ms"] for result in results) / 1000.0  # each rounded to 0.01 ms
    assert metric("inspection_latency_seconds_sum") == pytest.approx(published_s, abs=1e-5 * len(results))

    assert own(on_page) == own(samples), "the page's /metrics is the same registry"
