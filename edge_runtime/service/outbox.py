"""Durable results outbox: SQLite (WAL) rows written before publishing, deleted only once the broker acked.

Every row gets its sequence number here, whether it reaches the disk or not: when the disk refuses a write
(full, read-only, failing), the row waits in memory under the same number and is written out once the disk
takes writes again, so a connected broker still gets every result in order. Ages are measured on the
outbox's own clock (seconds the service has run, kept on disk), so a wall-clock step never expires rows."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    stored_s REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refused (
    seq INTEGER PRIMARY KEY,
    part_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL
);
"""
# Made after the migration below, as version-1 files lack `stored_s`.
_INDEX = "CREATE INDEX IF NOT EXISTS outbox_stored ON outbox (stored_s)"
_UPSERT_COUNTER = "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = {update}"
_ADD_COUNTER = _UPSERT_COUNTER.format(update="value + excluded.value")
_SET_COUNTER = _UPSERT_COUNTER.format(update="excluded.value")


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    part_id: str
    topic: str
    payload: bytes


class Outbox:
    """Rows come out in the order they went in; bounded by row count and age, with drops counted on disk."""

    def __init__(self, path: Path, max_rows: int, max_age_s: float, memory_rows: int = 1000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.memory_rows = memory_rows
        self.disk_error: str | None = None  # the last write the disk refused, None once writes work again
        self._lock = threading.Lock()
        # One connection shared by the frame and publisher threads, serialised by the lock. Autocommit mode,
        # so transactions are exactly the explicit BEGIN ... COMMIT blocks below.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            raise
        self._rows = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self._next_seq = self._highest_seq() + 1
        self._clock_base = self._resumed_clock()
        self._clock_start = time.monotonic()
        self._memory: list[tuple[OutboxRow, float]] = []  # rows the disk refused, with their outbox time
        self._unsaved_drops = 0  # drops of memory rows, added to the disk counter at the next good write

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed result survives power loss, not only a crash of the process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "stored_s" not in columns:  # version 1: rows keep age 0 on the outbox clock, i.e. they age from now
            self._db.execute("ALTER TABLE outbox ADD COLUMN stored_s REAL NOT NULL DEFAULT 0")
        self._db.execute(_INDEX)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _highest_seq(self) -> int:
        used = self._db.execute(
            "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM outbox UNION ALL SELECT MAX(seq) FROM refused "
            "UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'outbox')"
        ).fetchone()[0]
        return int(used or 0)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _resumed_clock(self) -> float:
        # The saved counter is whole milliseconds, behind the rows' exact times; the clock must never run
        # back behind a row it stored, or that row would be younger than anything added after the restart.
        newest_row = self._db.execute("SELECT MAX(stored_s) FROM outbox").fetchone()[0]
        return max(self._counter("clock_ms") / 1000.0, float(newest_row or 0.0))

    def clock(self) -> float:
        """Seconds on the outbox clock: the service's running time, summed over all its runs."""
        return self._clock_base + (time.monotonic() - self._clock_start)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- writing ---------------------------------------------------------------------------------------

    def add(self, part_id: str, topic: str, payload: bytes) -> int:
        """Store one result; returns its sequence number. Durable on return unless `disk_error` is set, in
        which case it waits in memory (and is published from there) until the disk takes writes again."""
        with self._lock:
            row = OutboxRow(self._next_seq, part_id, topic, payload)
            self._next_seq += 1
            self._memory.append((row, self.clock()))
            self._flush_memory()
            self._bound_memory()
            return row.seq

    def flush(self) -> bool:
        """Write rows waiting in memory to disk; True when none are left in memory."""
        with self._lock:
            self._flush_memory()
            return not self._memory

    def _flush_memory(self) -> None:
        if not self._memory:
            if self.disk_error is not None:
                self._probe_disk()
            return
        try:
            dropped = self._write(self._memory)
        except sqlite3.Error as error:
            if self.disk_error is None:
                log.error("the outbox cannot write to %s (%s); results wait in memory", self.path, error)
            self.disk_error = str(error)
            return
        if self.disk_error is not None:
            log.info("the outbox writes to %s again", self.path)
        self.disk_error = None
        self._rows += len(self._memory) - dropped
        self._memory.clear()

    def _probe_disk(self) -> None:
        """Nothing waits in memory, but the last write failed: find out whether the disk takes writes again."""
        try:
            with self._transaction():
                self._db.execute(_SET_COUNTER, ("clock_ms", int(self.clock() * 1000)))
        except sqlite3.Error as error:
            self.disk_error = str(error)
            return
        log.info("the outbox writes to %s again", self.path)
        self.disk_error = None

    def _write(self, rows: list[tuple[OutboxRow, float]]) -> int:
        """Insert rows, enforce the bounds and count drops in one transaction (one fsync); returns the drops."""
        now = self.clock()
        wall = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO outbox (seq, part_id, topic, payload, created, stored_s) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.seq, r.part_id, r.topic, r.payload, wall, stored) for r, stored in rows],
            )
            dropped = self._enforce_bounds(now, self._rows + len(rows), rows[0][0].seq)
            if dropped + self._unsaved_drops:
                self._db.execute(_ADD_COUNTER, ("dropped", dropped + self._unsaved_drops))
            self._db.execute(_SET_COUNTER, ("clock_ms", int(now * 1000)))
        self._unsaved_drops = 0
        return dropped

    def _enforce_bounds(self, now: float, count: int, first_new: int) -> int:
        # The index on stored_s makes this a lookup, not a scan, when nothing has expired; rows being written
        # now are never expired by their own write.
        expired = self._db.execute(
            "DELETE FROM outbox WHERE stored_s < ? AND +seq < ?", (now - self.max_age_s, first_new)
        ).rowcount
        excess = max(0, count - expired - self.max_rows)
        if excess:
            self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,))
        return expired + excess

    def _bound_memory(self) -> None:
        excess = len(self._memory) - self.memory_rows
        if excess > 0:
            del self._memory[:excess]
            self._unsaved_drops += excess
            log.error("%d result(s) dropped: the disk refuses writes and memory holds %d", excess, self.memory_rows)

    # --- reading and acknowledging -------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[OutboxRow]:
        """The oldest rows with a sequence number above `seq`, on disk or waiting in memory."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, part_id, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            stored = [OutboxRow(int(s), str(p), str(t), bytes(b)) for s, p, t, b in rows]
            waiting = [row for row, _ in self._memory if row.seq > seq]
        return sorted(stored + waiting, key=lambda row: row.seq)[:limit]

    def delete(self, seq: int) -> None:
        """The broker acked row `seq`."""
        with self._lock:
            if self._forget_in_memory(seq):
                return
            if self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount:
                self._rows -= 1
            else:  # a refused row that the broker took this time
                self._db.execute("DELETE FROM refused WHERE seq = ?", (seq,))

    def _forget_in_memory(self, seq: int) -> bool:
        for index, (row, _) in enumerate(self._memory):
            if row.seq == seq:
                del self._memory[index]
                return True
        return False

    def refuse(self, seq: int, reason: str) -> None:
        """The broker refused row `seq` (e.g. not authorised): keep it aside, counted, to be offered again."""
        with self._lock:
            self._flush_memory()
            if any(row.seq == seq for row, _ in self._memory):
                raise sqlite3.OperationalError("the refused row still waits in memory: the disk refuses writes")
            with self._transaction():
                moved = self._db.execute(
                    "INSERT OR REPLACE INTO refused (seq, part_id, topic, payload, reason) "
                    "SELECT seq, part_id, topic, payload, ? FROM outbox WHERE seq = ?",
                    (reason, seq),
                ).rowcount
                if moved:
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                else:
                    self._db.execute("UPDATE refused SET reason = ? WHERE seq = ?", (reason, seq))
            self._rows -= moved

    def refused_rows(self, limit: int, after: int = 0) -> list[OutboxRow]:
        """Rows the broker refused with a sequence number above `after`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, part_id, topic, payload FROM refused WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [OutboxRow(int(s), str(p), str(t), bytes(b)) for s, p, t, b in rows]

    # --- figures -------------------------------------------------------------------------------------

    def depth(self) -> int:
        """Rows waiting to be published (on disk or in memory), refused ones not included."""
        with self._lock:
            return self._rows + len(self._memory)

    def in_memory(self) -> int:
        with self._lock:
            return len(self._memory)

    def refused(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])

    def dropped(self) -> int:
        with self._lock:
            return self._counter("dropped") + self._unsaved_drops

    def close(self) -> None:
        with self._lock:
            self._flush_memory()
            if self._memory:
                log.error("%d result(s) in memory are lost: the disk refused them until the end", len(self._memory))
            with contextlib.suppress(sqlite3.Error):
                self._db.execute(_SET_COUNTER, ("clock_ms", int(self.clock() * 1000)))
            self._db.close()


def set_aside(path: Path) -> Path:
    """Move a damaged database (and its WAL and shared-memory files) out of the way; returns its new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.unusable-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    return target


def open_outbox(path: Path, max_rows: int, max_age_s: float, memory_rows: int = 1000) -> tuple[Outbox, str | None]:
    """The outbox at `path`; a file SQLite cannot use (not a database, failing its integrity check) is set
    aside for inspection and a new one started, so inspection goes on. Returns the outbox and, when a file
    was set aside, a sentence saying so."""
    try:
        _check_integrity(path)
        return Outbox(path, max_rows, max_age_s, memory_rows), None
    except sqlite3.DatabaseError as error:
        if isinstance(error, sqlite3.OperationalError) and not _is_damage(error):
            raise  # e.g. a locked or unreadable file: not damage, nothing to set aside
        kept = set_aside(path)
        problem = f"the outbox {path} is damaged ({error}); it was set aside as {kept.name} and a new one started"
        log.error(problem)
        return Outbox(path, max_rows, max_age_s, memory_rows), problem


def _check_integrity(path: Path) -> None:
    if not path.exists():
        return
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
        raise sqlite3.DatabaseError(f"integrity check: {verdict}")


def _is_damage(error: sqlite3.Error) -> bool:
    text = str(error)
    return "malformed" in text or "not a database" in text or "integrity" in text
