"""The demo: its steps end to end at tiny scale (real training, INT8 export, mosquitto, the service as a
process, GStreamer), and its parts on their own: data choice, conveyor timestamps, pairing of messages."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml

from demo_line.__main__ import main
from demo_line.conveyor import choose_parts, frame_rate, load_truth, write_conveyor
from demo_line.demo import DemoOptions, choose_data, run_demo
from demo_line.demo_report import Confusion, LatencyStats, Message, PartMatcher
from edge_runtime.service.mqtt_topics import Topics
from train_host.dataset import list_test_samples, read_image
from train_host.synthetic_parts import SyntheticSetSpec, write_synthetic_set

TINY_PARTS = SyntheticSetSpec(train_good=12, test_good=3, test_per_defect=2, size=(64, 64))


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_set(tmp_path_factory.mktemp("synthetic") / "parts", TINY_PARTS)


def test_demo_goes_from_synthetic_data_to_a_summary_that_matches_the_truth_file(
    tmp_path, capsys, monkeypatch, tiny_training_yaml
):
    monkeypatch.setenv("D3AD_QUIET", "1")
    config = tiny_training_yaml
    out = tmp_path / "demo"
    options = DemoOptions(
        out=out,
        config=config,
        synthetic_spec=TINY_PARTS,
        evaluate=False,
        parts=6,
        fps=4.0,
        frame_size=(96, 80),
        calibration_images=8,
        gate_images_per_type=2,
        precision="int8",  # the demo's default is the gate (auto); one precision keeps this test short
        stream_timeout_s=120,
    )
    summary = run_demo(options)
    printed = capsys.readouterr().out

    truth = load_truth(out / "conveyor")
    assert summary.data == "synthetic" and "SYNTHETIC" in printed and "not-there not found" in printed
    assert not summary.timed_out and summary.missing_parts == []
    # Every part on the conveyor has exactly one result, and it is recorded against that part's truth.
    assert summary.parts_on_conveyor == summary.parts_inspected == len(truth.parts) == 6
    assert [r.index for r in summary.parts] == list(range(6))
    assert len({r.part_id for r in summary.parts}) == 6
    for record, part in zip(summary.parts, truth.parts, strict=True):
        assert (record.frame, record.truth, record.defect_type) == (part.frame, part.truth, part.defect_type)
        assert record.verdict == ("defect" if record.score >= record.threshold else "good")
        assert record.latency_ms > 0 and record.inspect_ms > 0
    defects = sum(1 for p in truth.parts if p.truth == "defect")
    confusion = summary.confusion
    assert summary.defects_on_conveyor == defects == confusion.defects_found + confusion.defects_missed
    assert confusion.false_alarms + confusion.good_passed == 6 - defects
    assert confusion.accuracy == pytest.approx((confusion.defects_found + confusion.good_passed) / 6)
    assert summary.results_received >= 6 and summary.precision == "INT8"
    assert summary.latency.p50_ms > 0 and summary.latency.mean_ms > 0
    # One overlay JPEG per part, named for the part, its verdict and its truth.
    overlays = sorted((out / "overlays").iterdir())
    assert summary.overlays_saved == len(overlays) == 6
    for record, overlay in zip(summary.parts, overlays, strict=True):
        assert Path(record.overlay) == overlay and overlay.read_bytes()[:2] == b"\xff\xd8"
        assert overlay.name.startswith(f"{record.index:03d}_{record.verdict}_truth-{record.truth}")
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(asdict(summary)))
    assert printed.count("latency") >= 6 and "== summary" in printed
    # The keys stay in the demo folder; the broker is gone; the service ended cleanly.
    assert (out / "keys" / "demo.pem").is_file()
    port = yaml.safe_load((out / "device" / "config.yaml").read_text())["mqtt"]["port"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "edge service stopped (exit code 0)" in printed
    assert "Traceback" not in (out / "device" / "service.log").read_text()
    assert summary.gate_auroc is not None and summary.gate_auroc_fp32 is not None

    # Again: the trained run is reused, and nothing of the first stream (outbox, overlays) comes back.
    again = run_demo(options)
    printed = capsys.readouterr().out
    assert "reusing the finished run" in printed and again.model_version != summary.model_version
    assert again.parts_inspected == 6 and {r.part_id for r in again.parts}.isdisjoint(r.part_id for r in summary.parts)
    assert len(list((out / "overlays").iterdir())) == 6


def test_data_choice_prefers_the_real_set_and_otherwise_makes_synthetic_parts(tmp_path, synthetic_set):
    real = choose_data(synthetic_set, False, tmp_path / "made", TINY_PARTS)
    assert (real.kind, real.root) == ("real", synthetic_set) and not (tmp_path / "made").exists()
    made = choose_data(tmp_path / "missing", False, tmp_path / "made", TINY_PARTS)
    assert made.kind == "synthetic" and "SYNTHETIC" in made.description and "missing not found" in made.description
    assert len(list_test_samples(made.root)) == 3 + 2 * 2
    forced = choose_data(synthetic_set, True, tmp_path / "forced", TINY_PARTS)
    assert forced.kind == "synthetic" and "--synthetic" in forced.description


def test_conveyor_mixes_good_and_defective_parts_in_a_fixed_order_with_a_truth_file(tmp_path, synthetic_set):
    samples = list_test_samples(synthetic_set)
    chosen = choose_parts(samples, 6, seed=1)
    assert chosen == choose_parts(samples, 6, seed=1) and chosen != choose_parts(samples, 6, seed=2)
    assert sum(1 for s in chosen if not s.is_defect) == 3
    assert {s.defect_type for s in chosen if s.is_defect} == {"scratch", "spot"}
    conveyor = write_conveyor(chosen, tmp_path / "conveyor", 2.5, (96, 80))
    assert conveyor.fps == Fraction(5, 2) and "framerate=5/2" in conveyor.source_pipeline()
    assert load_truth(tmp_path / "conveyor") == conveyor
    for part, sample in zip(conveyor.parts, chosen, strict=True):
        assert read_image(tmp_path / "conveyor" / part.frame).shape == (80, 96)
        assert part.truth == ("defect" if sample.is_defect else "good") and part.source == str(sample.path)
    # Frame k of the looping stream has pts k / fps: it shows part k modulo the number of parts.
    assert [conveyor.part_at(k / 2.5).index for k in range(14)] == [k % 6 for k in range(14)]
    assert conveyor.part_at(None) is None


def test_conveyor_stream_timestamps_lead_back_to_the_part_each_frame_shows(tmp_path, synthetic_set):
    from edge_runtime.service.frames import FrameSource

    conveyor = write_conveyor(choose_parts(list_test_samples(synthetic_set), 4, 0), tmp_path / "c", 10.0, (96, 80))
    source = FrameSource(conveyor.source_pipeline(), "gray", 3.0, (0.2, 1.0), lambda event: None)
    source.start()
    frames = []
    try:
        while len(frames) < 10:  # more than two passes of the loop
            frame = source.take(timeout=5.0)
            assert frame is not None, "the conveyor stream delivered no frame"
            frames.append(frame)
    finally:
        source.stop()
    assert frames[-1].pts_s > 4 / 10.0, "the stream did not loop"
    for frame in frames:
        part = conveyor.part_at(frame.pts_s)
        assert np.array_equal(frame.image, read_image(tmp_path / "c" / part.frame)), f"pts {frame.pts_s}"


def test_matcher_pairs_each_result_with_its_heatmap_and_counts_later_passes_as_repeats(tmp_path, synthetic_set):
    conveyor = write_conveyor(choose_parts(list_test_samples(synthetic_set), 3, 0), tmp_path / "c", 2.0, (64, 64))
    topics = Topics("demo", "cam")
    matcher = PartMatcher(conveyor, topics, tmp_path / "overlays")

    def result(part_id: str, pts: float | None, verdict: str = "good") -> Message:
        body = {"part_id": part_id, "verdict": verdict, "score": 0.5, "threshold": 1.0, "latency_ms": 9.0}
        body |= {"inspect_ms": 8.0, "frame": {"pts_s": pts}, "defects": []}
        return Message(topics.result, json.dumps(body).encode())

    def heatmap(part_id: str) -> Message:
        return Message(topics.heatmap(part_id), b"\xff\xd8 jpeg of " + part_id.encode())

    assert matcher.add(Message(topics.status, b'{"state": "running", "model_version": "1"}')) is None
    assert matcher.add(heatmap("p1")) is None  # the heatmap may come first
    first = matcher.add(result("p1", 0.5, "defect"))
    assert first is not None and first.index == 1 and first.part_id == "p1"
    assert Path(first.overlay).read_bytes() == b"\xff\xd8 jpeg of p1"
    assert matcher.add(result("p2", 0.0)) is None and matcher.add(heatmap("p2")).index == 0
    assert matcher.add(result("p4", 1.5)) is None and matcher.add(heatmap("p4")) is None  # part 0, next pass
    assert matcher.add(result("p5", None)) is None and matcher.add(heatmap("p5")) is None
    assert (matcher.repeats, matcher.unplaced, matcher.results_received) == (1, 1, 4)
    assert not matcher.complete() and matcher.missing() == [2]
    assert matcher.status == "running"


def test_summary_figures_of_an_empty_stream_are_none_not_zero():
    assert Confusion.of([]).accuracy is None
    assert LatencyStats.of([]) == LatencyStats(None, None, None)
    assert LatencyStats.of([3.0, 1.0, 2.0]) == LatencyStats(2.0, 2.0, 3.0)


def test_bad_demo_inputs_are_named(tmp_path, synthetic_set, capsys, tiny_training_yaml):
    samples = list_test_samples(synthetic_set)
    with pytest.raises(ValueError, match="at least 2 parts"):
        choose_parts(samples, 1, 0)
    with pytest.raises(ValueError, match="both good and defective"):
        choose_parts([s for s in samples if s.is_defect], 4, 0)
    with pytest.raises(ValueError, match="frame rate must be in"):
        frame_rate(0)
    with pytest.raises(FileNotFoundError, match="truth file not found"):
        load_truth(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "d"), "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    config = tiny_training_yaml
    # Checked before any training starts: nothing is written.
    for flags, reason in [(["--parts", "1"], "at least 2 parts"), (["--fps", "0"], "frame rate must be in")]:
        assert main(["demo", "--out", str(tmp_path / "d"), "--config", str(config), *flags]) == 2
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
