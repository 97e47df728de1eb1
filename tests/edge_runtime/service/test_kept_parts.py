"""Parts kept for retraining: real frames on disk, bounded by count, bytes and age, oldest first, drops counted."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from edge_runtime.service.kept_parts import KeepLimits, KeptParts


@pytest.fixture(scope="module")
def frames(recorded_parts) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in recorded_parts]


def _keep(store: KeptParts, frames: list[np.ndarray], ids: list[str]) -> None:
    for number, part_id in enumerate(ids):
        assert store.keep(part_id, frames[number % len(frames)], ["defect"], {"part_id": part_id, "score": 1.0})
        store.flush()  # one at a time, so the order on disk is the order kept


def _kept_ids(store: KeptParts) -> list[str]:
    return [json.loads(p.read_text())["part_id"] for p in sorted(store.folder.glob("*.json"))]


def test_the_count_bound_removes_the_oldest_first_and_counts_it(tmp_path, frames):
    store = KeptParts(tmp_path / "kept", KeepLimits(max_parts=3, max_bytes=10**9, max_age_s=3600))
    _keep(store, frames, [f"p{i}" for i in range(5)])
    assert _kept_ids(store) == ["p2", "p3", "p4"]
    assert store.stats().parts == 3 and store.stats().dropped == {"count": 2}
    png = cv2.imread(str(sorted(store.folder.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(png, frames[2 % len(frames)])  # lossless: the frame as the camera gave it
    store.close()


def test_the_byte_bound_holds_whatever_the_count(tmp_path, frames):
    one = KeptParts(tmp_path / "probe", KeepLimits(10, 10**9, 3600))
    _keep(one, frames, ["probe"])
    size = one.stats().bytes
    one.close()
    store = KeptParts(tmp_path / "kept", KeepLimits(max_parts=100, max_bytes=int(size * 2.5), max_age_s=3600))
    _keep(store, frames[:1] * 5, [f"p{i}" for i in range(5)])
    assert _kept_ids(store) == ["p3", "p4"] and store.stats().bytes <= size * 2.5
    assert store.stats().dropped == {"bytes": 3}
    store.close()


def test_the_age_bound_applies_at_start_and_while_running(tmp_path, frames):
    folder = tmp_path / "kept"
    store = KeptParts(folder, KeepLimits(100, 10**9, max_age_s=3600))
    _keep(store, frames, ["old", "new"])
    store.close()
    record_path = sorted(folder.glob("*.json"))[0]
    record = json.loads(record_path.read_text())
    record["kept_at_s"] -= 7200  # kept two hours ago
    record_path.write_text(json.dumps(record))

    reopened = KeptParts(folder, KeepLimits(100, 10**9, max_age_s=3600))
    reopened.flush()
    assert _kept_ids(reopened) == ["new"] and reopened.stats().dropped == {"age": 1}
    reopened.limits = KeepLimits(100, 10**9, max_age_s=0.01)
    time.sleep(0.05)  # "new" is now older than the bound
    reopened.prune()
    reopened.flush()
    assert _kept_ids(reopened) == [] and reopened.stats().dropped == {"age": 2}
    reopened.close()


def test_feedback_is_added_to_a_kept_part_or_keeps_it_and_a_busy_writer_drops_are_counted(tmp_path, frames):
    store = KeptParts(tmp_path / "kept", KeepLimits(100, 10**9, 3600, pending=1))
    _keep(store, frames, ["a"])
    store.add_feedback("a", frames[0], {"part_id": "a"}, {"feedback_id": "fb-1", "label": "good"})
    store.add_feedback("b", frames[1], {"part_id": "b"}, {"feedback_id": "fb-2", "label": "defect"})
    store.mark_undone("a", "fb-1")
    store.flush()
    records = {r["part_id"]: r for r in (json.loads(p.read_text()) for p in store.folder.glob("*.json"))}
    assert records["a"]["reasons"] == ["defect", "feedback"] and records["a"]["feedback"][0]["undone_at"]
    assert records["b"]["reasons"] == ["feedback"] and records["b"]["feedback"][0]["label"] == "defect"
    outcomes = [store.keep(f"x{i}", frames[0], ["uncertain"], {}) for i in range(50)]
    store.flush()
    assert not all(outcomes) and store.stats().dropped.get("busy", 0) == outcomes.count(False)
    store.close()
