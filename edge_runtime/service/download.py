"""Fetch a model bundle from an http(s) URL or a local path: bounded in size and time, resumed after a cut."""

from __future__ import annotations

import http.client
import shutil
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_runtime.bundle import sha256_of_file

DownloadErrorReason = Literal["download_failed", "too_large", "sha256_mismatch"]

_CHUNK_BYTES = 1 << 20
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


def fetch(source: str, target: Path, expected_sha256: str, limits: DownloadLimits) -> Path:
    """Bring `source` (http(s) URL, file:// URL or local path) to `target` and check its sha256.

    A partial `target` left by an earlier attempt is resumed when the server honours ranges."""
    if source.startswith(("http://", "https://")):
        _fetch_http(source, target, limits)
    else:
        _copy_local(_local_path(source), target, limits.max_bytes)
    actual = sha256_of_file(target)
    if actual != expected_sha256:
        target.unlink(missing_ok=True)
        raise DownloadError("sha256_mismatch", f"{source} has sha256 {actual}, the request says {expected_sha256}")
    return target


def _local_path(source: str) -> Path:
    path = Path(source.removeprefix("file://"))
    if not path.is_absolute():
        raise DownloadError("download_failed", f"local path {source} must be absolute")
    return path


def _copy_local(path: Path, target: Path, max_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DownloadError("download_failed", f"cannot read {path}: {error.strerror or error}") from error
    _check_size(size, max_bytes, str(path))
    try:
        shutil.copyfile(path, target)
    except OSError as error:
        raise DownloadError("download_failed", f"cannot copy {path}: {error.strerror or error}") from error


def _check_size(size: int, max_bytes: int, source: str) -> None:
    if size > max_bytes:
        raise DownloadError("too_large", f"{source} is {size} bytes, over the {max_bytes}-byte limit")


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
            if _attempt_http(url, target, limits.max_bytes, deadline, context):
                return
            last_error = "the connection closed before the whole file arrived"
        except DownloadError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            last_error = str(getattr(error, "reason", None) or error)
    raise DownloadError(
        "download_failed", f"{url}: gave up after {limits.attempts} attempt(s) or {limits.timeout_s:g} s: {last_error}"
    )


def _attempt_http(url: str, target: Path, max_bytes: int, deadline: float, context: ssl.SSLContext) -> bool:
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
        if total is not None:
            _check_size(total, max_bytes, url)
        with target.open("ab" if resumed else "wb") as out:
            received = _copy_stream(response, out, have, max_bytes, deadline, url)
    return total is None or received >= total


def _expected_total(response, have: int, resumed: bool) -> int | None:  # noqa: ANN001 - an HTTP response
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (have if resumed else 0)


def _copy_stream(response, out, have: int, max_bytes: int, deadline: float, url: str) -> int:  # noqa: ANN001
    received = have
    for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
        received += len(chunk)
        _check_size(received, max_bytes, url)
        out.write(chunk)
        if time.monotonic() > deadline:
            raise DownloadError("download_failed", f"{url}: the download took longer than allowed")
    return received
