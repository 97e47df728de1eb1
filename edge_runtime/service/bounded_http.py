"""An HTTP server for the device's local endpoints that no client can exhaust: at most `max_connections`
requests are served at once (one thread each; a connection beyond that is answered 503 and closed by the
accepting thread), every request's socket has a timeout (a half-sent request or a client that stops reading
is dropped), and a client that hangs up mid-request or mid-response is logged as one line, not a traceback."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# What a client that went away looks like from the server's side of the socket.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\nbusy\n"
)
_LOG_REFUSALS_EVERY = 100


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser holding a connection open must not delay the service's exit
    request_queue_size = 64  # connections past the bound are accepted to be refused, not left in the backlog

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        request_timeout_s: float,
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self.refused = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self.host = address[0]  # as configured, for URLs (the bound address may read differently)
        # Before the socket is made: an IPv6 literal (it has colons) needs an IPv6 socket.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # noqa: ANN401
        """In the accepting thread: start a handler thread if a slot is free, else refuse at once."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:  # noqa: ANN401
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: socket.socket, client_address: Any) -> None:  # noqa: ANN401
        """Instead of socketserver's traceback on stderr: one line for a client gone, the log for a bug."""
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_GONE):
            log.info("client %s went away: %s", _shown(client_address), error or type(error).__name__)
            return
        log.exception("request from %s failed", _shown(client_address))

    def _refuse(self, request: socket.socket, client_address: Any) -> None:  # noqa: ANN401
        self.refused += 1
        if self.refused % _LOG_REFUSALS_EVERY == 1:
            log.warning("all connections busy; refused %s (%d refused so far)", _shown(client_address), self.refused)
        with contextlib.suppress(OSError):
            request.setblocking(False)  # the accepting thread never waits on a client
            _drain(request)  # closing with unread bytes would reset the connection and lose the answer
            request.send(_BUSY)
        self.shutdown_request(request)


class ServingThread:
    """A bound server served from a daemon thread until `close()`: the one lifecycle of every local endpoint."""

    def __init__(self, server: BoundedHTTPServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The port actually bound (differs from the config when it asked for 0)."""
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        host = self.server.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class BoundedRequestHandler(BaseHTTPRequestHandler):
    """Applies the server's request timeout to the socket; request and timeout logs go to the debug log."""

    server: BoundedHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # StreamRequestHandler.setup sets it on the socket
        super().setup()

    def answer_guarded(self, endpoint: str, answer: Callable[[], None]) -> None:
        """Run one request's answer: a client gone is one log line, any other failure is one failed request
        (a 500 where the socket still takes it), never a dead server."""
        try:
            answer()
        except CLIENT_GONE as error:  # the browser closed the tab or a scraper gave up: nothing to answer
            log.info("%s: client %s went away during %s: %s", endpoint, self.address_string(), self.path, error)
            self.close_connection = True
        except Exception:  # e.g. a scrape racing the shutdown
            log.exception("%s: %s failed", endpoint, self.path)
            with contextlib.suppress(*CLIENT_GONE):
                self.send_body(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"internal error\n")

    def send_body(
        self, status: HTTPStatus, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """A complete answer, never cached and never content-sniffed by a browser."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - the base class's signature
        log.debug("%s: " + format, self.address_string(), *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401
        log.info("%s: " + format, self.address_string(), *args)  # e.g. "Request timed out", one line


def _drain(request: socket.socket, limit: int = 64 * 1024) -> None:
    """Read what the client has sent so far, without waiting."""
    received = 0
    while received < limit:
        try:
            chunk = request.recv(4096)
        except BlockingIOError:
            return
        if not chunk:
            return
        received += len(chunk)


def _shown(client_address: Any) -> str:  # noqa: ANN401
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return f"{client_address[0]}:{client_address[1]}"
    return str(client_address)
