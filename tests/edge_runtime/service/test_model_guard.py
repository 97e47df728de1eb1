"""Which model is watched after an install, the sliding window of its failed inspections, and the runs of it that
the process did not survive."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from edge_runtime.service.model_guard import CrashGuard, CrashLoop, FailureWindow, ModelGuard, on_probation
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


# --- runs the process did not survive, counted on disk across restarts --------------------------------------


class WallClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def on_probation_state() -> ModelState:
    """2.0.0 installed five minutes before NOW over 1.0.0."""
    return ModelState(
        active=model("2.0.0", NOW - timedelta(minutes=5)), previous=model("1.0.0", NOW - timedelta(days=3))
    )


def crash_guard(tmp_path, clock: WallClock, **config) -> CrashGuard:  # noqa: ANN001
    """A guard as a new process builds it: it knows only what is on disk."""
    settings = {"max_crashes": 3, "crash_window_s": 600.0} | config
    return CrashGuard(FallbackConfig(**settings), ModelStore(tmp_path / "models"), clock)


def test_runs_the_process_did_not_survive_roll_back_the_model_at_the_next_start(tmp_path):
    clock, state = WallClock(), on_probation_state()
    for crashes_before in range(3):
        assert crash_guard(tmp_path, clock).starting(state) is None, f"{crashes_before} crash(es) before"
        clock.now += timedelta(seconds=40)  # ... and the process dies: nothing unmarks its run
    loop = crash_guard(tmp_path, clock).starting(state)
    assert loop == CrashLoop("2.0.0", 3, 600.0)
    assert loop.detail("1.0.0") == (
        "model 2.0.0 ended the service 3 times within 600 s while on probation; rolled back to 1.0.0"
    )
    after = crash_guard(tmp_path, clock)
    after.running(state.rolled_back_to(state.previous))
    assert not after.record.path.exists(), "a model rolled back to is not watched"


def test_a_process_that_ends_by_its_own_shutdown_does_not_count(tmp_path):
    clock, state = WallClock(), on_probation_state()
    assert crash_guard(tmp_path, clock).starting(state) is None
    clock.now += timedelta(seconds=30)  # killed
    for _ in range(5):  # SIGTERM, or an error Python caught, five times over
        guard = crash_guard(tmp_path, clock)
        assert guard.starting(state) is None
        guard.running(state)
        guard.stopped()
        clock.now += timedelta(seconds=30)
    runs = guard.record.read()
    assert runs.running_since is None and len(runs.unclean_runs) == 1, "only the kill is counted"
    for _ in range(2):  # killed twice more
        assert crash_guard(tmp_path, clock).starting(state) is None
        clock.now += timedelta(seconds=30)
    assert crash_guard(tmp_path, clock).starting(state) == CrashLoop("2.0.0", 3, 600.0), "clean stops erase no kill"


def test_runs_outside_the_window_by_the_wall_clock_do_not_count(tmp_path):
    clock, state = WallClock(), on_probation_state()
    for _ in range(2):
        crash_guard(tmp_path, clock).starting(state)
        clock.now += timedelta(seconds=400)
    assert crash_guard(tmp_path, clock).starting(state) is None, "the first crash is 800 s old"
    clock.now -= timedelta(hours=2)  # the clock is set back: runs two hours "ahead" of it cannot be placed
    guard = crash_guard(tmp_path, clock)
    assert guard.starting(state) is None
    assert (guard.record.read().unclean_runs, guard.record.read().running_since) == ([], clock.now)
    for _ in range(2):
        clock.now += timedelta(seconds=60)
        assert crash_guard(tmp_path, clock).starting(state) is None
    clock.now += timedelta(seconds=60)
    assert crash_guard(tmp_path, clock).starting(state) == CrashLoop("2.0.0", 3, 600.0), "counted from there on"


def test_only_the_watched_install_is_counted_and_the_record_goes_with_its_probation(tmp_path):
    clock, state = WallClock(), on_probation_state()
    for _ in range(2):
        crash_guard(tmp_path, clock).starting(state)
    again = state.model_copy(update={"active": model("2.0.0", NOW - timedelta(minutes=1))})  # installed anew
    guard = crash_guard(tmp_path, clock)
    assert guard.starting(again) is None
    assert guard.record.read().unclean_runs == [], "another install of the model starts a new count"

    guard = crash_guard(tmp_path, clock)  # killed; then a restart while an update brings yet another model
    guard.starting(again)
    newer = again.switched_to(model("3.0.0", NOW))
    guard.running(newer)
    runs = guard.record.read()
    assert (runs.model.version, runs.running_since, runs.unclean_runs) == ("3.0.0", NOW, [])

    clock.now += timedelta(days=2)  # probation is over
    assert crash_guard(tmp_path, clock).starting(newer) is None
    assert not guard.record.path.exists()
    off = crash_guard(tmp_path, WallClock(), enabled=False)
    assert off.starting(state) is None and not off.record.path.exists(), "updates.fallback.enabled: false"


def test_a_damaged_record_is_set_aside_reported_and_counting_starts_again(tmp_path):
    clock, state = WallClock(), on_probation_state()
    guard = crash_guard(tmp_path, clock)
    guard.record.path.parent.mkdir(parents=True)
    guard.record.path.write_bytes(b"\x00\x00\x00")  # e.g. a disk that lost the data blocks
    assert guard.starting(state) is None
    assert "crash_record.json cannot be used" in guard.problem and "set aside" in guard.problem
    assert (guard.record.path.parent / "crash_record.unusable").read_bytes() == b"\x00\x00\x00"
    runs = guard.record.read()
    assert (runs.running_since, runs.unclean_runs) == (NOW, []), "this run is marked in a fresh record"
