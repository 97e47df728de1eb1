"""The line teaches the device: feedback commands, the overlay memory bound to the running model, and the
parts kept for retraining, plugged into the service through its listener hooks.

Policy at a model change (update, rollback, or another bundle at start): the overlay is cleared, because its
vectors come from the old model's backbone and mean nothing to the new one. The frames of parts given feedback
are kept (keep_parts), so they can be judged again on the line or trained on."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.inspector import Inspector
from edge_runtime.knn import COARSE_FOLDER
from edge_runtime.overlay_memory import ModelIdentity, OverlayError, OverlayMemory, clear_saved
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.service.commands import CommandError
from edge_runtime.service.feedback import FeedbackDesk, FeedbackOutcome, known_distance, novel_vectors
from edge_runtime.service.feedback_audit import AuditLog, AuditRecord, outcome_counts
from edge_runtime.service.kept_parts import FOLDER as KEPT_FOLDER
from edge_runtime.service.kept_parts import KeepLimits, KeptParts
from edge_runtime.service.messages import encode_json, utc_now
from edge_runtime.service.mqtt_topics import FEEDBACK_QOS, FEEDBACK_RETAIN
from edge_runtime.service.recent_parts import RecentPart, RecentParts

if TYPE_CHECKING:  # the service imports this module
    from edge_runtime.service.service import InspectedPart, Service

log = logging.getLogger(__name__)

FEEDBACK_FOLDER = "feedback"
OVERLAY_FOLDER = "overlay"
AUDIT_FILE = "audit.jsonl"
_PRUNE_EVERY_S = 60.0


class ModelPatches:
    """The running model's side of feedback: its memory vectors of a frame, and its overlays (one for the fine
    memory, one for the coarse memory when the model has one)."""

    def __init__(
        self, inspector: Inspector, overlay: OverlayMemory, folder: Path, coarse_overlay: OverlayMemory | None = None
    ) -> None:
        self.inspector = inspector
        self.overlay = overlay
        self.coarse_overlay = coarse_overlay
        self.folder = folder
        self._pipeline: InspectionPipeline | None = None  # own infer requests: commands run beside the frame loop
        inspector.memory.extra = overlay
        if inspector.memory.coarse is not None:
            inspector.memory.coarse.extra = coarse_overlay

    def _stage_maps(self, frame: np.ndarray) -> list[np.ndarray]:
        if self._pipeline is None:
            self._pipeline = self.inspector.new_pipeline()
        return self._pipeline.networks.knn_features(self.inspector.prepare(frame))

    def vectors(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The part's memory vectors and each one's distance to the memory (bundle and overlay) now."""
        memory = self.inspector.memory
        vectors, _ = memory.describe(self._stage_maps(frame))
        return vectors, memory.distances(vectors)

    def known_distance(self) -> float:
        """How far from the fine memory a patch may lie and still need no teaching."""
        return known_distance(self.inspector.memory)

    def learn_coarse(self, feedback_id: str, part_id: str, frame: np.ndarray, limit: int) -> int:
        """Teach the coarse overlay the part's coarse vectors the coarse memory knows least; how many were added."""
        coarse, overlay = self.inspector.memory.coarse, self.coarse_overlay
        if coarse is None or overlay is None:
            return 0
        vectors, _ = coarse.describe(self.inspector.memory.coarse_maps(self._stage_maps(frame)))
        chosen = novel_vectors(vectors, coarse.distances(vectors), min(limit, overlay.room()), known_distance(coarse))
        if len(chosen):
            overlay.add(feedback_id, part_id, chosen)
        return len(chosen)

    def forget_coarse(self, feedback_id: str) -> int:
        """Undo a feedback in the coarse overlay; how many vectors it removed (0 when it added none there)."""
        entry = self.coarse_overlay.entry(feedback_id) if self.coarse_overlay is not None else None
        if entry is None or entry.deleted:
            return 0
        return len(self.coarse_overlay.remove(feedback_id).labels)

    def save(self) -> None:
        self.overlay.save(self.folder)
        if self.coarse_overlay is not None:
            self.coarse_overlay.save(self.folder / COARSE_FOLDER)

    def detach(self) -> None:
        if self.inspector.memory.extra is self.overlay:
            self.inspector.memory.extra = None
        coarse = self.inspector.memory.coarse
        if coarse is not None and coarse.extra is self.coarse_overlay:
            coarse.extra = None


def _refuse_all(body: dict[str, Any]) -> dict[str, Any]:
    raise CommandError("feedback is turned off on this device (feedback.enabled)")


class Learning:
    """Started by the service after its parts are open, stopped at shutdown."""

    def __init__(self, service: Service) -> None:
        self.service = service
        config = service.config
        self.folder = config.state_dir / FEEDBACK_FOLDER
        self.kept: KeptParts | None = None
        self.recent: RecentParts | None = None
        self.desk: FeedbackDesk | None = None
        self.patches: ModelPatches | None = None
        self.counts: dict[str, int] = {}
        self.last_clear: dict[str, Any] | None = None
        self._next_prune = 0.0
        self._audit: AuditLog | None = None

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        service, config = self.service, self.service.config
        keep = config.keep_parts
        if keep.enabled:
            limits = KeepLimits(keep.max_parts, keep.max_bytes, keep.max_age_s, keep.pending)
            self.kept = KeptParts(config.state_dir / KEPT_FOLDER, limits)
        if config.feedback.enabled:
            self._start_feedback()
        else:
            service.commands.register("feedback", _refuse_all)
            service.commands.register("feedback/undo", _refuse_all)
        service.result_listeners.append(self.on_part)
        service.tick_listeners.append(self.on_tick)
        service.connect_listeners.append(self.publish_summary)
        service.status_fields.append(self.status_fields)
        service.stats_fields.append(self.stats_fields)

    def _start_feedback(self) -> None:
        service, config = self.service, self.service.config
        self._audit = AuditLog(self.folder / AUDIT_FILE)
        records = self._audit.records()
        self.counts = outcome_counts(records)
        self.recent = RecentParts(config.feedback.recent_parts, config.feedback.window_s)
        self.desk = FeedbackDesk(
            config.feedback, self.recent, self._current_patches, self._audit, service.boot_id, self._after_feedback
        )
        service.commands.register("feedback", self.desk.command_feedback)
        service.commands.register("feedback/undo", self.desk.command_undo)
        assert service.inspector is not None
        self.patches = self._bind(service.inspector)

    def stop(self) -> None:
        if self.patches is not None:
            self.patches.detach()  # the inspector may outlive the service (tools, tests)
        if self.kept is not None:
            self.kept.close()

    # --- the overlay follows the running model ---------------------------------------------------------

    def _bind(self, inspector: Inspector) -> ModelPatches:
        """The saved overlays when they belong to this very model; otherwise cleared, empty ones."""
        folder = self.folder / OVERLAY_FOLDER
        identity = ModelIdentity.of(inspector.manifest)
        memory = inspector.memory
        overlay = self._saved_or_new(folder, identity, memory.index.dim, announce=True)
        coarse_overlay = None
        if memory.coarse is not None:
            # Cleared with the fine overlay, whose clearing is the one reported (its counts are those in replies).
            coarse_dim = memory.coarse.index.dim
            coarse_overlay = self._saved_or_new(folder / COARSE_FOLDER, identity, coarse_dim, announce=False)
        return ModelPatches(inspector, overlay, folder, coarse_overlay)

    def _saved_or_new(self, folder: Path, identity: ModelIdentity, dim: int, announce: bool) -> OverlayMemory:
        capacity = self.service.config.feedback.max_overlay_vectors
        try:
            saved = OverlayMemory.load(folder, capacity)
        except OverlayError as error:
            log.error("feedback overlay cannot be loaded, starting an empty one: %s", error)
            if announce:
                self._cleared(None, identity, "unreadable", 0, str(error))
            saved = None
        if saved is not None and saved.model == identity and saved.dim == dim:
            log.info("feedback overlay: %d vectors for model %s", saved.live_count(), identity.model_version)
            return saved
        if saved is not None and announce:
            self._cleared(saved.model, identity, "model_changed", saved.live_count(), None)
        clear_saved(folder)
        return OverlayMemory(identity, dim, capacity)

    def _cleared(
        self, old: ModelIdentity | None, new: ModelIdentity, reason: str, vectors: int, detail: str | None
    ) -> None:
        old_version = old.model_version if old is not None else None
        self.last_clear = {
            "reason": reason,
            "from_model": old_version,
            "to_model": new.model_version,
            "vectors": vectors,
            "time": utc_now(),
        }
        log.warning("feedback overlay cleared (%s): %d vectors of model %s", reason, vectors, old_version)
        if self._audit is not None:
            record = AuditRecord(
                time=utc_now(),
                event="overlay_cleared",
                outcome="cleared",
                reason=detail or reason,
                vectors=vectors,
                model_version=new.model_version,
                extra={"from_model": old_version},
            )
            self._audit.append(record)
            self.counts["cleared"] = self.counts.get("cleared", 0) + 1

    def _current_patches(self) -> ModelPatches:
        self._follow_model()
        assert self.patches is not None
        return self.patches

    def _follow_model(self) -> None:
        """After a model switch: clear the overlay (it holds the old backbone's vectors), bind to the new one."""
        if self.desk is None or self.patches is None:
            return
        current = self.service.inspector
        if current is None or current is self.patches.inspector:
            return
        with self.desk.lock:
            if current is self.patches.inspector:
                return
            self.patches.detach()
            self.patches = self._bind(current)
        self.publish_summary()
        self.service.publish_status()

    # --- listeners -------------------------------------------------------------------------------------

    def on_part(self, part: InspectedPart) -> None:
        """Frame thread: remember the part for feedback, and keep it when it is a defect or uncertain."""
        result, threshold = part.result, part.inspector.calibration.image_threshold
        frame = part.frame.image
        if self.recent is not None:
            version = part.inspector.model_version
            recent = RecentPart(
                part.part_id,
                part.frame.received,
                frame,
                result.score,
                threshold,
                result.is_defect,
                version,
                part.payload,
            )
            self.recent.add(recent)
        if self.kept is None:
            return
        reasons = self._keep_reasons(result.score, threshold, result.is_defect)
        if reasons:
            self.kept.keep(part.part_id, frame, reasons, part.payload)

    def _keep_reasons(self, score: float, threshold: float, is_defect: bool) -> list[str]:
        keep = self.service.config.keep_parts
        reasons = ["defect"] if is_defect and keep.defects else []
        if abs(score - threshold) <= keep.uncertain_band * abs(threshold):
            reasons.append("uncertain")
        return reasons

    def on_tick(self) -> None:
        self._follow_model()
        now = time.monotonic()
        if self.kept is not None and now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY_S
            self.kept.prune()

    def _after_feedback(self, outcome: FeedbackOutcome, part: RecentPart | None, note: str | None) -> None:
        """Keep the part with its feedback, count the outcome, publish the summary."""
        self.counts[outcome.outcome] = self.counts.get(outcome.outcome, 0) + 1
        if self.kept is not None and part is not None:
            feedback = {
                "feedback_id": outcome.feedback_id,
                "label": outcome.label,
                "outcome": outcome.outcome,
                "note": note,
                "forced": outcome.forced,
                "time": utc_now(),
            }
            self.kept.add_feedback(part.part_id, part.frame, part.payload, feedback)
        if self.kept is not None and outcome.outcome == "undone" and outcome.part_id is not None:
            self.kept.mark_undone(outcome.part_id, outcome.feedback_id)
        self.publish_summary()

    # --- what the service publishes ----------------------------------------------------------------------

    def overlay_state(self) -> dict[str, Any] | None:
        if self.patches is None:
            return None
        summary = self.patches.overlay.summary()
        return {
            "vectors": summary.vectors,
            "capacity": summary.capacity,
            "feedbacks": summary.feedbacks,
            "model_version": summary.model_version,
            "model_id": summary.model_id,
            "last_cleared": self.last_clear,
        }

    def summary_payload(self) -> dict[str, Any]:
        last = self._audit.last if self._audit is not None else None
        return {
            "overlay": self.overlay_state(),
            "counts": dict(self.counts),
            "last": _public(last) if last is not None else None,
            "time": utc_now(),
        }

    def publish_summary(self) -> None:
        publisher = self.service.publisher
        if publisher is None or self.desk is None:
            return
        publisher.send(self.service.topics.feedback, encode_json(self.summary_payload()), FEEDBACK_QOS, FEEDBACK_RETAIN)

    def status_fields(self) -> dict[str, Any]:
        return {"overlay": self.overlay_state()} if self.patches is not None else {}

    def stats_fields(self) -> dict[str, Any]:
        if self.kept is None:
            return {}
        kept = self.kept.stats()
        return {"kept_parts": {"parts": kept.parts, "bytes": kept.bytes, "dropped": kept.dropped}}


def _public(record: AuditRecord) -> dict[str, Any]:
    """An audit record without its empty fields."""
    return {key: value for key, value in asdict(record).items() if value is not None and value != {}}
