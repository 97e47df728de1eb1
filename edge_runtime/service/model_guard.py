"""Watching a newly installed model: failed inspections are counted in a sliding window, and too many send the
device back to the model it replaced.

A model can load, compile and score its reference images as expected and still fail on the line's real frames
(a kind of frame its reference images do not cover). While such a model is on probation (it is newer than the
kept previous model, and was installed less than `probation_s` ago), `max_failures` failed inspections within
`window_s` seconds roll it back. A model that ends the whole process instead (a crash inside the runtime, the
OOM killer, the watchdog) leaves no count in memory: `CrashGuard` keeps its runs on disk (crash_record.py), and
at the start after `max_crashes` such runs within `crash_window_s` it is rolled back before it is loaded again.
A model that was rolled back to is never on probation, so the device cannot swing back and forth."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime.service.crash_record import CrashRecord, ProbationRuns, WatchedModel
from edge_runtime.service.model_store import InstalledModel, ModelState, ModelStore
from edge_runtime.service.service_config import FallbackConfig

log = logging.getLogger(__name__)


class FailureWindow:
    """How many failures happened within the last `window_s` seconds (monotonic clock)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def add(self) -> int:
        """Record one failure now; returns the failures within the window, this one included."""
        now = self._clock()
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times)

    def clear(self) -> None:
        self._times.clear()


def installed_time(model: InstalledModel) -> datetime:
    """`installed_at` as an aware datetime; it is written by `utc_now` (ISO 8601 with a Z)."""
    return datetime.fromisoformat(model.installed_at.replace("Z", "+00:00"))


def on_probation(state: ModelState, probation_s: float, now: datetime | None = None) -> bool:
    """Whether the active model is a new one with a predecessor to go back to, installed recently enough."""
    active, previous = state.active, state.previous
    if active is None or previous is None:
        return False
    installed = installed_time(active)
    if installed <= installed_time(previous):  # a model rolled back to: the failing one is its successor
        return False
    return ((now or datetime.now(timezone.utc)) - installed).total_seconds() < probation_s


class ModelGuard:
    """Counts the failed inspections of the model on probation; `failed` says when it must be rolled back."""

    def __init__(self, config: FallbackConfig, store: ModelStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.window = FailureWindow(config.window_s, clock)

    def model_changed(self) -> None:
        """A new model runs: failures of the last one do not count against it."""
        self.window.clear()

    def failed(self, slot: Path, state: ModelState) -> int | None:
        """Record a failed inspection by the model in `slot`; returns the failure count when it reaches
        `max_failures` (the window then starts afresh), else None."""
        if not self.config.enabled or not self._watched(slot, state):
            return None
        count = self.window.add()
        if count < self.config.max_failures:
            return None
        self.window.clear()
        return count

    def _watched(self, slot: Path, state: ModelState) -> bool:
        # The state names the new model a moment before the frame loop adopts it: count only its own failures.
        if state.active is None or self.store.path_of(state.active).resolve() != slot.resolve():
            return False
        return on_probation(state, self.config.probation_s)


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CrashLoop:
    """The model on probation ended the service `crashes` times within `window_s` seconds."""

    version: str
    crashes: int
    window_s: float

    def detail(self, previous: str) -> str:
        return (
            f"model {self.version} ended the service {self.crashes} times within {self.window_s:g} s while on "
            f"probation; rolled back to {previous}"
        )


class CrashGuard:
    """Counts, across restarts, the runs of the model on probation that the process did not survive.

    A run is marked on disk when it begins (`starting`, before the model is compiled, or `running` when an update
    brings a new model) and unmarked when the process ends through its own shutdown (`stopped`: a stop it was
    asked for, or an error Python caught); a run still marked at the next start ended with the process killed.
    Nothing is written per frame, and a run is not cleared once its first frames went well: a model could still
    die on a kind of frame that comes by only now and then, so a run counts until it ends, whatever it inspected.

    The times are the device's wall clock: runs span processes and reboots, and a monotonic clock starts again at
    every boot, so its readings from before one mean nothing after it. Probation trusts that clock already. A
    time ahead of now (the clock was set back since) still counts within the window; further ahead it cannot be
    placed and is dropped, which gives the model another run rather than rolling it back on a guess."""

    def __init__(self, config: FallbackConfig, store: ModelStore, clock: Callable[[], datetime] = wall_clock) -> None:
        self.config = config
        self.record = CrashRecord(store.root)
        self._clock = clock
        self._runs: ProbationRuns | None = None  # what the file says about the run going on; None: nothing watched

    @property
    def problem(self) -> str | None:
        """Why the record on disk was set aside, if it was."""
        return self.record.problem

    def starting(self, state: ModelState) -> CrashLoop | None:
        """At start, before the active model is loaded: a CrashLoop when it is on probation and ended the service
        `max_crashes` times within the window; otherwise this run of it is marked on disk."""
        earlier = self.record.read()
        now = self._clock()
        if not self._watches(state, now):
            self._forget()
            return None
        assert state.active is not None
        model = WatchedModel.of(state.active)
        unclean = self._recent_unclean_runs(earlier, model, now)
        if len(unclean) >= self.config.max_crashes:
            return CrashLoop(model.version, len(unclean), self.config.crash_window_s)
        self._write(ProbationRuns(model=model, unclean_runs=unclean).began(now))
        return None

    def running(self, state: ModelState) -> None:
        """The active model of `state` now runs (after the start, or adopted from an update or a rollback): its
        run is marked when it is on probation, and the record goes when it is not."""
        now = self._clock()
        if not self._watches(state, now):
            self._forget()
            return
        assert state.active is not None
        model = WatchedModel.of(state.active)
        runs = self._runs
        if runs is not None and runs.model == model and runs.running_since is not None:
            return  # marked by `starting`
        earlier = runs.unclean_runs if runs is not None and runs.model == model else []
        self._write(ProbationRuns(model=model, unclean_runs=earlier).began(now))

    def stopped(self) -> None:
        """The process ends through its own shutdown: the run going on does not count."""
        if self._runs is not None and self._runs.running_since is not None:
            self._write(self._runs.ended_cleanly())

    def _watches(self, state: ModelState, now: datetime) -> bool:
        return self.config.enabled and on_probation(state, self.config.probation_s, now)

    def _recent_unclean_runs(self, earlier: ProbationRuns | None, model: WatchedModel, now: datetime) -> list[datetime]:
        """The runs of `model` that the process did not survive and that began within the window; the one the
        record still marks as running is one of them (its process is gone)."""
        if earlier is None or earlier.model != model:
            return []
        began = earlier.unclean_runs + ([earlier.running_since] if earlier.running_since is not None else [])
        window = self.config.crash_window_s
        return [began_at for began_at in began if abs((now - began_at).total_seconds()) < window]

    def _write(self, runs: ProbationRuns) -> None:
        try:
            self.record.write(runs)
        except OSError as error:  # a full or failing disk: runs go uncounted, as before there was a record
            log.error(
                "%s cannot be written (%s); runs of %s are not counted", self.record.path, error, runs.model.version
            )
            return
        self._runs = runs

    def _forget(self) -> None:
        self.record.remove()
        self._runs = None
