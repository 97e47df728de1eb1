"""Feedback on real parts with the tiny real model, without MQTT: the guards, the caps and the audit log."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from edge_runtime.overlay_memory import ModelIdentity, OverlayMemory
from edge_runtime.service.commands import CommandError
from edge_runtime.service.feedback import FeedbackDesk, score_refusal
from edge_runtime.service.feedback_audit import AuditLog
from edge_runtime.service.learning import ModelPatches
from edge_runtime.service.recent_parts import RecentPart, RecentParts
from edge_runtime.service.service_config import FeedbackConfig


@pytest.fixture
def desk_for(shared_inspector, tmp_path):
    """A feedback desk on the shared real inspector; its overlay is detached again afterwards."""
    made: list[ModelPatches] = []

    def build(**config) -> tuple[FeedbackDesk, RecentParts, ModelPatches, list]:
        settings = FeedbackConfig(**config)
        identity, memory = ModelIdentity.of(shared_inspector.manifest), shared_inspector.memory
        overlay = OverlayMemory(identity, memory.index.dim, settings.max_overlay_vectors)
        coarse = OverlayMemory(identity, memory.coarse.index.dim, settings.max_overlay_vectors)
        patches = ModelPatches(shared_inspector, overlay, tmp_path / "overlay", coarse)
        made.append(patches)
        recent = RecentParts(settings.recent_parts, settings.window_s)
        events: list = []
        audit = AuditLog(tmp_path / "audit.jsonl")
        desk = FeedbackDesk(settings, recent, lambda: patches, audit, "boot1", lambda *a: events.append(a))
        return desk, recent, patches, events

    yield build
    for patches in made:
        patches.detach()


def _recent(inspector, path, part_id: str, age_s: float = 0.0) -> RecentPart:
    frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    result = inspector.inspect(frame)
    threshold = inspector.calibration.image_threshold
    payload = {"part_id": part_id, "score": result.score}
    stamp = time.monotonic() - age_s
    return RecentPart(part_id, stamp, frame, result.score, threshold, result.is_defect, "1.0.0", payload)


def test_a_good_part_teaches_its_patches_within_the_caps_and_undo_forgets_them(
    desk_for, recorded_parts, shared_inspector, tmp_path
):
    desk, recent, patches, events = desk_for(max_vectors_per_feedback=20, max_overlay_vectors=30)
    first, second = (_recent(shared_inspector, p, f"p{i}") for i, p in enumerate(recorded_parts[:2]))
    recent.add(first)
    recent.add(second)
    offered = len(patches.vectors(first.frame)[0])
    assert offered > 30, "the tiny model's patch grid is larger than the caps chosen here"

    reply = desk.command_feedback({"part_id": "p0", "label": "good", "force": True, "note": "new batch"})
    assert reply["ok"] and reply["outcome"] == "learned" and reply["feedback_id"] == "fb-boot1-1"
    assert (reply["vectors_offered"], reply["vectors_added"], reply["capped_by"]) == (
        offered,
        20,
        "max_vectors_per_feedback",
    )
    again = desk.command_feedback({"part_id": "p0", "label": "good", "force": True})
    assert not again["ok"] and "already marked good by fb-boot1-1" in again["error"]
    reply = desk.command_feedback({"part_id": "p1", "label": "good", "force": True})
    assert (reply["vectors_added"], reply["capped_by"], reply["overlay_vectors"]) == (10, "max_overlay_vectors", 30)
    full = desk.command_feedback({"part_id": "p1", "label": "defect"})
    assert full["ok"] and full["outcome"] == "recorded" and "vectors_added" in full and full["vectors_added"] == 0

    undone = desk.command_undo({"feedback_id": "fb-boot1-1"})
    assert undone["ok"] and undone["outcome"] == "undone" and undone["vectors_removed"] == 20
    assert undone["part_id"] == "p0" and patches.overlay.live_count() == 10
    refused = desk.command_undo({"feedback_id": "fb-boot1-1"})
    assert not refused["ok"] and "already undone" in refused["error"]
    assert OverlayMemory.load(tmp_path / "overlay", 30).live_count() == 10  # saved after every change

    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["event"], r["outcome"], r["part_id"]) for r in lines] == [
        ("feedback", "learned", "p0"),
        ("feedback", "refused", "p0"),
        ("feedback", "learned", "p1"),
        ("feedback", "recorded", "p1"),
        ("undo", "undone", "p0"),
        ("undo", "refused", None),
    ]
    assert lines[0]["note"] == "new batch" and lines[0]["source"] == "mqtt" and lines[0]["vectors"] == 20
    assert len(events) == 6


def test_feedback_teaches_the_coarse_memory_too_and_undo_forgets_it(desk_for, recorded_parts, shared_inspector):
    desk, recent, patches, _ = desk_for(max_vectors_per_feedback=100000, max_overlay_vectors=100000)
    part = _recent(shared_inspector, recorded_parts[-1], "p")
    recent.add(part)
    reply = desk.command_feedback({"part_id": "p", "label": "good", "force": True})
    assert reply["ok"] and patches.coarse_overlay is not None
    coarse_vectors = patches.coarse_overlay.live_count()
    assert coarse_vectors > 0
    # Both scales now know the part: no patch of it is farther from either memory than a typical good patch, so
    # its joined map (each scale in units of its typical distance) is at most sqrt(2) anywhere.
    memory = shared_inspector.memory
    assert memory.typical_distance is not None and memory.coarse.typical_distance is not None
    assert shared_inspector.inspect(part.frame).score < part.score
    assert patches.vectors(part.frame)[1].max() <= memory.typical_distance * (1 + 1e-5)
    severity = memory.severity(shared_inspector.pipeline.networks.knn_features(shared_inspector.prepare(part.frame)))
    assert severity.distance <= np.sqrt(2.0) * (1 + 1e-5)
    assert desk.command_undo({"feedback_id": reply["feedback_id"]})["ok"]
    assert patches.coarse_overlay.live_count() == 0
    assert shared_inspector.inspect(part.frame).score == pytest.approx(part.score, rel=1e-4)


def test_only_recent_parts_can_be_marked_and_bad_requests_name_the_field(desk_for, recorded_parts, shared_inspector):
    desk, recent, _, _ = desk_for(window_s=60, recent_parts=2, max_note_chars=10)
    recent.add(_recent(shared_inspector, recorded_parts[0], "old", age_s=120))
    reply = desk.command_feedback({"part_id": "old", "label": "good"})
    assert not reply["ok"] and "inspected 120 s ago; feedback is taken within 60 s" in reply["error"]
    for name in ("a", "b"):  # the ring holds two parts: "old" is forgotten
        recent.add(_recent(shared_inspector, recorded_parts[1], name))
    assert "not among the last 2 inspected parts" in desk.command_feedback({"part_id": "old", "label": "good"})["error"]

    with pytest.raises(CommandError, match="label: Input should be 'good' or 'defect'"):
        desk.command_feedback({"part_id": "a", "label": "fine"})
    with pytest.raises(CommandError, match="part_id: Field required"):
        desk.command_feedback({"label": "good"})
    with pytest.raises(CommandError, match="force: Input should be a valid boolean"):
        desk.command_feedback({"part_id": "a", "label": "good", "force": "yes"})
    with pytest.raises(CommandError, match="note: longer than 10 characters"):
        desk.command_feedback({"part_id": "a", "label": "good", "note": "x" * 11})
    with pytest.raises(CommandError, match="colour: Extra inputs are not permitted"):
        desk.command_feedback({"part_id": "a", "label": "good", "colour": "red"})
    with pytest.raises(CommandError, match="feedback_id: Field required"):
        desk.command_undo({})


def test_the_score_guard_refuses_parts_far_above_the_threshold(shared_inspector, recorded_parts):
    part = _recent(shared_inspector, recorded_parts[0], "p")
    threshold = part.threshold
    high = RecentPart("p", 0.0, part.frame, 2.5 * threshold, threshold, True, "1.0.0", {})
    near = RecentPart("p", 0.0, part.frame, 1.5 * threshold, threshold, True, "1.0.0", {})
    assert "above 2 x its threshold" in score_refusal(high, 2.0) and "force: true" in score_refusal(high, 2.0)
    assert score_refusal(near, 2.0) is None
