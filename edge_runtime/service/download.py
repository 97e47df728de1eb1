"""Fetch a model bundle from an http(s) URL or a local path: bounded in size and time, resumed after a cut.

Only hosts and a local folder the config names are fetched from, the deadline is enforced on every read (a
server trickling bytes cannot stretch it), a download can be cancelled, and it never eats into the free space
the outbox needs. Error details never carry a file's hash or anything read from it."""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import stat
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from edge_runtime.bundle import sha256_of_file

DownloadErrorReason = Literal["download_failed", "too_large", "sha256_mismatch", "not_allowed", "no_space", "cancelled"]

_CHUNK_BYTES = 64 * 1024
_SOCKET_TIMEOUT_S = 30.0


class DownloadError(Exception):
    """A bundle that could not be fetched; `reason` is machine-readable, the message says what went wrong."""

    def __init__(self, reason: DownloadErrorReason, message: str) -> None:
        super().__init__(reason, message)
        self.reason: DownloadErrorReason = reason
        self.detail = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class DownloadLimits:
    max_bytes: int
    timeout_s: float  # for the whole download, all attempts together
    attempts: int
    ca_file: Path | None = None
    max_unpacked_bytes: int = 8 * 1024**3  # what the verified archive may expand to
    allowed_hosts: tuple[str, ...] = ()  # http(s) hosts bundles may come from; none: no http(s) downloads
    local_folder: Path | None = None  # local bundles only below this folder; None: no local paths
    keep_free_bytes: int = 0  # a download that would leave less free space is refused
    cancel: threading.Event | None = None  # set to abandon the download at the next read


def fetch(source: str, target: Path, expected_sha256: str, limits: DownloadLimits) -> Path:
    """Bring `source` (http(s) URL, file:// URL or local path) to `target` and check its sha256.

    A partial `target` left by an earlier attempt is resumed when the server honours ranges."""
    if source.startswith(("http://", "https://")):
        _check_host(source, limits.allowed_hosts)
        _fetch_http(source, target, limits)
    else:
        _copy_local(_local_path(source, limits.local_folder), target, limits)
    if sha256_of_file(target) != expected_sha256:
        target.unlink(missing_ok=True)
        # The actual hash is not told: it would turn install into a way to learn the hash of any file.
        raise DownloadError("sha256_mismatch", f"{source}: the sha256 of the file differs from the request's")
    return target


def _check_host(url: str, allowed: tuple[str, ...]) -> None:
    host = (urlsplit(url).hostname or "").lower()
    if host not in {name.lower() for name in allowed}:
        raise DownloadError("not_allowed", f"host {host!r} is not in updates.allowed_hosts")


def _local_path(source: str, folder: Path | None) -> Path:
    path = Path(source.removeprefix("file://"))
    if not path.is_absolute():
        raise DownloadError("download_failed", f"local path {source} must be absolute")
    if folder is None:
        raise DownloadError("not_allowed", "local bundle paths are turned off (updates.local_folder)")
    resolved, root = path.resolve(), folder.resolve()
    if not resolved.is_relative_to(root):
        raise DownloadError("not_allowed", f"local bundles must lie below updates.local_folder ({folder})")
    return resolved


def _copy_local(path: Path, target: Path, limits: DownloadLimits) -> None:
    """Regular files only (no devices, FIFOs or /proc files), copied under the same size, space, time and
    cancel limits as a download."""
    deadline = time.monotonic() + limits.timeout_s
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as error:
        raise DownloadError("download_failed", f"cannot read {path}: {error.strerror or error}") from error
    with os.fdopen(descriptor, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DownloadError("not_allowed", f"{path} is not a regular file")
        _check_size(info.st_size, limits.max_bytes, str(path))
        room = _room(target, limits.keep_free_bytes)
        _check_room(info.st_size, room, str(path))
        try:
            with target.open("wb") as out:
                _copy_stream(source.read, out, 0, min(limits.max_bytes, room), deadline, str(path), limits)
        except OSError as error:
            raise DownloadError("download_failed", f"cannot copy {path}: {error.strerror or error}") from error


def _check_size(size: int, max_bytes: int, source: str) -> None:
    if size > max_bytes:
        raise DownloadError("too_large", f"{source} is {size} bytes, over the {max_bytes}-byte limit")


def _room(target: Path, keep_free_bytes: int) -> int:
    """Bytes the download may still write without leaving less than `keep_free_bytes` free."""
    have = target.stat().st_size if target.exists() else 0
    return shutil.disk_usage(target.parent).free + have - keep_free_bytes


def _check_room(size: int, room: int, source: str) -> None:
    if size > room:
        raise DownloadError("no_space", f"{source} needs {size} bytes; the disk has room for {max(0, room)}")


def _fetch_http(url: str, target: Path, limits: DownloadLimits) -> None:
    """Retry with backoff until the deadline; each retry asks only for the bytes still missing."""
    deadline = time.monotonic() + limits.timeout_s
    context = ssl.create_default_context(cafile=str(limits.ca_file) if limits.ca_file else None)
    last_error = "no attempt was made"
    for attempt in range(limits.attempts):
        if attempt:
            time.sleep(min(2.0**attempt, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        try:
            if _attempt_http(url, target, limits, deadline, context):
                return
            last_error = "the connection closed before the whole file arrived"
        except DownloadError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            last_error = str(getattr(error, "reason", None) or error)
    raise DownloadError(
        "download_failed", f"{url}: gave up after {limits.attempts} attempt(s) or {limits.timeout_s:g} s: {last_error}"
    )


def _attempt_http(url: str, target: Path, limits: DownloadLimits, deadline: float, context: ssl.SSLContext) -> bool:
    """One request; True when the file is complete. Raises on HTTP errors that a retry will not mend."""
    have = target.stat().st_size if target.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    timeout = max(1.0, min(_SOCKET_TIMEOUT_S, deadline - time.monotonic()))
    try:
        response = urllib.request.urlopen(request, timeout=timeout, context=context)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already whole (or stale): start over
            target.unlink()
            return False
        if 400 <= error.code < 500:
            raise DownloadError("download_failed", f"{url}: HTTP {error.code} {error.reason}") from error
        raise
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        total = _expected_total(response, have, resumed)
        room = _room(target, limits.keep_free_bytes)  # counts the bytes already here, as `total` does
        if total is not None:
            _check_size(total, limits.max_bytes, url)
            _check_room(total, room, url)
        with target.open("ab" if resumed else "wb") as out:
            limit = min(limits.max_bytes, room)
            received = _copy_stream(response.read1, out, have, limit, deadline, url, limits)
    return total is None or received >= total


def _expected_total(response, have: int, resumed: bool) -> int | None:  # noqa: ANN001 - an HTTP response
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (have if resumed else 0)


def _copy_stream(read, out, have: int, limit: int, deadline: float, source: str, limits: DownloadLimits) -> int:  # noqa: ANN001
    """Copy in small reads (`read1` returns what one socket read brings), checking the deadline, the size and
    space limits and the cancel flag after each one."""
    received = have
    for chunk in iter(lambda: read(_CHUNK_BYTES), b""):
        received += len(chunk)
        _check_size(received, limits.max_bytes, source)
        _check_room(received, limit, source)
        out.write(chunk)
        if limits.cancel is not None and limits.cancel.is_set():
            raise DownloadError("cancelled", f"{source}: the download was cancelled")
        if time.monotonic() > deadline:
            raise DownloadError("download_failed", f"{source}: the download took longer than allowed")
    return received
