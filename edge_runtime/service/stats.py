"""Counters and a latency window for the periodic `stats` message."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np


class Stats:
    def __init__(self, window: int = 500) -> None:
        self.started = time.monotonic()
        self.inspected = 0
        self.defects = 0
        self.skipped = 0  # frames passed over on purpose (max_fps, paused)
        self.errors = 0
        self._latencies: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, latency_ms: float, is_defect: bool) -> None:
        with self._lock:
            self.inspected += 1
            self.defects += int(is_defect)
            self._latencies.append(latency_ms)

    def latency(self) -> dict[str, float | int | None]:
        with self._lock:
            values = np.array(self._latencies, dtype=np.float64)
        if values.size == 0:
            return {"p50": None, "p99": None, "window": 0}
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50": round(float(p50), 2), "p99": round(float(p99), 2), "window": int(values.size)}

    def snapshot(self, frames_in: int, dropped: int, outbox_depth: int, outbox_dropped: int) -> dict[str, Any]:
        return {
            "frames_in": frames_in,
            "inspected": self.inspected,
            "dropped": dropped,
            "skipped": self.skipped,
            "defects": self.defects,
            "errors": self.errors,
            "latency_ms": self.latency(),
            "outbox": {"depth": outbox_depth, "dropped": outbox_dropped},
            "uptime_s": round(time.monotonic() - self.started, 1),
        }
