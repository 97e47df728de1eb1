"""Parts kept on the device for the next training: a PNG of the frame and a JSON of its result (and of any
feedback), in `<state_dir>/kept_parts/`. Bounded by count, bytes and age; the oldest go first, and every
removal is counted by its reason. One writer thread owns the folder, so the frame loop never waits on a disk."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.durable_files import write_atomically
from edge_runtime.service.messages import utc_now

log = logging.getLogger(__name__)

FOLDER = "kept_parts"
RECORD_SUFFIX = ".json"
FRAME_SUFFIX = ".png"
_PNG_COMPRESSION = 3  # a little slower than 1, a third smaller; the writer is off the frame path anyway


@dataclass(frozen=True)
class KeepLimits:
    max_parts: int
    max_bytes: int
    max_age_s: float
    pending: int = 16


@dataclass
class KeptPart:
    """One kept part on disk; `stem` names its two files (a sequence number first, so names sort by age)."""

    stem: str
    part_id: str
    kept_at: float  # time.time() when first kept
    bytes: int
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KeepStats:
    parts: int
    bytes: int
    dropped: dict[str, int]  # removals by bound: count, bytes, age; and busy (the writer was behind)


def part_record(part_id: str, reasons: list[str], result: dict[str, Any]) -> dict[str, Any]:
    """The JSON kept beside a frame; `feedback` fills in as operators judge the part."""
    return {"part_id": part_id, "kept_at": utc_now(), "reasons": reasons, "result": result, "feedback": []}


class KeptParts:
    def __init__(self, folder: Path, limits: KeepLimits) -> None:
        self.folder = folder
        self.limits = limits
        self.dropped: Counter[str] = Counter()
        self._parts: dict[str, KeptPart] = {}  # part id -> its newest kept copy
        self._lock = threading.Lock()
        self._pending = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keep-parts")
        folder.mkdir(parents=True, exist_ok=True)
        self._next = self._scan() + 1
        self._writer.submit(self._enforce_limits)

    def _scan(self) -> int:
        """Read what earlier runs kept; returns the highest sequence number found."""
        highest = 0
        for leftover in self.folder.glob("*.tmp"):  # a write a power cut interrupted
            leftover.unlink(missing_ok=True)
        for path in sorted(self.folder.glob(f"*{RECORD_SUFFIX}")):
            frame = path.with_suffix(FRAME_SUFFIX)
            try:
                record = json.loads(path.read_text())
                size = path.stat().st_size + (frame.stat().st_size if frame.is_file() else 0)
                kept_at = float(record.get("kept_at_s", path.stat().st_mtime))
                highest = max(highest, int(path.stem.split("_", 1)[0]))
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("ignoring unreadable kept part %s: %s", path, error)
                continue
            self._parts[record["part_id"]] = KeptPart(path.stem, record["part_id"], kept_at, size, record["reasons"])
        return highest

    # --- called from the frame loop and commands: queue the work --------------------------------------

    def keep(self, part_id: str, frame: np.ndarray, reasons: list[str], result: dict[str, Any]) -> bool:
        """Queue a part to be kept; False (counted as busy) when the writer is too far behind."""
        with self._lock:
            if self._pending >= self.limits.pending:
                self.dropped["busy"] += 1
                return False
            self._pending += 1
        self._writer.submit(self._write_new, part_id, frame, list(reasons), result)
        return True

    def add_feedback(self, part_id: str, frame: np.ndarray, result: dict[str, Any], feedback: dict[str, Any]) -> None:
        """Record a feedback with the part, keeping the part first if it is not kept (or was removed)."""
        with self._lock:
            self._pending += 1
        self._writer.submit(self._write_feedback, part_id, frame, result, feedback)

    def mark_undone(self, part_id: str, feedback_id: str) -> None:
        with self._lock:
            self._pending += 1
        self._writer.submit(self._write_undone, part_id, feedback_id)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        done: Future[None] = self._writer.submit(lambda: None)
        done.result(timeout=timeout)

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def stats(self) -> KeepStats:
        with self._lock:
            parts = list(self._parts.values())
            dropped = dict(self.dropped)
        return KeepStats(len(parts), sum(p.bytes for p in parts), dropped)

    def get(self, part_id: str) -> KeptPart | None:
        with self._lock:
            return self._parts.get(part_id)

    # --- the writer thread ----------------------------------------------------------------------------

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def _write_new(self, part_id: str, frame: np.ndarray, reasons: list[str], result: dict[str, Any]) -> None:
        try:
            self._store(part_id, frame, part_record(part_id, reasons, result))
        except Exception:  # a full disk costs the kept copy, not the writer
            log.exception("keeping part %s failed", part_id)
        finally:
            self._done()

    def _write_feedback(self, part_id: str, frame: np.ndarray, result: dict[str, Any], feedback: dict) -> None:
        try:
            kept = self.get(part_id)
            record = self._record(kept) if kept is not None else None
            if record is None:
                record = part_record(part_id, ["feedback"], result)
                record["feedback"].append(feedback)
                self._store(part_id, frame, record)
                return
            if "feedback" not in record["reasons"]:
                record["reasons"].append("feedback")
            record["feedback"].append(feedback)
            self._rewrite(kept, record)
        except Exception:
            log.exception("recording feedback with kept part %s failed", part_id)
        finally:
            self._done()

    def _write_undone(self, part_id: str, feedback_id: str) -> None:
        try:
            kept = self.get(part_id)
            record = self._record(kept) if kept is not None else None
            if record is None:
                return
            for feedback in record["feedback"]:
                if feedback.get("feedback_id") == feedback_id:
                    feedback["undone_at"] = utc_now()
            self._rewrite(kept, record)
        except Exception:
            log.exception("recording an undo with kept part %s failed", part_id)
        finally:
            self._done()

    def _record(self, kept: KeptPart) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / f"{kept.stem}{RECORD_SUFFIX}").read_text())
        except (OSError, ValueError):
            return None

    def _store(self, part_id: str, frame: np.ndarray, record: dict[str, Any]) -> None:
        stem = f"{self._next:08d}_{part_id}"
        self._next += 1
        record["kept_at_s"] = time.time()
        frame_path = self.folder / f"{stem}{FRAME_SUFFIX}"
        _write_png(frame_path, frame)
        record_path = self.folder / f"{stem}{RECORD_SUFFIX}"
        _write_text(record_path, json.dumps(record, indent=1))  # last: a record names a complete frame
        size = frame_path.stat().st_size + record_path.stat().st_size
        with self._lock:
            previous = self._parts.get(part_id)
            self._parts[part_id] = KeptPart(stem, part_id, record["kept_at_s"], size, record["reasons"])
        if previous is not None:  # the same part id kept again: the newer copy replaces the older
            self._remove_files(previous)
        self._enforce_limits()

    def _rewrite(self, kept: KeptPart, record: dict[str, Any]) -> None:
        record_path = self.folder / f"{kept.stem}{RECORD_SUFFIX}"
        _write_text(record_path, json.dumps(record, indent=1))
        with self._lock:
            kept.reasons = record["reasons"]
            kept.bytes = record_path.stat().st_size + (self.folder / f"{kept.stem}{FRAME_SUFFIX}").stat().st_size
        self._enforce_limits()

    def _enforce_limits(self, now: float | None = None) -> None:
        """Remove the oldest parts while any bound is exceeded; each removal counted under its bound."""
        now = time.time() if now is None else now
        while True:
            with self._lock:
                ordered = sorted(self._parts.values(), key=lambda part: part.stem)
                total = sum(part.bytes for part in ordered)
            if not ordered:
                return
            oldest = ordered[0]
            if now - oldest.kept_at > self.limits.max_age_s:
                reason = "age"
            elif len(ordered) > self.limits.max_parts:
                reason = "count"
            elif total > self.limits.max_bytes:
                reason = "bytes"
            else:
                return
            with self._lock:
                self._parts.pop(oldest.part_id, None)
                self.dropped[reason] += 1
            self._remove_files(oldest)

    def prune(self) -> None:
        """Apply the age bound now (parts also age while nothing new is kept)."""
        self._writer.submit(self._enforce_limits)

    def _remove_files(self, part: KeptPart) -> None:
        for suffix in (RECORD_SUFFIX, FRAME_SUFFIX):  # the record first: a frame without one is ignored
            (self.folder / f"{part.stem}{suffix}").unlink(missing_ok=True)


def _write_png(path: Path, frame: np.ndarray) -> None:
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3 and frame.shape[2] == 3 else frame
    ok, data = cv2.imencode(FRAME_SUFFIX, image, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_COMPRESSION])
    if not ok:
        raise OSError(f"PNG encoding of {path.name} failed")
    write_atomically(path, data.tobytes())


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode("utf-8"))
