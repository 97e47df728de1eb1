"""Which model is watched after an install, and the sliding window of its failed inspections."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from edge_runtime.service.model_guard import FailureWindow, ModelGuard, on_probation
from edge_runtime.service.model_store import InstalledModel, ModelState, ModelStore
from edge_runtime.service.service_config import FallbackConfig

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def model(version: str, installed: datetime) -> InstalledModel:
    stamp = installed.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return InstalledModel(version=version, slot=f"{version}-slot", source="test", installed_at=stamp)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_older_than_the_window_no_longer_count():
    clock = Clock()
    window = FailureWindow(10.0, clock)
    assert [window.add() for _ in range(3)] == [1, 2, 3]
    clock.now += 10.0
    assert window.add() == 1, "the three earlier failures are 10 s old"


def test_only_a_recent_install_with_a_predecessor_is_on_probation():
    old, new = model("1.0.0", NOW - timedelta(days=3)), model("2.0.0", NOW - timedelta(minutes=5))
    assert on_probation(ModelState(active=new, previous=old), 3600, NOW)
    assert not on_probation(ModelState(active=new), 3600, NOW), "nothing to go back to"
    assert not on_probation(ModelState(active=old, previous=new), 3600, NOW), "a model rolled back to"
    assert not on_probation(ModelState(active=new, previous=old), 60, NOW), "probation is over"


def test_the_guard_counts_only_the_watched_model_and_starts_afresh_after_tripping(tmp_path):
    store = ModelStore(tmp_path / "models")
    clock = Clock()
    guard = ModelGuard(FallbackConfig(max_failures=3, window_s=30), store, clock)
    recent = datetime.now(timezone.utc) - timedelta(minutes=1)
    state = ModelState(active=model("2.0.0", recent), previous=model("1.0.0", recent - timedelta(days=1)))
    new_slot, old_slot = store.root / "2.0.0-slot", store.root / "1.0.0-slot"
    assert [guard.failed(new_slot, state) for _ in range(3)] == [None, None, 3]
    assert guard.failed(new_slot, state) is None, "the window starts afresh"
    assert all(guard.failed(old_slot, state) is None for _ in range(5)), "failures of another model do not count"
    off = ModelGuard(FallbackConfig(enabled=False, max_failures=1), store, clock)
    assert off.failed(new_slot, state) is None
