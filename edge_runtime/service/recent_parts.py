"""The newest inspected parts, frames included, held in memory so an operator can still give feedback on them."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RecentPart:
    part_id: str
    inspected_at: float  # time.monotonic(): windows are not fooled by wall-clock steps
    frame: np.ndarray  # as the camera delivered it (HxW gray or HxWx3 RGB)
    score: float
    threshold: float
    is_defect: bool
    model_version: str
    payload: dict[str, Any]  # the JSON published on `result`


class PartUnavailable(LookupError):
    """The part cannot be given feedback; the message says why."""


class RecentParts:
    """At most `size` parts, the oldest forgotten first; a part is found only within `window_s` of its
    inspection. Thread-safe: the frame loop adds, commands look up."""

    def __init__(self, size: int, window_s: float) -> None:
        self.size = size
        self.window_s = window_s
        self._parts: OrderedDict[str, RecentPart] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, part: RecentPart) -> None:
        with self._lock:
            self._parts.pop(part.part_id, None)  # a part id inspected again: the newest inspection counts
            self._parts[part.part_id] = part
            while len(self._parts) > self.size:
                self._parts.popitem(last=False)

    def find(self, part_id: str, now: float | None = None) -> RecentPart:
        """The part, or PartUnavailable saying whether it is unknown, forgotten or too old."""
        now = time.monotonic() if now is None else now
        with self._lock:
            part = self._parts.get(part_id)
        if part is None:
            raise PartUnavailable(
                f"part {part_id} is not among the last {self.size} inspected parts (unknown, or forgotten)"
            )
        age = now - part.inspected_at
        if age > self.window_s:
            raise PartUnavailable(
                f"part {part_id} was inspected {age:.0f} s ago; feedback is taken within {self.window_s:g} s"
            )
        return part
