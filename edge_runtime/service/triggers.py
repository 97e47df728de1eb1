"""Triggered mode's waiting triggers: each carries its own deadline, counted from when it arrived.

A trigger means "the part in front of the camera now". A frame taken much later shows another part, so a
trigger is judged only on a frame that arrives after it and before its deadline; one whose deadline passed
while it waited behind others is answered `expired`, and one still waiting when the service stops `stopped`."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

TriggerOutcome = Literal["expired", "no_frame", "stopped"]


@dataclass(frozen=True)
class Trigger:
    part_id: str
    received: float  # time.monotonic() when it arrived; the frame inspected must be newer than this
    deadline: float  # time.monotonic() after which no frame may be taken for it

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.monotonic() if now is None else now)


class QueueClosed(RuntimeError):
    """The service is stopping; no trigger is taken any more."""


class TriggerQueue:
    """A bounded FIFO of triggers; `put` stamps the arrival time and deadline, `close` ends it."""

    def __init__(self, maxsize: int, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self._queue: queue.Queue[Trigger] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()  # so no trigger slips in after `close` took the rest
        self._closed = False

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def put(self, part_id: str) -> Trigger:
        """Queue a trigger arriving now; queue.Full when `maxsize` are already waiting, QueueClosed after close."""
        now = time.monotonic()
        trigger = Trigger(part_id, now, now + self.deadline_s)
        with self._lock:
            if self._closed:
                raise QueueClosed("the service is stopping")
            self._queue.put_nowait(trigger)
        return trigger

    def get(self, timeout: float) -> Trigger | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> list[Trigger]:
        """Take no more triggers; returns every one still waiting, in arrival order."""
        waiting: list[Trigger] = []
        with self._lock:
            self._closed = True
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    return waiting


def unserved_reply(trigger: Trigger, outcome: TriggerOutcome, now: float | None = None) -> dict[str, Any]:
    """The `reply` body for a trigger that gets no verdict, with a machine-readable `reason`."""
    now = time.monotonic() if now is None else now
    waited = now - trigger.received
    deadline_s = trigger.deadline - trigger.received
    errors = {
        "expired": f"the trigger waited {waited:.1f} s for its turn, past its {deadline_s:g} s deadline",
        "no_frame": f"no frame arrived within {deadline_s:g} s of the trigger",
        "stopped": f"the service stopped after the trigger waited {waited:.1f} s",
    }
    return {"command": "trigger", "ok": False, "part_id": trigger.part_id, "reason": outcome, "error": errors[outcome]}
