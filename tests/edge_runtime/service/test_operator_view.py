"""Operator view: the page in a real headless Chromium, /metrics against the service's own counters, /healthz,
and its config. Recorded parts stream through a real GStreamer pipeline to a real mosquitto."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.service.observers import standard_observers
from edge_runtime.service.operator_view import OperatorView, assess_health
from edge_runtime.service.service import Service
from edge_runtime.service.service_config import ConfigError, parse_config
from edge_runtime.service.systemd_notify import SystemdNotifier
from tests.edge_runtime.service.conftest import wait_until

FPS = 4  # recorded parts play at this rate
WINDOW = (1280, 900)
VERDICT_COLORS = {"good": (0x1E, 0x7B, 0x34), "defect": (0xB3, 0x26, 0x1E)}  # RGB of the page's verdict banner


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def get(url: str) -> Answer:
    """GET with urllib; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def view_config(make_config, broker_port: int, folder: Path, **overrides) -> dict:
    pipeline = f'multifilesrc location={folder}/part_%03d.png caps="image/png,framerate={FPS}/1" ! pngdec'
    return make_config(
        broker_port,
        # A long reconnect backoff: after the last file (end of stream) the recording must not replay.
        camera={"pipeline": pipeline, "reconnect_min_s": 60, "reconnect_max_s": 60},
        mode={"max_fps": 0},
        operator_view={"enabled": True, "port": 0},
        **overrides,
    )


def operator_view_of(service: Service) -> OperatorView | None:
    """The operator view among the service's observers (they are dropped when they cannot start)."""
    return next((observer for observer in service.observers if isinstance(observer, OperatorView)), None)


def part_number(result: dict) -> int:
    return int(result["part_id"].rsplit("-", 1)[1])


def stream_recording(service: Service, listener) -> list[dict]:  # noqa: ANN001 - the conftest Listener
    """Wait for the end of the recording and for every stored result to reach the broker; results in order."""
    listener.wait_for(lambda: service.source.reconnects >= 1, 30, "the end of the recording")
    listener.wait_for(lambda: service.outbox.depth() == 0, 10, "the outbox to drain")
    listener.wait_for(
        lambda: len(listener.payloads("/result")) == service.stats.inspected, 10, "every result at the listener"
    )
    results = sorted(listener.payloads("/result"), key=part_number)
    assert results, "the recording produced results"
    return results


def chromium_binary() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def run_chromium(binary: str, url: str, profile: Path, *action: str) -> str:
    """Headless Chromium on the page; the virtual time budget lets the page poll and redraw before `action`
    (dump the DOM, take a screenshot) happens."""
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # the tests may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=4000",
        *action,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class PageDom(HTMLParser):
    """Text and attributes of the elements with an id, and the rows of the recent-verdict table."""

    VOID = {"img", "br", "input", "meta", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.attributes: dict[str, dict[str, str]] = {}
        self.rows: list[tuple[str, str]] = []  # (part id, verdict)
        self._open: list[str | None] = []  # the id of every open element, None where it has none

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "tr" and "data-part-id" in values:
            self.rows.append((values["data-part-id"], values.get("data-verdict", "")))
        element_id = values.get("id")
        if element_id:
            self.attributes[element_id] = values
            self.texts[element_id] = ""
        if tag not in self.VOID:
            self._open.append(element_id)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        owner = next((element_id for element_id in reversed(self._open) if element_id), None)
        if owner is not None:
            self.texts[owner] += data.strip()


def parse_page(html: str) -> PageDom:
    page = PageDom()
    page.feed(html)
    return page


def test_page_in_headless_chromium_shows_the_services_verdicts_and_model(
    broker, listen, make_config, run_service, recorded_parts, shared_inspector, tmp_path
):
    chromium = chromium_binary()
    listener = listen(broker.port, "test")
    service = run_service(view_config(make_config, broker.port, recorded_parts[0].parent))
    view = operator_view_of(service)
    assert view is not None and view.port > 0
    results = stream_recording(service, listener)
    latest = results[-1]

    page = parse_page(run_chromium(chromium, view.url, tmp_path / "profile-dom", "--dump-dom"))
    verdict = page.attributes["verdict"]
    assert verdict["data-verdict"] == latest["verdict"] and verdict["data-part-id"] == latest["part_id"]
    assert page.texts["verdict"] == latest["verdict"].upper()
    assert page.texts["model-version"] == latest["model_version"] == shared_inspector.model_version
    assert page.rows == [(r["part_id"], r["verdict"]) for r in reversed(results)], "newest first, all of them"
    assert page.texts["inspected"] == str(service.stats.inspected)
    assert page.texts["defects"] == str(sum(r["verdict"] == "defect" for r in results))
    assert page.texts["broker"] == "connected" and page.texts["device-id"] == "cam1"
    assert page.attributes["overlay"]["src"].endswith(f"overlay.jpg?part={latest['part_id']}")

    overlay = get(view.url + "overlay.jpg")
    assert overlay.status == 200 and overlay.headers["X-Part-Id"] == latest["part_id"]
    image = cv2.imdecode(np.frombuffer(overlay.body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == shared_inspector.size

    screenshot = tmp_path / "operator-view.png"
    run_chromium(chromium, view.url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot = cv2.imread(str(screenshot), cv2.IMREAD_COLOR)
    assert shot is not None and (shot.shape[1], shot.shape[0]) == WINDOW
    rgb = shot[..., ::-1].reshape(-1, 3).astype(int)
    banner = np.all(np.abs(rgb - VERDICT_COLORS[latest["verdict"]]) <= 3, axis=1).sum()
    assert banner > 10_000, f"the {latest['verdict']} banner is drawn ({banner} pixels)"
    assert len(np.unique(rgb, axis=0)) > 500, "the heatmap overlay is drawn, not only flat page colours"


def test_metrics_agree_with_the_services_counters_and_follow_the_broker(
    broker, listen, make_config, run_service, recorded_parts, shared_inspector
):
    listener = listen(broker.port, "test")
    service = run_service(view_config(make_config, broker.port, recorded_parts[0].parent))
    view = operator_view_of(service)
    results = stream_recording(service, listener)

    answer = get(view.url + "metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(answer.body.decode())}

    def only(name: str) -> float:
        (sample,) = families[name].samples
        return sample.value

    inspected = only("d3ad_parts_inspected")
    verdicts = {s.labels["verdict"]: s.value for s in families["d3ad_verdicts"].samples}
    assert inspected == service.stats.inspected == len(results)
    assert verdicts["good"] + verdicts["defect"] == inspected
    assert verdicts["defect"] == service.stats.defects == sum(r["verdict"] == "defect" for r in results)
    assert only("d3ad_frames_received") == service.source.frames_in >= inspected
    assert only("d3ad_frames_dropped") == service.source.dropped
    assert only("d3ad_inspection_errors") == service.stats.errors == 0

    latency = families["d3ad_inspection_latency_seconds"]
    buckets = [(float(s.labels["le"]), s.value) for s in latency.samples if s.name.endswith("_bucket")]
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert buckets[-1] == (float("inf"), inspected)
    totals = {s.name.rsplit("_", 1)[1]: s.value for s in latency.samples if not s.name.endswith("_bucket")}
    assert totals["count"] == inspected
    published_s = sum(r["latency_ms"] for r in results) / 1000.0  # each rounded to 0.01 ms in the payload
    assert totals["sum"] == pytest.approx(published_s, abs=1e-5 * len(results))

    assert only("d3ad_outbox_depth") == service.outbox.depth() == 0
    assert only("d3ad_broker_connected") == 1
    (info,) = families["d3ad_model_info"].samples
    assert info.labels["version"] == service.inspector.model_version == shared_inspector.model_version

    health = get(view.url + "healthz")
    assert health.status == 200 and json.loads(health.body)["healthy"] is True

    broker.stop()
    listener.wait_for(lambda: b"d3ad_broker_connected 0" in get(view.url + "metrics").body, 10, "disconnected")
    assert get(view.url + "healthz").status == 200, "a broker outage is not a hung service"


def unstarted_service(tmp_path: Path, **view) -> Service:
    """A service that is built but never run: no model, no camera, no broker; with the observers `run` would
    attach outside systemd."""
    raw = {"bundle": {"slot": str(tmp_path)}, "state_dir": str(tmp_path / "state"), "operator_view": view}
    config = parse_config(raw, "test config")
    return Service(config, observers=standard_observers(config, SystemdNotifier.from_environment({})))


def test_healthz_fails_until_the_loop_turns_and_when_it_stalls_or_stops(tmp_path):
    now = [1000.0]
    service = unstarted_service(tmp_path, enabled=False, port=0, healthz_stale_s=5)
    view = OperatorView(service.config.operator_view, clock=lambda: now[0])  # attached here, with a test clock
    service.attach(view)
    service._start_observers()
    try:
        waiting = get(view.url + "healthz")
        assert waiting.status == 503 and "not started" in json.loads(waiting.body)["reason"]

        for tick in service.tick_listeners:  # what the frame loop calls every turn
            tick()
        now[0] += 4.0
        alive = get(view.url + "healthz")
        assert alive.status == 200 and json.loads(alive.body)["last_tick_age_s"] == 4.0

        now[0] += 2.0
        stalled = json.loads(get(view.url + "healthz").body)
        assert stalled["healthy"] is False and "6.0 s" in stalled["reason"]
        assert get(view.url + "healthz").status == 503

        for tick in service.tick_listeners:
            tick()
        assert get(view.url + "healthz").status == 200
        service.state = "stopping"
        assert get(view.url + "healthz").status == 503

        # Before any part: the page and the metrics answer, without an overlay or a model.
        assert get(view.url + "overlay.jpg").status == 404
        assert b"<title>D3AD operator view</title>" in get(view.url).body
        state = json.loads(get(view.url + "state.json").body)
        assert state["recent"] == [] and state["model_version"] is None and state["broker_connected"] is False
        families = {f.name: f for f in text_string_to_metric_families(get(view.url + "metrics").body.decode())}
        assert families["d3ad_model_info"].samples == [] and families["d3ad_parts_inspected"].samples[0].value == 0
        assert get(view.url + "nothing-here").status == 404
    finally:
        service._stop_observers()
    assert view.on_result not in service.result_listeners and not service.tick_listeners


def test_health_is_judged_on_state_and_the_age_of_the_last_turn():
    assert assess_health("running", 10.0, 12.0, 5.0).healthy
    assert assess_health("camera_lost", 10.0, 12.0, 5.0).healthy, "a lost camera is reported, not a hang"
    assert not assess_health("running", 10.0, 15.5, 5.0).healthy
    assert not assess_health("running", None, 15.5, 5.0).healthy
    assert not assess_health("stopping", 10.0, 10.1, 5.0).healthy


def test_view_is_off_by_default_and_strictly_configured(tmp_path):
    config = parse_config({"bundle": {"slot": str(tmp_path)}}, "minimal")
    assert config.operator_view.enabled is False
    assert (config.operator_view.host, config.operator_view.port) == ("127.0.0.1", 8080)
    with pytest.raises(ConfigError) as refused:
        parse_config({"bundle": {"slot": str(tmp_path)}, "operator_view": {"enabled": True, "colour": "red"}}, "bad")
    assert refused.value.problems == ["operator_view.colour: Extra inputs are not permitted (got 'red')"]
    with pytest.raises(ConfigError, match="operator_view.port"):
        parse_config({"bundle": {"slot": str(tmp_path)}, "operator_view": {"port": 70000}}, "bad")

    service = unstarted_service(tmp_path)
    service._start_observers()
    assert operator_view_of(service) is None and not service.tick_listeners, "nothing listens unless enabled"


def test_view_binds_to_localhost_by_default_and_a_taken_port_costs_only_the_view(tmp_path):
    service = unstarted_service(tmp_path, enabled=True, port=0)
    service._start_observers()
    try:
        view = operator_view_of(service)
        assert view is not None and view.url == f"http://127.0.0.1:{view.port}/"
        assert view._serving.server.server_address[0] == "127.0.0.1"
        assert get(view.url + "healthz").status == 503  # it answers (the loop has not turned here)
    finally:
        service._stop_observers()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = unstarted_service(tmp_path, enabled=True, port=taken.getsockname()[1])
        busy._start_observers()
    assert operator_view_of(busy) is None
    assert "operator view cannot listen on 127.0.0.1:" in busy.last_error


def test_healthz_fails_when_results_cannot_go_out():
    health = assess_health("running", 10.0, 12.0, 5.0, "the publisher thread has ended")
    assert not health.healthy and health.reason == "the publisher thread has ended"


def half_sent_requests(port: int, count: int) -> list[socket.socket]:
    """Connections that send the start of a request and never finish it (a slow or hostile client)."""
    opened = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(b"GET /state.json HTTP/1.1\r\nHost: device\r\n")
        opened.append(connection)
    return opened


def answer_of(connection: socket.socket) -> bytes:
    """What the server sent before it closed: the refusal, or nothing when it dropped the request."""
    with connection:
        return connection.recv(100)


def test_connections_are_bounded_and_half_sent_requests_time_out(tmp_path):
    service = unstarted_service(tmp_path, enabled=True, port=0, max_connections=4, request_timeout_s=1.0)
    view = OperatorView(service.config.operator_view)
    before = threading.active_count()
    view.starting(service)
    try:
        stalled = half_sent_requests(view.port, 30)
        time.sleep(0.3)
        assert threading.active_count() - before <= 4 + 1, "a thread per slot, plus the accepting thread"
        busy = get(view.url + "healthz")
        assert busy.status == 503 and busy.body == b"busy\n"

        started = time.monotonic()
        answers = [answer_of(connection) for connection in stalled]
        assert time.monotonic() - started < 3.0, "every half-sent request ended within its 1 s timeout"
        refused = sum(answer.startswith(b"HTTP/1.0 503") for answer in answers)
        assert refused >= 26 and answers.count(b"") == 30 - refused, answers
        wait_until(lambda: threading.active_count() - before <= 1, 5, "the handler threads to end")
        assert get(view.url + "healthz").headers["Content-Type"] == "application/json", "it serves again"
    finally:
        view.stopping()


def test_a_client_hanging_up_mid_request_or_response_is_one_log_line(tmp_path, caplog, capfd):
    service = unstarted_service(tmp_path, enabled=True, port=0)
    view = OperatorView(service.config.operator_view)
    view.starting(service)
    caplog.set_level(logging.INFO)
    try:
        for _ in range(40):
            connection = socket.create_connection(("127.0.0.1", view.port), timeout=5)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
            # Close with a reset (linger 0): the server's next read or write of this socket fails.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()
        time.sleep(0.5)
        assert b"<title>D3AD operator view</title>" in get(view.url).body, "it serves on"
    finally:
        view.stopping()
    assert "Traceback" not in capfd.readouterr().err
    assert [record for record in caplog.records if record.exc_info] == []
    gone = [record.getMessage() for record in caplog.records if "went away" in record.getMessage()]
    assert all("\n" not in message for message in gone)
