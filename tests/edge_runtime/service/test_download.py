"""Fetching bundles: resumed after a cut, bounded in size, checked by sha256, from http or a local path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from edge_runtime.service.download import DownloadError, DownloadLimits, fetch

LIMITS = DownloadLimits(max_bytes=1 << 20, timeout_s=20, attempts=3, allowed_hosts=("127.0.0.1",))


def served_file(bundle_server, name: str, size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    (bundle_server.folder / name).write_bytes(data)
    return data, hashlib.sha256(data).hexdigest()


def test_a_cut_download_resumes_where_it_broke_off(bundle_server, tmp_path):
    data, sha = served_file(bundle_server, "b.tar", 300_000)
    bundle_server.cut_next = 1
    target = fetch(bundle_server.url("b.tar"), tmp_path / "b.part", sha, LIMITS)
    assert target.read_bytes() == data
    assert [r for _, r in bundle_server.requests] == [None, "bytes=150000-"], "the retry asks only for the rest"


def test_a_download_that_keeps_breaking_gives_up_with_the_reason(bundle_server, tmp_path):
    _, sha = served_file(bundle_server, "b.tar", 100_000)
    bundle_server.cut_next = 10
    limits = DownloadLimits(max_bytes=1 << 20, timeout_s=20, attempts=2, allowed_hosts=("127.0.0.1",))
    with pytest.raises(DownloadError) as caught:
        fetch(bundle_server.url("b.tar"), tmp_path / "b.part", sha, limits)
    assert caught.value.reason == "download_failed" and "2 attempt(s)" in str(caught.value)


def test_a_bundle_over_the_size_limit_is_refused_before_it_is_read(bundle_server, tmp_path):
    _, sha = served_file(bundle_server, "big.tar", 5000)
    limits = DownloadLimits(max_bytes=4096, timeout_s=20, attempts=3, allowed_hosts=("127.0.0.1",))
    with pytest.raises(DownloadError) as caught:
        fetch(bundle_server.url("big.tar"), tmp_path / "big.part", sha, limits)
    assert caught.value.reason == "too_large" and "5000 bytes" in caught.value.detail
    assert len(bundle_server.requests) == 1, "a size refusal is not retried"


def test_a_missing_file_is_not_retried(bundle_server, tmp_path):
    with pytest.raises(DownloadError) as caught:
        fetch(bundle_server.url("nope.tar"), tmp_path / "n.part", "0" * 64, LIMITS)
    assert caught.value.reason == "download_failed" and "404" in caught.value.detail
    assert len(bundle_server.requests) == 1


def test_a_wrong_sha256_is_refused_and_the_file_removed(bundle_server, tmp_path):
    served_file(bundle_server, "b.tar", 1000)
    with pytest.raises(DownloadError) as caught:
        fetch(bundle_server.url("b.tar"), tmp_path / "b.part", "f" * 64, LIMITS)
    assert caught.value.reason == "sha256_mismatch"
    assert not (tmp_path / "b.part").exists()


def test_local_paths_absolute_or_file_urls(tmp_path):
    source = tmp_path / "source.tar"
    source.write_bytes(b"bundle bytes")
    sha = hashlib.sha256(b"bundle bytes").hexdigest()
    limits = dataclasses.replace(LIMITS, local_folder=tmp_path)
    assert fetch(str(source), tmp_path / "a.part", sha, limits).read_bytes() == b"bundle bytes"
    assert fetch(f"file://{source}", tmp_path / "b.part", sha, limits).read_bytes() == b"bundle bytes"
    with pytest.raises(DownloadError, match="must be absolute"):
        fetch("source.tar", tmp_path / "c.part", sha, limits)
    with pytest.raises(DownloadError, match="cannot read"):
        fetch(str(tmp_path / "missing.tar"), tmp_path / "d.part", sha, limits)


def test_local_paths_outside_the_folder_special_files_and_hashes_are_never_given_away(tmp_path):
    """`/dev/zero` once wrote 200 MB past a 1024-byte limit; a refusal once carried the real sha256 of any
    file the service could read (the MQTT password included)."""
    allowed = tmp_path / "bundles"
    allowed.mkdir()
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    (allowed / "link.tar").symlink_to(secret)
    limits = dataclasses.replace(LIMITS, max_bytes=1024, local_folder=allowed)
    for source in ["/dev/zero", str(secret), str(allowed / "link.tar"), f"file://{allowed}/../mqtt-password"]:
        with pytest.raises(DownloadError) as caught:
            fetch(source, allowed / "x.part", "0" * 64, limits)
        assert caught.value.reason == "not_allowed", (source, caught.value)
    assert not (allowed / "x.part").exists() or (allowed / "x.part").stat().st_size == 0
    with pytest.raises(DownloadError) as caught:
        fetch("/dev/zero", tmp_path / "y.part", "0" * 64, dataclasses.replace(limits, local_folder=Path("/dev")))
    assert caught.value.reason == "not_allowed" and "regular file" in caught.value.detail
    (allowed / "b.tar").write_bytes(b"bundle")
    with pytest.raises(DownloadError) as caught:
        fetch(str(allowed / "b.tar"), allowed / "z.part", "0" * 64, limits)
    assert caught.value.reason == "sha256_mismatch"
    assert hashlib.sha256(b"bundle").hexdigest() not in str(caught.value), "no hash of the file in the reply"


def test_http_only_from_configured_hosts(bundle_server, tmp_path):
    _, sha = served_file(bundle_server, "b.tar", 1000)
    url = bundle_server.url("b.tar").replace("127.0.0.1", "localhost")
    with pytest.raises(DownloadError) as caught:
        fetch(url, tmp_path / "b.part", sha, LIMITS)
    assert caught.value.reason == "not_allowed" and bundle_server.requests == []


class TrickleServer:
    """A real HTTP server that sends a large body one byte every `interval_s`."""

    def __init__(self, interval_s: float) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    for _ in range(100000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(interval_s)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/b.tar"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_trickling_server_cannot_stretch_the_deadline(tmp_path):
    server = TrickleServer(0.5)
    try:
        limits = dataclasses.replace(LIMITS, timeout_s=2.0, attempts=1)
        start = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch(server.url, tmp_path / "b.part", "0" * 64, limits)
        took = time.monotonic() - start
    finally:
        server.close()
    assert caught.value.reason == "download_failed" and took < 3.5, f"took {took:.1f} s for a 2 s deadline"


def test_a_download_can_be_cancelled(tmp_path):
    server = TrickleServer(0.05)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    try:
        limits = dataclasses.replace(LIMITS, timeout_s=60.0, attempts=1, cancel=cancel)
        start = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch(server.url, tmp_path / "b.part", "0" * 64, limits)
    finally:
        server.close()
    assert caught.value.reason == "cancelled" and time.monotonic() - start < 3


def test_a_download_that_would_fill_the_disk_is_refused(bundle_server, small_disk):
    """The outbox shares the disk: a bundle may not take the space it needs."""
    _, sha = served_file(bundle_server, "b.tar", 1_500_000)
    limits = dataclasses.replace(LIMITS, max_bytes=1 << 24, keep_free_bytes=1 << 20)
    with pytest.raises(DownloadError) as caught:
        fetch(bundle_server.url("b.tar"), small_disk.path / "b.part", sha, limits)
    assert caught.value.reason == "no_space"
    assert shutil.disk_usage(small_disk.path).free >= 1 << 20
