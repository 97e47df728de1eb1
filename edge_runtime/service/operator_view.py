"""Operator view: a small local HTTP server beside the frame loop. `/` is the live page, `/state.json` what it
polls, `/overlay.jpg` the heatmap of the latest part, `/metrics` the service's metrics registry (as the
metrics endpoint serves it), `/healthz` liveness. A ServiceObserver: whoever builds the service attaches it.

The frame loop only hands parts over (a deque append under a lock); overlays are rendered here, in the HTTP
threads, on demand and once per part. Every counter on the page comes from the service's metrics registry."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edge_runtime.service.bounded_http import BoundedHTTPServer, BoundedRequestHandler, ServingThread
from edge_runtime.service.operator_page import PAGE_HTML
from edge_runtime.service.service_config import OperatorViewConfig
from edge_runtime.service.service_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_runtime.service.service_observer import ObserverUnavailable, ServiceView

if TYPE_CHECKING:
    from edge_runtime.service.service_observer import InspectedPart

log = logging.getLogger(__name__)

# The page is self-contained: it may load nothing but what this server serves, and never another origin.
_PAGE_POLICY = (
    "default-src 'none'; img-src 'self'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
)


@dataclass(frozen=True)
class RecentPart:
    """One verdict as the page lists it."""

    part_id: str
    time: str
    verdict: str
    score: float
    threshold: float
    latency_ms: float
    defects: int
    model_version: str


@dataclass(frozen=True)
class Counters:
    frames_in: int
    inspected: int
    defects: int
    dropped: int
    skipped: int
    errors: int
    outbox_depth: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@dataclass(frozen=True)
class ViewState:
    """What `/state.json` answers; the page draws exactly this."""

    device_id: str
    model_version: str | None
    state: str
    camera: str
    broker_connected: bool
    last_error: str | None
    counters: Counters
    recent: list[RecentPart]  # newest first
    refresh_s: float


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str
    state: str
    last_tick_age_s: float | None


def assess_health(
    state: str, last_tick: float | None, now: float, stale_after_s: float, delivery_problem: str | None = None
) -> Health:
    """Alive means: not shutting down, the frame loop turned recently (it turns at least every 0.2 s when
    idle, so a long silence is a hang, not a quiet camera), and results can go out (`delivery_problem`, e.g.
    a publisher thread that ended or an outbox that cannot record acks)."""
    age = None if last_tick is None else round(now - last_tick, 3)
    if state == "stopping":
        return Health(False, "the service is stopping", state, age)
    if delivery_problem is not None:
        return Health(False, delivery_problem, state, age)
    if age is None:
        return Health(False, "the frame loop has not started yet", state, age)
    if age > stale_after_s:
        return Health(False, f"the frame loop has not turned for {age:.1f} s (limit {stale_after_s:g} s)", state, age)
    return Health(True, "the frame loop is turning", state, age)


def recent_part(part: InspectedPart) -> RecentPart:
    payload = part.payload
    return RecentPart(
        part_id=part.part_id,
        time=str(payload["time"]),
        verdict="defect" if part.result.is_defect else "good",
        score=float(payload["score"]),
        threshold=float(payload["threshold"]),
        latency_ms=round(part.latency_ms, 2),
        defects=len(part.result.regions),
        model_version=part.inspector.model_version,
    )


class PartLog:
    """The latest parts and the loop's last turn, shared between the frame thread (writer) and the HTTP threads
    (readers). It counts nothing: the counters are the service's metrics."""

    def __init__(self, keep: int) -> None:
        self._lock = threading.Lock()
        self._recent: deque[RecentPart] = deque(maxlen=keep)
        self._latest: InspectedPart | None = None
        self._last_tick: float | None = None

    def record(self, part: InspectedPart) -> None:
        entry = recent_part(part)  # built outside the lock; cheap either way
        with self._lock:
            self._recent.appendleft(entry)
            self._latest = part

    def tick(self, now: float) -> None:
        with self._lock:
            self._last_tick = now

    def last_tick(self) -> float | None:
        with self._lock:
            return self._last_tick

    def latest(self) -> InspectedPart | None:
        with self._lock:
            return self._latest

    def recent(self) -> list[RecentPart]:
        with self._lock:
            return list(self._recent)


class OverlayCache:
    """The overlay JPEG of the latest part, rendered at most once per part id."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._lock = threading.Lock()  # also keeps two browsers from rendering the same part twice
        self._part_id: str | None = None
        self._jpeg = b""

    def jpeg_for(self, part: InspectedPart) -> bytes:
        with self._lock:
            if self._part_id != part.part_id:
                # Drawn with the model that judged the part, which may no longer be the active one.
                self._jpeg = part.overlay_jpeg(self.quality)
                self._part_id = part.part_id
            return self._jpeg


class OperatorView:
    """A ServiceObserver: `starting(service)` binds and serves in daemon threads, `stopping()` closes the socket."""

    def __init__(self, config: OperatorViewConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.parts = PartLog(config.recent_parts)
        self._service: ServiceView | None = None
        self._overlays: OverlayCache | None = None
        self._serving: ServingThread | None = None

    # --- the observer --------------------------------------------------------------------------------

    def starting(self, service: ServiceView) -> None:
        """Bind and serve; ObserverUnavailable when the address cannot be bound (port taken, no such address)."""
        self._service = service
        self._overlays = OverlayCache(service.config.heatmaps.jpeg_quality)
        config = self.config
        try:
            server = _ViewServer((config.host, config.port), _Handler, config.max_connections, config.request_timeout_s)
        except OSError as error:
            raise ObserverUnavailable(f"operator view cannot listen on {config.host}:{config.port}: {error}") from error
        server.view = self
        self._serving = ServingThread(server, "operator-view")
        log.info("operator view on %s", self.url)

    def on_tick(self) -> None:
        self.parts.tick(self.clock())

    def on_result(self, part: InspectedPart) -> None:
        self.parts.record(part)

    def stopping(self) -> None:
        if self._serving is not None:
            self._serving.close()

    @property
    def port(self) -> int:
        """The port actually bound (differs from the config when it asked for 0)."""
        if self._serving is None:
            raise RuntimeError("the operator view is not started")
        return self._serving.port

    @property
    def url(self) -> str:
        if self._serving is None:
            raise RuntimeError("the operator view is not started")
        return self._serving.url("/")

    # --- what the endpoints answer -------------------------------------------------------------------

    @property
    def service(self) -> ServiceView:
        if self._service is None:
            raise RuntimeError("the operator view is not started")
        return self._service

    def health(self) -> Health:
        return assess_health(
            self.service.status_payload()["state"],
            self.parts.last_tick(),
            self.clock(),
            self.config.healthz_stale_s,
            self.service.delivery_problem(),
        )

    def view_state(self) -> ViewState:
        service = self.service
        status, figures = service.status_payload(), service.stats.snapshot()
        counters = Counters(
            frames_in=figures.frames_in,
            inspected=figures.inspected,
            defects=figures.defects,
            dropped=figures.dropped,
            skipped=figures.skipped,
            errors=figures.errors,
            outbox_depth=figures.outbox_depth,
            latency_p50_ms=figures.latency_p50_ms,
            latency_p99_ms=figures.latency_p99_ms,
        )
        return ViewState(
            device_id=service.config.mqtt.device_id,
            model_version=status["model_version"],
            state=status["state"],
            camera=status["camera"]["state"],
            broker_connected=figures.broker_connected,
            last_error=status["last_error"],
            counters=counters,
            recent=self.parts.recent(),
            refresh_s=self.config.refresh_s,
        )

    def metrics_text(self) -> bytes:
        return self.service.stats.exposition()

    def overlay(self) -> tuple[str, bytes] | None:
        """(part id, JPEG) of the latest inspected part, or None before the first one."""
        part = self.parts.latest()
        if part is None or self._overlays is None:
            return None
        return part.part_id, self._overlays.jpeg_for(part)


class _ViewServer(BoundedHTTPServer):
    view: OperatorView


class _Handler(BoundedRequestHandler):
    server: _ViewServer
    server_version = "d3ad-operator-view"

    def do_GET(self) -> None:
        self.answer_guarded("operator view", self._answer)

    def _answer(self) -> None:
        route = _ROUTES.get(urlsplit(self.path).path)
        if route is None:
            self.send_body(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
            return
        route(self)

    def _send_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self.send_body(status, "application/json", json.dumps(body, separators=(",", ":")).encode("utf-8"))

    def page(self) -> None:
        headers = {"Content-Security-Policy": _PAGE_POLICY}
        self.send_body(HTTPStatus.OK, "text/html; charset=utf-8", PAGE_HTML.encode("utf-8"), headers)

    def state(self) -> None:
        self._send_json(HTTPStatus.OK, asdict(self.server.view.view_state()))

    def overlay(self) -> None:
        latest = self.server.view.overlay()
        if latest is None:
            self.send_body(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"no part inspected yet\n")
            return
        part_id, jpeg = latest
        self.send_body(HTTPStatus.OK, "image/jpeg", jpeg, {"X-Part-Id": part_id})

    def metrics(self) -> None:
        self.send_body(HTTPStatus.OK, METRICS_CONTENT_TYPE, self.server.view.metrics_text())

    def healthz(self) -> None:
        health = self.server.view.health()
        status = HTTPStatus.OK if health.healthy else HTTPStatus.SERVICE_UNAVAILABLE
        self._send_json(status, asdict(health))


_ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/": _Handler.page,
    "/state.json": _Handler.state,
    "/overlay.jpg": _Handler.overlay,
    "/metrics": _Handler.metrics,
    "/healthz": _Handler.healthz,
}
