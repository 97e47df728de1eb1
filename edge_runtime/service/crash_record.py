"""The runs of a model on probation, kept on disk, so that a model that takes the whole process down is noticed.

A model can pass its reference images and then end the process itself on the line's frames: a segfault or an
abort inside the runtime, the OOM killer, the systemd watchdog killing a hung inference, a kill -9. Nothing in
memory survives that, so `<state_dir>/models/crash_record.json`, beside state.json, says which model is watched,
since when the process going on has been running it (cleared when the process ends through its own shutdown),
and when earlier runs began that the process did not survive. The file is replaced atomically and synced, a few
times per process, never per frame."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, ValidationError

from edge_runtime.config_errors import describe_problems
from edge_runtime.durable_files import write_atomically
from edge_runtime.service.model_store import InstalledModel
from edge_runtime.settings import StrictModel

log = logging.getLogger(__name__)

RECORD_FILE = "crash_record.json"


class WatchedModel(StrictModel):
    """One install of a model: installed again later (or rolled back to and away from), it starts a new count."""

    version: str
    slot: str
    installed_at: str

    @classmethod
    def of(cls, model: InstalledModel) -> WatchedModel:
        return cls(version=model.version, slot=model.slot, installed_at=model.installed_at)


class ProbationRuns(StrictModel):
    schema_version: Literal[1] = 1
    model: WatchedModel
    running_since: AwareDatetime | None = None  # set while a process runs the model; None once it shut down
    unclean_runs: list[AwareDatetime] = []  # when earlier runs began that the process did not survive

    def began(self, now: datetime) -> ProbationRuns:
        return self.model_copy(update={"running_since": now})

    def ended_cleanly(self) -> ProbationRuns:
        return self.model_copy(update={"running_since": None})


class CrashRecord:
    """The file: read (a damaged one is set aside and reported in `problem`), replaced durably, removed."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / RECORD_FILE
        self.problem: str | None = None

    def read(self) -> ProbationRuns | None:
        """The record; None when there is none, or when it could not be used (then set aside as .unusable)."""
        if not self.path.exists():
            return None
        try:
            return ProbationRuns.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError) as error:
            # Written atomically, so a damaged disk or a hand edit: kept for inspection, the count starts afresh.
            aside = self.path.with_suffix(".unusable")
            why = "; ".join(describe_problems(error)) if isinstance(error, ValidationError) else str(error)
            self.problem = f"{self.path} cannot be used ({why}); it is set aside as {aside.name}"
            log.error(self.problem)
            self.path.replace(aside)
            return None

    def write(self, runs: ProbationRuns) -> None:
        write_atomically(self.path, json.dumps(runs.model_dump(mode="json"), indent=2).encode("utf-8"))

    def remove(self) -> None:
        # Not synced: should a power cut bring the file back, it names a model no longer watched and is removed again.
        self.path.unlink(missing_ok=True)
