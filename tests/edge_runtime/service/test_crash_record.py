"""The file that keeps the runs of a model on probation across processes: written whole, read back, set aside when
damaged."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from edge_runtime.service.crash_record import RECORD_FILE, CrashRecord, ProbationRuns, WatchedModel

STARTED = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
MODEL = WatchedModel(version="2.0.0", slot="2.0.0-abcdef012345", installed_at="2026-12-03T11:00:00.000Z")


def test_a_record_round_trips_and_leaves_no_temporary_file(tmp_path):
    record = CrashRecord(tmp_path)
    assert record.read() is None, "no record before the first watched run"
    runs = ProbationRuns(model=MODEL, unclean_runs=[STARTED]).began(STARTED.replace(minute=5))
    record.write(runs)
    assert record.read() == runs
    assert record.read().ended_cleanly().running_since is None
    assert [path.name for path in tmp_path.iterdir()] == [RECORD_FILE]
    on_disk = json.loads((tmp_path / RECORD_FILE).read_text())
    assert on_disk["running_since"] == "2026-12-03T12:05:00Z", "wall-clock times, readable on the device"
    record.remove()
    record.remove()  # gone already: nothing to do
    assert record.read() is None and record.problem is None


def test_a_damaged_record_is_set_aside_and_named(tmp_path):
    record = CrashRecord(tmp_path)
    record.write(ProbationRuns(model=MODEL).began(STARTED))
    fields = json.loads(record.path.read_text()) | {"running_since": "2026-12-03T12:00:00"}  # no time zone
    record.path.write_text(json.dumps(fields))
    assert record.read() is None
    assert not record.path.exists() and (tmp_path / "crash_record.unusable").exists()
    assert str(record.path) in record.problem and "running_since" in record.problem
    assert "set aside as crash_record.unusable" in record.problem

    record.path.write_text("{not json")  # a second damaged record replaces the first one set aside
    assert CrashRecord(tmp_path).read() is None
    assert (tmp_path / "crash_record.unusable").read_text() == "{not json"
