"""Durable results outbox: SQLite (WAL) rows written before publishing, deleted only once the broker acked."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    part_id: str
    topic: str
    payload: bytes


class Outbox:
    """Rows come out in the order they went in; bounded by row count and age, with drops counted on disk."""

    def __init__(self, path: Path, max_rows: int, max_age_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        # One connection shared by the frame and publisher threads, serialised by the lock.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed result survives power loss, not only a crash of the process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def add(self, part_id: str, topic: str, payload: bytes) -> int:
        """Store one result durably; returns its sequence number."""
        now = time.time()
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO outbox (part_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                (part_id, topic, payload, now),
            )
            self._enforce_bounds(now)
            return int(cursor.lastrowid or 0)

    def _enforce_bounds(self, now: float) -> None:
        expired = self._db.execute("DELETE FROM outbox WHERE created < ?", (now - self.max_age_s,)).rowcount
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        excess = max(0, count - self.max_rows)
        if excess:
            self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,))
        if expired + excess:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (expired + excess,),
            )

    def after(self, seq: int, limit: int) -> list[OutboxRow]:
        """The oldest rows with a sequence number above `seq`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, part_id, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [OutboxRow(int(s), str(p), str(t), bytes(b)) for s, p, t, b in rows]

    def delete(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
