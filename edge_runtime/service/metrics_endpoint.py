"""`/metrics` on its own port (config `metrics`), served whenever the service runs, with or without the
operator view.

Served by bounded_http rather than prometheus_client's own server: that one starts a thread per connection
without a bound and sets no socket timeout, so a few half-sent requests could tie up the device's threads;
this one serves at most `max_connections` scrapes at once and drops a stalled request after its timeout."""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import urlsplit

from edge_runtime.service.bounded_http import BoundedHTTPServer, BoundedRequestHandler, ServingThread
from edge_runtime.service.service_config import MetricsConfig
from edge_runtime.service.service_metrics import CONTENT_TYPE, ServiceMetrics

log = logging.getLogger(__name__)

PATH = "/metrics"


class MetricsEndpoint:
    """`start()` binds (raises OSError when the address is taken) and serves in daemon threads; `stop()` closes."""

    def __init__(self, config: MetricsConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._serving: ServingThread | None = None

    def start(self) -> None:
        config = self.config
        server = _MetricsServer((config.host, config.port), _Handler, config.max_connections, config.request_timeout_s)
        server.metrics = self.metrics
        self._serving = ServingThread(server, "metrics")
        log.info("metrics on %s", self.url)

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.close()

    @property
    def port(self) -> int:
        """The port actually bound (differs from the config when it asked for 0)."""
        if self._serving is None:
            raise RuntimeError("the metrics endpoint is not started")
        return self._serving.port

    @property
    def url(self) -> str:
        if self._serving is None:
            raise RuntimeError("the metrics endpoint is not started")
        return self._serving.url(PATH)


class _MetricsServer(BoundedHTTPServer):
    metrics: ServiceMetrics


class _Handler(BoundedRequestHandler):
    server: _MetricsServer
    server_version = "d3ad-metrics"

    def do_GET(self) -> None:
        self.answer_guarded("metrics", self._answer)

    def _answer(self) -> None:
        if urlsplit(self.path).path != PATH:
            self.send_body(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", f"not found; try {PATH}\n".encode())
            return
        self.send_body(HTTPStatus.OK, CONTENT_TYPE, self.server.metrics.exposition())
