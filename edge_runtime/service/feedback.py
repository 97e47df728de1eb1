"""Operator feedback on recently inspected parts: "this one is good" teaches the overlay memory its patches,
"this one is a defect" is recorded. Guards keep a mistake from teaching the device that defects are good:
only recent parts, a score far above the threshold needs `force`, and caps on the vectors added."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field, ValidationError

from edge_runtime.knn import KnnMemory
from edge_runtime.overlay_memory import OverlayError, OverlayMemory
from edge_runtime.service.commands import CommandError
from edge_runtime.service.feedback_audit import AuditLog, AuditRecord
from edge_runtime.service.messages import utc_now
from edge_runtime.service.recent_parts import PartUnavailable, RecentPart, RecentParts
from edge_runtime.service.service_config import FeedbackConfig
from edge_runtime.settings import StrictModel

Label = Literal["good", "defect"]
_ID = r"^[A-Za-z0-9._:@-]{1,128}$"
# A vector this close to a memory that never measured its typical distance is already stored in it.
_STORED_DISTANCE = 1e-4


class FeedbackRequest(StrictModel):
    part_id: str = Field(pattern=_ID)
    label: Label
    note: str | None = None
    force: bool = False
    request_id: str | None = Field(None, pattern=_ID)


class UndoRequest(StrictModel):
    feedback_id: str = Field(pattern=_ID)
    request_id: str | None = Field(None, pattern=_ID)


def parse_request(model: type[StrictModel], body: dict[str, Any]) -> Any:
    """The command body as a typed request; CommandError naming each bad field otherwise."""
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in problem['loc']) or '(body)'}: {problem['msg']}" for problem in error.errors()
        )
        raise CommandError(problems) from error


class PatchSource(Protocol):
    """What the running model offers feedback: a part's memory vectors, and how far each is from the memory."""

    @property
    def overlay(self) -> OverlayMemory: ...

    def vectors(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def known_distance(self) -> float: ...

    def learn_coarse(self, feedback_id: str, part_id: str, frame: np.ndarray, limit: int) -> int: ...

    def forget_coarse(self, feedback_id: str) -> int: ...

    def save(self) -> None: ...


@dataclass(frozen=True)
class FeedbackOutcome:
    """The reply to one feedback or undo (also what the audit log and the summary are made of)."""

    command: str
    ok: bool
    feedback_id: str
    part_id: str | None
    label: str | None
    outcome: str  # learned, recorded, refused, undone
    error: str | None = None
    forced: bool = False
    score: float | None = None
    threshold: float | None = None
    vectors_offered: int = 0  # patch vectors of the part
    vectors_added: int = 0
    vectors_removed: int = 0
    capped_by: str | None = None  # max_vectors_per_feedback or max_overlay_vectors, when it limited the add
    overlay_vectors: int = 0
    overlay_capacity: int = 0
    request_id: str | None = None

    def reply(self) -> dict[str, Any]:
        """Reply fields; `ok` is the guard's answer (a refused feedback is still a feedback, with its id)."""
        return {key: value for key, value in asdict(self).items() if value is not None and key != "command"}


def score_refusal(part: RecentPart, ratio: float) -> str | None:
    """Why a part scoring this far above its threshold may not be marked good without force, or None."""
    limit = part.threshold + (ratio - 1.0) * abs(part.threshold)  # ratio x threshold for a positive threshold
    if part.score <= limit:
        return None
    return (
        f"part {part.part_id} scored {part.score:.4f}, above {ratio:g} x its threshold {part.threshold:.4f}: "
        "probably a real defect; send force: true to mark it good anyway"
    )


def known_distance(memory: KnnMemory) -> float:
    """How far from a memory a patch may lie and still need no teaching: as far as a typical held-out good patch
    (the scale's typical distance), or not at all where that was not measured. Teaching only the farther patches
    cost magnetic_tile 8 found defects instead of 12 for its 7 false alarms taught, and the taught parts still fell
    far below the threshold (docs/RESULTS.md); the overlay's cap lasts longer too."""
    return memory.typical_distance if memory.typical_distance is not None else _STORED_DISTANCE


def novel_vectors(vectors: np.ndarray, distances: np.ndarray, limit: int, known: float) -> np.ndarray:
    """The vectors the memory knows least (largest distance first), at most `limit`, none within `known`."""
    order = np.argsort(-distances, kind="stable")
    order = order[distances[order] > known]
    return vectors[order[:limit]]


class FeedbackDesk:
    """Carries out `feedback` and `undo`; called from the MQTT thread, one command at a time."""

    def __init__(
        self,
        config: FeedbackConfig,
        recent: RecentParts,
        source: Callable[[], PatchSource],
        audit: AuditLog,
        boot_id: str,
        on_feedback: Callable[[FeedbackOutcome, RecentPart | None, str | None], None],
    ) -> None:
        self.config = config
        self.recent = recent
        self.source = source
        self.audit = audit
        self.boot_id = boot_id
        self.on_feedback = on_feedback  # keeps the part and publishes the summary
        self._numbers = itertools.count(1)
        self.lock = threading.RLock()  # feedback from several links; a model switch waits for it too

    def new_id(self) -> str:
        return f"fb-{self.boot_id}-{next(self._numbers)}"

    def command_feedback(self, body: dict[str, Any], source: str = "mqtt") -> dict[str, Any]:
        request: FeedbackRequest = parse_request(FeedbackRequest, body)
        if request.note is not None and len(request.note) > self.config.max_note_chars:
            raise CommandError(f"note: longer than {self.config.max_note_chars} characters")
        with self.lock:
            outcome, part = self._judge(request, self.new_id())
            self._record(outcome, part, request, source)
        return outcome.reply()

    def command_undo(self, body: dict[str, Any], source: str = "mqtt") -> dict[str, Any]:
        request: UndoRequest = parse_request(UndoRequest, body)
        with self.lock:
            patches = self.source()
            try:
                removed = patches.overlay.remove(request.feedback_id)
                patches.forget_coarse(request.feedback_id)
            except OverlayError as error:
                outcome = self._outcome("undo", request.feedback_id, None, None, "refused", request.request_id)
                outcome = _with(outcome, ok=False, error=str(error))
            else:
                patches.save()
                outcome = self._outcome(
                    "undo", request.feedback_id, removed.part_id, "good", "undone", request.request_id
                )
                outcome = _with(outcome, vectors_removed=len(removed.labels))
            outcome = self._with_overlay(outcome, patches.overlay)
            self._audit(outcome, source, None, None)
            self.on_feedback(outcome, None, None)
        return outcome.reply()

    # --- feedback ---------------------------------------------------------------------------------------

    def _judge(self, request: FeedbackRequest, feedback_id: str) -> tuple[FeedbackOutcome, RecentPart | None]:
        base = self._outcome("feedback", feedback_id, request.part_id, request.label, "refused", request.request_id)
        try:
            part = self.recent.find(request.part_id)
        except PartUnavailable as error:
            return _with(base, ok=False, error=str(error)), None
        base = _with(base, score=round(part.score, 6), threshold=round(part.threshold, 6), forced=request.force)
        if request.label == "defect":
            return self._with_overlay(_with(base, outcome="recorded"), self.source().overlay), part
        return self._learn(base, part, request.force), part

    def _learn(self, base: FeedbackOutcome, part: RecentPart, force: bool) -> FeedbackOutcome:
        patches = self.source()
        overlay = patches.overlay
        base = self._with_overlay(base, overlay)
        refusal = score_refusal(part, self.config.refuse_score_ratio)
        if refusal is not None and not force:
            return _with(base, ok=False, error=refusal)
        already = overlay.active_feedback_of(part.part_id)
        if already is not None:
            return _with(base, ok=False, error=f"part {part.part_id} is already marked good by {already}")
        room = overlay.room()
        if room == 0:
            reason = f"the overlay holds its maximum of {overlay.capacity} vectors; undo feedback or update the model"
            return _with(base, ok=False, error=reason, capped_by="max_overlay_vectors")
        vectors, distances = patches.vectors(part.frame)
        limit = min(self.config.max_vectors_per_feedback, room)
        known = patches.known_distance()
        chosen = novel_vectors(vectors, distances, limit, known)
        novel = int((distances > known).sum())
        capped_by = None
        if novel > len(chosen):
            capped_by = (
                "max_vectors_per_feedback" if limit == self.config.max_vectors_per_feedback else "max_overlay_vectors"
            )
        if len(chosen):
            overlay.add(base.feedback_id, part.part_id, chosen)
            # The coarse memory must learn the part too, or its distances alone would keep it a defect.
            patches.learn_coarse(base.feedback_id, part.part_id, part.frame, limit)
            patches.save()
        learned = _with(base, ok=True, outcome="learned", vectors_offered=len(vectors), vectors_added=len(chosen))
        return self._with_overlay(_with(learned, capped_by=capped_by), overlay)

    # --- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _outcome(
        command: str, feedback_id: str, part_id: str | None, label: str | None, outcome: str, request_id: str | None
    ) -> FeedbackOutcome:
        return FeedbackOutcome(command, True, feedback_id, part_id, label, outcome, request_id=request_id)

    @staticmethod
    def _with_overlay(outcome: FeedbackOutcome, overlay: OverlayMemory) -> FeedbackOutcome:
        return _with(outcome, overlay_vectors=overlay.live_count(), overlay_capacity=overlay.capacity)

    def _record(self, outcome: FeedbackOutcome, part: RecentPart | None, request: FeedbackRequest, source: str) -> None:
        self._audit(outcome, source, request.note, part)
        self.on_feedback(outcome, part, request.note)

    def _audit(self, outcome: FeedbackOutcome, source: str, note: str | None, part: RecentPart | None) -> None:
        vectors = outcome.vectors_added or outcome.vectors_removed
        self.audit.append(
            AuditRecord(
                time=utc_now(),
                event=outcome.command,
                outcome=outcome.outcome,
                feedback_id=outcome.feedback_id,
                part_id=outcome.part_id,
                label=outcome.label,
                source=source,
                reason=outcome.error,
                note=note,
                forced=outcome.forced,
                vectors=vectors,
                score=outcome.score,
                threshold=outcome.threshold,
                model_version=part.model_version if part is not None else None,
            )
        )


def _with(current: FeedbackOutcome, /, **changes: Any) -> FeedbackOutcome:
    return replace(current, **changes)
