"""The line teaches the device, end to end: real magnetic-tile parts played through GStreamer into the running
service, a real mosquitto, the tiny real model. A good part the model flags is marked good and passes from then
on, also after a restart, the defects are still found, undo brings the old verdict back, and a defect marked good
is refused with its reason. A model update clears the overlay."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.overlay_memory import ModelIdentity, OverlayMemory

from .conftest import DATASETS, PART_SIZE

FPS = 4  # slow enough that a loaded 2-core machine inspects every frame; a frame's time stamp names its file
BETWEEN_PASSES_S = 8  # the conveyor plays again after this pause (camera reconnect), time to send feedback
DEFECT_TYPES = ("blowhole", "break", "crack", "fray", "uneven")
DEFECTS_PER_TYPE = 10
GOOD_CANDIDATES = 20
RATIO = 2.0  # feedback.refuse_score_ratio, the default


@pytest.fixture
def services(shared_inspector, service_threads):
    """Services in threads, with the shared inspector or (own_model) loading their own model."""
    from edge_runtime.service.service_config import parse_config

    def start(raw: dict, own_model: bool = False):  # noqa: ANN202
        inspector = None if own_model else shared_inspector
        return service_threads.start(parse_config(raw, "feedback test config"), inspector)

    start.stop = service_threads.stop
    return start


def _frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(image, PART_SIZE, interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def line(shared_inspector, tmp_path_factory) -> dict:
    """The conveyor: one good part the model flags (G), then 50 real defects (10 of each type), as PNG files.

    G is the first of the test set's first 20 good images (sorted) that scores at or above the threshold but
    within RATIO x the threshold (so the guard lets it be marked good). D is the highest-scoring defect, which
    must lie beyond RATIO x the threshold."""
    root = DATASETS / "magnetic_tile" / "test"
    if not root.is_dir():
        pytest.skip(f"dataset {root} not present")
    folder = tmp_path_factory.mktemp("conveyor")
    threshold = shared_inspector.calibration.image_threshold
    assert shared_inspector.memory.extra is None, "another test left an overlay on the shared inspector"

    def write(index: int, source: Path) -> tuple[np.ndarray, float]:
        path = folder / f"part_{index:03d}.png"
        cv2.imwrite(str(path), _frame(source))
        frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # what GStreamer will decode, bit for bit
        return frame, shared_inspector.inspect(frame).score

    good = None
    for source in sorted((root / "good").glob("*.jpg"))[:GOOD_CANDIDATES]:
        frame, score = write(0, source)
        if threshold <= score <= RATIO * threshold:
            good = (source.name, score)
            break
    assert good is not None, f"none of the first {GOOD_CANDIDATES} good test images is flagged by the tiny model"
    defects = [p for t in DEFECT_TYPES for p in sorted((root / t).glob("*.jpg"))[:DEFECTS_PER_TYPE]]
    scores = [write(index, source)[1] for index, source in enumerate(defects, start=1)]
    worst = int(np.argmax(scores)) + 1
    assert scores[worst - 1] > RATIO * threshold, "no defect scores beyond the guard's ratio"
    return {
        "folder": folder,
        "count": 1 + len(defects),
        "good": good,
        "worst": worst,
        "threshold": threshold,
        "direct_recall": float(np.mean([s >= threshold for s in scores])),
    }


def _conveyor_config(make_config, port: int, line: dict, state_dir: Path) -> dict:
    pipeline = f'multifilesrc location={line["folder"]}/part_%03d.png caps="image/png,framerate={FPS}/1" ! pngdec'
    camera = {"pipeline": pipeline, "reconnect_min_s": BETWEEN_PASSES_S, "reconnect_max_s": BETWEEN_PASSES_S}
    # The whole conveyor (51 parts) stays open for feedback, not only the default newest 30.
    raw = make_config(port, camera=camera, mode={"max_fps": 0}, feedback={"recent_parts": 64})
    raw["state_dir"] = str(state_dir)
    return raw


def _passes(listener, count: int) -> list[dict[int, dict]]:
    """Results split into plays of the conveyor (the file index falls back to 0 when it plays again)."""
    plays: list[dict[int, dict]] = []
    last = count
    for result in listener.payloads("/result"):
        index = round(result["frame"]["pts_s"] * FPS)
        if not plays or index <= last:
            plays.append({})
        plays[-1][index] = result
        last = index
    return plays


def _wait_for_pass(listener, count: int, number: int) -> dict[int, dict]:
    def done() -> bool:
        plays = _passes(listener, count)
        return len(plays) >= number and count - 1 in plays[number - 1]

    listener.wait_for(done, 60 + count / FPS, f"play {number} of the conveyor")
    play = _passes(listener, count)[number - 1]
    assert sorted(play) == list(range(count)), "every part of the play inspected once"
    return play


def _recall(play: dict[int, dict]) -> float:
    return float(np.mean([play[i]["verdict"] == "defect" for i in play if i > 0]))


# Teaching one good look may cost the line a defect or two that look like it: the healing maps add only where the
# memory finds a patch unusual (inspection.fusion: capped), so what the overlay teaches the memory lowers them too.
# Measured on this conveyor: 24 of 50 defects found before, 22 after (also with only the unusual patches taught).
TWO_DEFECTS = 2.0 / (len(DEFECT_TYPES) * DEFECTS_PER_TYPE) + 1e-9


def _reply(listener, command: str, number: int, timeout: float = 20) -> dict:
    listener.wait_for(lambda: len(_replies(listener, command)) >= number, timeout, f"reply {number} to {command}")
    return _replies(listener, command)[number - 1]


def _replies(listener, command: str) -> list[dict]:
    return [r for r in listener.payloads("/reply") if r.get("command") == command]


def _summaries(listener) -> list[dict]:
    """The retained feedback summary (not the commands on cmd/feedback, which the listener hears too)."""
    return [json.loads(p) for t, p in listener.raw("/feedback") if t == "test/cam1/feedback"]


def _send(listener, command: str, body: dict) -> None:
    listener.publish(f"test/cam1/cmd/{command}", json.dumps(body))


def test_a_flagged_good_part_marked_good_passes_after_a_restart_too_and_undo_brings_the_old_verdict_back(
    broker, listen, make_config, services, line, tmp_path
):
    state = tmp_path / "device-state"
    raw = _conveyor_config(make_config, broker.port, line, state)
    count, threshold = line["count"], line["threshold"]
    listener = listen(broker.port, "test")

    service = services(raw)
    first = _wait_for_pass(listener, count, 1)
    flagged, worst = first[0], first[line["worst"]]
    assert flagged["verdict"] == "defect" and np.isclose(flagged["score"], line["good"][1], rtol=1e-3, atol=1e-4)
    assert worst["score"] > RATIO * threshold

    _send(listener, "feedback", {"part_id": flagged["part_id"], "label": "good", "note": "new supplier batch"})
    _send(listener, "feedback", {"part_id": worst["part_id"], "label": "good"})
    _send(listener, "feedback", {"part_id": worst["part_id"], "label": "defect"})
    learned, refused, recorded = (_reply(listener, "feedback", n) for n in (1, 2, 3))
    assert len(_passes(listener, count)) == 1, "the feedback was answered before the conveyor played again"

    assert learned["ok"] and learned["outcome"] == "learned" and learned["feedback_id"].startswith("fb-"), learned
    assert 0 < learned["vectors_added"] <= learned["vectors_offered"] and learned["overlay_vectors"] > 0
    assert not refused["ok"] and refused["outcome"] == "refused" and refused["feedback_id"] != learned["feedback_id"]
    assert f"above {RATIO:g} x its threshold" in refused["error"] and "force: true" in refused["error"]
    assert recorded["ok"] and recorded["outcome"] == "recorded" and recorded["vectors_added"] == 0
    summary = _summaries(listener)[-1]
    assert summary["counts"] == {"learned": 1, "refused": 1, "recorded": 1}
    assert summary["overlay"]["vectors"] == learned["vectors_added"]
    assert (summary["last"]["feedback_id"], summary["last"]["outcome"]) == (recorded["feedback_id"], "recorded")

    second = _wait_for_pass(listener, count, 2)
    passed = second[0]
    assert passed["verdict"] == "good" and passed["score"] < threshold
    recall_before, recall_after = _recall(first), _recall(second)
    assert abs(recall_after - recall_before) <= TWO_DEFECTS
    assert recall_before == pytest.approx(line["direct_recall"])
    status = listener.payloads("/status")[-1]
    assert status["overlay"]["vectors"] == learned["vectors_added"]
    stats = listener.payloads("/stats")[-1]
    assert stats["kept_parts"]["parts"] > 0
    services.stop(service)

    # A restart: the overlay is read back from the state directory.
    audit = [json.loads(line) for line in (state / "feedback" / "audit.jsonl").read_text().splitlines()]
    assert [(r["part_id"], r["label"], r["outcome"], r["source"]) for r in audit] == [
        (flagged["part_id"], "good", "learned", "mqtt"),
        (worst["part_id"], "good", "refused", "mqtt"),
        (worst["part_id"], "defect", "recorded", "mqtt"),
    ]
    listener.messages.clear()
    service = services(raw)
    after_restart = _wait_for_pass(listener, count, 1)
    assert after_restart[0]["verdict"] == "good"
    assert after_restart[0]["score"] == pytest.approx(passed["score"], rel=1e-3, abs=1e-4)
    assert abs(_recall(after_restart) - recall_before) <= TWO_DEFECTS

    _send(listener, "feedback/undo", {"feedback_id": learned["feedback_id"]})
    undone = _reply(listener, "feedback/undo", 1)
    assert undone["ok"] and undone["outcome"] == "undone"
    assert undone["vectors_removed"] == learned["vectors_added"] and undone["overlay_vectors"] == 0
    assert len(_passes(listener, count)) == 1, "the undo was answered before the conveyor played again"
    again = _wait_for_pass(listener, count, 2)
    assert again[0]["verdict"] == "defect"
    assert again[0]["score"] == pytest.approx(flagged["score"], rel=1e-3, abs=1e-4)
    services.stop(service)

    kept = {}
    for path in (state / "kept_parts").glob("*.json"):
        record = json.loads(path.read_text())
        kept[record["part_id"]] = record
    assert [f["outcome"] for f in kept[flagged["part_id"]]["feedback"]] == ["learned"]
    assert kept[flagged["part_id"]]["feedback"][0]["undone_at"]
    assert [f["label"] for f in kept[worst["part_id"]]["feedback"]] == ["good", "defect"]
    print(
        f"\nflagged good {line['good'][0]}: score {flagged['score']:.4f} -> {passed['score']:.4f} "
        f"(threshold {threshold:.4f}), {learned['vectors_added']} vectors; after undo {again[0]['score']:.4f}; "
        f"defect recall {recall_before:.3f} before, {recall_after:.3f} after, {_recall(after_restart):.3f} after "
        f"the restart ({count - 1} defects); refused: {refused['error']}"
    )


def test_a_model_update_clears_the_overlay_and_says_so(
    broker, listen, make_config, services, bundle, keys, slot, repack, bundle_server, tmp_path
):
    update = repack(slot, tmp_path / "v2.tar", keys[0], "2.0.0")
    camera = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=4/1"
    raw = make_config(broker.port, camera={"pipeline": camera}, mode={"max_fps": 0})
    raw["bundle"] = {"archive": str(bundle[0]), "trusted_keys": [str(keys[1])]}
    listener = listen(broker.port, "test")
    service = services(raw, own_model=True)
    listener.wait_for(lambda: len(listener.payloads("/result")) >= 2, 30, "results of model 1.0.0")
    part = listener.payloads("/result")[-1]
    _send(listener, "feedback", {"part_id": part["part_id"], "label": "good", "force": True})
    learned = _reply(listener, "feedback", 1)
    assert learned["ok"] and learned["vectors_added"] > 0, learned

    shutil.copy(update, bundle_server.folder / "v2.tar")
    digest = hashlib.sha256(update.read_bytes()).hexdigest()
    install = {"url": bundle_server.url("v2.tar"), "version": "2.0.0", "sha256": digest, "request_id": "up"}
    _send(listener, "install", install)

    def cleared() -> bool:
        status = listener.payloads("/status")
        return bool(status) and (status[-1].get("overlay") or {}).get("model_version") == "2.0.0"

    listener.wait_for(cleared, 90, "the overlay to follow the new model")
    overlay = listener.payloads("/status")[-1]["overlay"]
    assert overlay["vectors"] == 0 and overlay["last_cleared"]["reason"] == "model_changed"
    assert (overlay["last_cleared"]["from_model"], overlay["last_cleared"]["vectors"]) == (
        "1.0.0",
        learned["vectors_added"],
    )
    assert _summaries(listener)[-1]["overlay"]["last_cleared"] == overlay["last_cleared"]
    _send(listener, "feedback/undo", {"feedback_id": learned["feedback_id"]})
    assert "added no vectors" in _reply(listener, "feedback/undo", 1)["error"]  # its vectors went with the old model
    state = Path(raw["state_dir"])
    audit = [json.loads(line) for line in (state / "feedback" / "audit.jsonl").read_text().splitlines()]
    assert audit[1]["event"] == "overlay_cleared" and audit[1]["extra"] == {"from_model": "1.0.0"}
    assert OverlayMemory.load(state / "feedback" / "overlay", 100) is None or (
        OverlayMemory.load(state / "feedback" / "overlay", 100).live_count() == 0
    )
    services.stop(service)


def test_an_overlay_of_another_model_is_cleared_at_start(broker, listen, make_config, services, tmp_path):
    raw = make_config(broker.port)
    folder = Path(raw["state_dir"]) / "feedback" / "overlay"
    stale = OverlayMemory(ModelIdentity("0.9.0", "0" * 16), dim=4, capacity=10)
    stale.add("fb-old", "p", np.ones((3, 4), np.float32))
    stale.save(folder)
    listener = listen(broker.port, "test")
    services(raw)
    listener.wait_for(lambda: _summaries(listener), 20, "the feedback summary")
    overlay = _summaries(listener)[-1]["overlay"]
    assert overlay["vectors"] == 0 and overlay["model_version"] == "1.0.0"
    assert (overlay["last_cleared"]["reason"], overlay["last_cleared"]["from_model"]) == ("model_changed", "0.9.0")
    assert overlay["last_cleared"]["vectors"] == 3
    assert not (folder / "overlay.json").exists()
