"""What clearing false alarms costs: a signed bundle scores the labelled test images as a device would, every good
part it flags is marked good through the service's own feedback desk (so the overlay memory learns it exactly as on
the line), and the images are scored again. Reported: the defects still found, the false alarms on the goods not
taught, and the defects no longer found."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_runtime.bundle import temporary_slot
from edge_runtime.inspector import Inspector
from edge_runtime.overlay_memory import ModelIdentity, OverlayMemory
from edge_runtime.preprocess import read_image_file
from edge_runtime.service.feedback import FeedbackDesk
from edge_runtime.service.feedback_audit import AuditLog
from edge_runtime.service.learning import ModelPatches
from edge_runtime.service.recent_parts import RecentPart, RecentParts
from edge_runtime.service.service_config import FeedbackConfig
from train_host.dataset import TestSample, list_test_samples
from train_host.metrics import auroc


@dataclass(frozen=True)
class FeedbackCost:
    bundle: str
    threshold: float
    taught: list[str]  # the flagged test goods marked good, in the order they were taught
    taught_scores_after: list[float]
    vectors_added: int  # fine overlay (the coarse overlay learns beside it)
    defects: int
    found_before: int
    found_after: int
    untaught_goods: int
    false_alarms_before: int  # on the goods not taught
    false_alarms_after: int
    image_auroc_before: float  # on the images not taught
    image_auroc_after: float
    no_longer_found: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [
            ("before", self.found_before, self.false_alarms_before, self.image_auroc_before),
            (f"after {len(self.taught)} taught", self.found_after, self.false_alarms_after, self.image_auroc_after),
        ]
        lines = [
            f"{self.bundle}: threshold {self.threshold:.4f}, {self.vectors_added} fine vectors taught",
            "| | defects found | false alarms (goods not taught) | image AUROC (images not taught) |",
            "|---|---|---|---|",
        ]
        for name, found, alarms, area in rows:
            lines.append(f"| {name} | {found} / {self.defects} | {alarms} / {self.untaught_goods} | {area:.4f} |")
        lines.append(f"taught parts now score: {', '.join(f'{s:.3f}' for s in self.taught_scores_after)}")
        lines.append(f"no longer found: {', '.join(self.no_longer_found) or 'none'}")
        return "\n".join(lines)


def _name(sample: TestSample) -> str:
    return f"{sample.defect_type}/{sample.path.name}"


def _scores(inspector: Inspector, frames: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: inspector.inspect(frame).score for name, frame in frames.items()}


def _teach(inspector: Inspector, parts: list[tuple[np.ndarray, float]], folder: Path) -> ModelPatches:
    """Mark each part good through a feedback desk, as an operator would (with force: whether to overrule the guard
    for a far-off score is the operator's call, not what is measured here)."""
    config = FeedbackConfig()
    identity, memory = ModelIdentity.of(inspector.manifest), inspector.memory
    overlay = OverlayMemory(identity, memory.index.dim, config.max_overlay_vectors)
    coarse = None
    if memory.coarse is not None:
        coarse = OverlayMemory(identity, memory.coarse.index.dim, config.max_overlay_vectors)
    patches = ModelPatches(inspector, overlay, folder / "overlay", coarse)
    recent = RecentParts(config.recent_parts, config.window_s)
    desk = FeedbackDesk(config, recent, lambda: patches, AuditLog(folder / "audit.jsonl"), "cost", lambda *_: None)
    threshold = inspector.calibration.image_threshold
    for number, (frame, score) in enumerate(parts):
        part_id = f"part-{number}"
        recent.add(RecentPart(part_id, time.monotonic(), frame, score, threshold, score >= threshold, "", {}))
        reply = desk.command_feedback({"part_id": part_id, "label": "good", "force": True})
        if not reply["ok"]:
            raise RuntimeError(f"feedback on part {number} refused: {reply.get('error')}")
    return patches


def _count_at_or_above(scores: dict[str, float], names: list[str], threshold: float) -> int:
    return sum(scores[name] >= threshold for name in names)


def _auroc_of(scores: dict[str, float], names: list[str], is_defect: dict[str, bool]) -> float:
    return auroc(np.array([scores[n] for n in names]), np.array([is_defect[n] for n in names]))


def measure_feedback_cost(archive: Path, trusted_keys: list[Path], data_root: Path) -> FeedbackCost:
    samples = list_test_samples(data_root)
    is_defect = {_name(s): s.is_defect for s in samples}
    frames = {_name(s): read_image_file(s.path) for s in samples}
    with temporary_slot(archive, trusted_keys, prefix="feedback-cost-") as slot:
        inspector = Inspector.from_slot(slot)
        threshold = inspector.calibration.image_threshold
        before = _scores(inspector, frames)
        taught = [name for name, score in before.items() if not is_defect[name] and score >= threshold]
        patches = _teach(inspector, [(frames[name], before[name]) for name in taught], slot.parent / "feedback")
        after = _scores(inspector, frames)
        vectors = patches.overlay.live_count()
        patches.detach()
    defects = [name for name in frames if is_defect[name]]
    untaught = [name for name in frames if name not in taught]
    untaught_goods = [name for name in untaught if not is_defect[name]]
    return FeedbackCost(
        bundle=archive.name,
        threshold=threshold,
        taught=taught,
        taught_scores_after=[after[name] for name in taught],
        vectors_added=vectors,
        defects=len(defects),
        found_before=_count_at_or_above(before, defects, threshold),
        found_after=_count_at_or_above(after, defects, threshold),
        untaught_goods=len(untaught_goods),
        false_alarms_before=_count_at_or_above(before, untaught_goods, threshold),
        false_alarms_after=_count_at_or_above(after, untaught_goods, threshold),
        image_auroc_before=_auroc_of(before, untaught, is_defect),
        image_auroc_after=_auroc_of(after, untaught, is_defect),
        no_longer_found=[n for n in defects if before[n] >= threshold and after[n] < threshold],
    )


def write_feedback_cost(cost: FeedbackCost, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cost.to_dict(), indent=2))
