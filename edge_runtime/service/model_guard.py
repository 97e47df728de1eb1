"""Watching a newly installed model: failed inspections are counted in a sliding window, and too many send the
device back to the model it replaced.

A model can load, compile and score its reference images as expected and still fail on the line's real frames
(a kind of frame its reference images do not cover). While such a model is on probation (it is newer than the
kept previous model, and was installed less than `probation_s` ago), `max_failures` failed inspections within
`window_s` seconds roll it back. A model that was rolled back to is never on probation, so the device cannot
swing back and forth."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime.service.model_store import InstalledModel, ModelState, ModelStore
from edge_runtime.service.service_config import FallbackConfig


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
