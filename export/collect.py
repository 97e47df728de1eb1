"""Parts a device kept (`<state_dir>/kept_parts`) into an MVTec-layout folder for the next training.

Parts an operator marked good (and did not undo) go to `train/good`, which `python -m train_host train` learns
from; everything else is sorted under `review/` for a person to look at before it joins a dataset:
`review/marked_defect` (an operator said defect), `review/defect` (the device said defect), `review/uncertain`
(scored near the threshold), `review/refused_good` (marked good, refused by the device's guard) and
`review/undone` (marked good, then undone). `collect.json` lists every part with its result and feedback."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KEPT_FOLDER = "kept_parts"  # as edge_runtime.service.kept_parts names it in the state directory
TRAIN_GOOD = Path("train") / "good"
REVIEW = Path("review")
MIN_TRAIN_IMAGES = 4  # train_host's split needs this many good images


class CollectError(ValueError):
    """A source that holds no kept parts, or records that cannot be read; the message names the file."""


@dataclass(frozen=True)
class CollectedPart:
    part_id: str
    destination: str  # folder relative to the output, e.g. train/good
    file: str
    score: float | None
    verdict: str | None
    feedback: list[dict[str, Any]]


@dataclass(frozen=True)
class CollectReport:
    out: Path
    parts: list[CollectedPart]
    skipped: int  # already present in the output (collected before)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(part.destination for part in self.parts).items()))

    def lines(self) -> list[str]:
        lines = [f"{count:5d}  {folder}" for folder, count in self.counts().items()]
        if self.skipped:
            lines.append(f"{self.skipped} part(s) were already in {self.out} and were left as they are")
        good_folder = self.out / TRAIN_GOOD
        good = len(list(good_folder.glob("*.png"))) if good_folder.is_dir() else 0
        if good < MIN_TRAIN_IMAGES:
            lines.append(
                f"note: {good_folder} holds {good} image(s); training needs at least {MIN_TRAIN_IMAGES}: "
                "collect into your training set's folder (--out DATASET), or add good images"
            )
        return lines


def source_folder(source: Path) -> Path:
    """A state directory (its kept_parts folder) or a kept_parts folder itself."""
    if (source / KEPT_FOLDER).is_dir():
        return source / KEPT_FOLDER
    if source.is_dir() and any(source.glob("*.json")):
        return source
    raise CollectError(f"{source} is neither a device state directory with {KEPT_FOLDER}/ nor a folder of kept parts")


def destination_of(record: dict[str, Any]) -> Path:
    """Where one kept part belongs: the latest feedback not undone decides, else why the device kept it."""
    standing = [f for f in record.get("feedback", []) if not f.get("undone_at")]
    latest = standing[-1] if standing else None
    if latest is not None and latest.get("label") == "good":
        return TRAIN_GOOD if latest.get("outcome") == "learned" else REVIEW / "refused_good"
    if latest is not None and latest.get("label") == "defect":
        return REVIEW / "marked_defect"
    if record.get("feedback"):
        return REVIEW / "undone"
    reasons = record.get("reasons", [])
    return REVIEW / ("defect" if "defect" in reasons else "uncertain")


def collect(source: Path, out: Path) -> CollectReport:
    """Copy every kept part into `out` (which may be an existing dataset: files already there are kept)."""
    folder = source_folder(source)
    parts, skipped = [], 0
    for record_path in sorted(folder.glob("*.json")):
        record = _read_record(record_path)
        frame = record_path.with_suffix(".png")
        if not frame.is_file():
            continue  # removed by the device's bounds while we were reading
        destination = destination_of(record)
        target = out / destination / f"{record['part_id']}.png"
        if target.exists():
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(frame, target)
        result = record.get("result", {})
        parts.append(
            CollectedPart(
                record["part_id"],
                str(destination),
                str(target.relative_to(out)),
                result.get("score"),
                result.get("verdict"),
                record.get("feedback", []),
            )
        )
    if not parts and not skipped:
        raise CollectError(f"no kept parts in {folder}")
    _write_index(out, parts)
    return CollectReport(out, parts, skipped)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CollectError(f"{path} cannot be read: {error}") from error
    if not isinstance(record, dict) or not isinstance(record.get("part_id"), str):
        raise CollectError(f"{path} is not a kept part's record (no part_id)")
    return record


def _write_index(out: Path, parts: list[CollectedPart]) -> None:
    """collect.json: what each file is, appended to what earlier collects into the same folder wrote."""
    index = out / "collect.json"
    earlier = json.loads(index.read_text()) if index.is_file() else []
    index.write_text(json.dumps(earlier + [asdict(part) for part in parts], indent=1))
