"""The audit log of operator feedback: one JSON line per feedback, undo and overlay clearing, in
`<state_dir>/feedback/audit.jsonl`, flushed to disk before the reply goes out."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditRecord:
    time: str
    event: str  # feedback, undo, overlay_cleared
    outcome: str  # learned, recorded, refused, undone, cleared
    feedback_id: str | None = None
    part_id: str | None = None
    label: str | None = None
    source: str | None = None
    reason: str | None = None
    note: str | None = None
    forced: bool = False
    vectors: int = 0  # added (feedback), removed (undo) or dropped (overlay cleared)
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: AuditRecord | None = None  # the newest record, for the retained summary
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: AuditRecord) -> None:
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
            self.last = record

    def records(self) -> list[AuditRecord]:
        """Every readable line; a line cut by a power loss is skipped."""
        if not self.path.is_file():
            return []
        found = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                found.append(AuditRecord(**json.loads(line)))
            except (ValueError, TypeError):
                log.warning("%s line %d is not an audit record; skipped", self.path, number)
        self.last = found[-1] if found else self.last
        return found


def outcome_counts(records: list[AuditRecord]) -> dict[str, int]:
    """How many feedbacks ended how (learned, recorded, refused, undone, cleared)."""
    return dict(Counter(record.outcome for record in records))
