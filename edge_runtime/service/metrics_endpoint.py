"""`/metrics` on its own port (config `metrics`), served whenever the service runs, with or without the
operator view.

Served by bounded_http rather than prometheus_client's own server: that one starts a thread per connection
without a bound and sets no socket timeout, so a few half-sent requests could tie up the device's threads;
this one serves at most `max_connections` scrapes at once and drops a stalled request after its timeout."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from http import HTTPStatus
from urllib.parse import urlsplit

from edge_runtime.service.bounded_http import CLIENT_GONE, BoundedHTTPServer, BoundedRequestHandler
from edge_runtime.service.service_config import MetricsConfig
from edge_runtime.service.service_metrics import CONTENT_TYPE, ServiceMetrics

log = logging.getLogger(__name__)

PATH = "/metrics"


class MetricsEndpoint:
    """`start()` binds (raises OSError when the address is taken) and serves in daemon threads; `stop()` closes."""

    def __init__(self, config: MetricsConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self._server: _MetricsServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = self.config
        server_class = _MetricsServerV6 if ":" in config.host else _MetricsServer
        server = server_class((config.host, config.port), _Handler, config.max_connections, config.request_timeout_s)
        server.metrics = self.metrics
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics on %s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        """The port actually bound (differs from the config when it asked for 0)."""
        if self._server is None:
            raise RuntimeError("the metrics endpoint is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}{PATH}"


class _MetricsServer(BoundedHTTPServer):
    metrics: ServiceMetrics


class _MetricsServerV6(_MetricsServer):
    address_family = socket.AF_INET6


class _Handler(BoundedRequestHandler):
    server: _MetricsServer
    server_version = "d3ad-metrics"

    def do_GET(self) -> None:
        try:
            if urlsplit(self.path).path != PATH:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", f"not found; try {PATH}\n".encode())
                return
            self._send(HTTPStatus.OK, CONTENT_TYPE, self.server.metrics.exposition())
        except CLIENT_GONE as error:  # a scraper that gave up: nothing to answer
            log.info("metrics: client %s went away: %s", self.address_string(), error)
            self.close_connection = True
        except Exception:  # e.g. a scrape racing the shutdown: one failed request, never a dead server
            log.exception("metrics: %s failed", self.path)
            with contextlib.suppress(*CLIENT_GONE):
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)
