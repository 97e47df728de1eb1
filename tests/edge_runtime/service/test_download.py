"""Fetching bundles: resumed after a cut, bounded in size, checked by sha256, from http or a local path."""

from __future__ import annotations

import hashlib
import os

import pytest

from edge_runtime.service.download import DownloadError, DownloadLimits, fetch

LIMITS = DownloadLimits(max_bytes=1 << 20, timeout_s=20, attempts=3)


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
    limits = DownloadLimits(max_bytes=1 << 20, timeout_s=20, attempts=2)
    with pytest.raises(DownloadError) as caught:
        fetch(bundle_server.url("b.tar"), tmp_path / "b.part", sha, limits)
    assert caught.value.reason == "download_failed" and "2 attempt(s)" in str(caught.value)


def test_a_bundle_over_the_size_limit_is_refused_before_it_is_read(bundle_server, tmp_path):
    _, sha = served_file(bundle_server, "big.tar", 5000)
    limits = DownloadLimits(max_bytes=4096, timeout_s=20, attempts=3)
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
    assert fetch(str(source), tmp_path / "a.part", sha, LIMITS).read_bytes() == b"bundle bytes"
    assert fetch(f"file://{source}", tmp_path / "b.part", sha, LIMITS).read_bytes() == b"bundle bytes"
    with pytest.raises(DownloadError, match="must be absolute"):
        fetch("source.tar", tmp_path / "c.part", sha, LIMITS)
    with pytest.raises(DownloadError, match="cannot read"):
        fetch(str(tmp_path / "missing.tar"), tmp_path / "d.part", sha, LIMITS)
