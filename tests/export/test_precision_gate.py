"""The precision gate on the tiny run: its gate set, its three figures, its decisions, its record."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime.openvino_networks import NETWORK_NAMES
from export.__main__ import main as export_main
from export.builder import ExportOptions, build_variants
from export.precision_gate import (
    FALLBACK_ORDER,
    Allowances,
    GateEvaluator,
    GateFigures,
    GateLog,
    build_gate_set,
    choose_precisions,
    judge,
    measure,
)
from train_host.__main__ import main as train_host_main
from train_host.dataset import load_image
from train_host.run_store import build_pipeline, load_run
from train_host.synthetic_defects import make_synthetic_defects


def check_trial_decisions(trials: list[dict], baseline: dict, allowances: dict) -> None:
    """Every logged trial carries all three figures, its drops from them, the upper bounds of the two AUROC
    drops, and the decision they imply."""
    for trial in trials:
        for name in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= trial[name] <= 1.0
            assert trial["drops"][name] == pytest.approx(baseline[name] - trial[name], abs=1e-12)
        bounds = trial["drop_upper_bounds"]
        assert bounds["aupro"] is None and all(-1.0 <= bounds[n] <= 1.0 for n in ("image_auroc", "pixel_auroc"))
        share = allowances["measured_share"]
        within = all(
            trial["drops"][name] <= allowances[name] * share for name in ("image_auroc", "pixel_auroc", "aupro")
        )
        bounded = all(bounds[name] <= allowances[name] for name in ("image_auroc", "pixel_auroc"))
        assert trial["accepted"] == (within and bounded)


def first_accepted(trials: list[dict], network: str) -> str:
    return next((t["precision"] for t in trials if t["network"] == network and t["accepted"]), "fp32")


def test_bundle_report_holds_every_trial_with_all_three_figures(bundle, tiny_run):
    out, manifest = bundle
    report = json.loads(out.with_suffix(".export.json").read_text())
    holdout = len(load_run(tiny_run).holdout)
    # The conftest bundle takes 2 test images per type: good, blowhole, crack, all with masks; by default three
    # synthetic defects are made from each held-out good.
    assert report["gate_set"] == {
        "held_out_goods": holdout,
        "synthetic_defects": 3 * holdout,
        "test_images": 6,
        "test_images_with_pixel_truth": 6,
    }
    assert report["allowances"] == {"image_auroc": 0.01, "pixel_auroc": 0.01, "aupro": 0.01, "measured_share": 0.5}
    baseline = report["gate_baseline"]
    assert all(0.0 <= baseline[name] <= 1.0 for name in ("image_auroc", "pixel_auroc", "aupro"))
    assert report["gate_baseline_auroc"] == baseline["image_auroc"]
    # Each network tries INT8, then FP16 if INT8 is rejected: between 5 and 10 trials.
    assert len(NETWORK_NAMES) <= len(report["trials"]) <= 2 * len(NETWORK_NAMES)
    check_trial_decisions(report["trials"], baseline, report["allowances"])
    for name in NETWORK_NAMES:
        assert report["precisions"][name] == manifest.networks[name].precision == first_accepted(report["trials"], name)


def test_a_heatmap_drop_rejects_what_the_image_score_would_keep():
    baseline = GateFigures(image_auroc=0.90, pixel_auroc=0.95, aupro=0.80)
    heatmap_worse = GateFigures(image_auroc=0.91, pixel_auroc=0.93, aupro=0.80)
    drops, accepted = judge(baseline, heatmap_worse, Allowances())
    assert drops.image_auroc == pytest.approx(-0.01) and drops.pixel_auroc == pytest.approx(0.02)
    assert not accepted
    assert judge(baseline, heatmap_worse, Allowances(pixel_auroc=0.05))[1]
    assert not judge(baseline, GateFigures(0.90, 0.95, 0.785), Allowances())[1]
    assert not judge(baseline, GateFigures(0.885, 0.95, 0.80), Allowances())[1]
    # A drop within its share of the allowance whose upper confidence bound exceeds the allowance is rejected.
    level = GateFigures(0.897, 0.95, 0.80)
    assert judge(baseline, level, Allowances())[1]
    assert not judge(baseline, level, Allowances(), bounds=GateFigures(0.02, 0.0, None))[1]
    assert judge(baseline, level, Allowances(), bounds=GateFigures(0.009, 0.0, None))[1]
    # A figure the gate set cannot give is not judged.
    assert judge(GateFigures(0.9, None, None), GateFigures(0.897, None, None), Allowances())[1]
    # A measured drop must leave room for the difference between the gate set and the line's images.
    closer = GateFigures(0.893, 0.95, 0.80)
    assert not judge(baseline, closer, Allowances(), bounds=GateFigures(0.009, 0.0, None))[1]
    assert judge(baseline, closer, Allowances(measured_share=1.0), bounds=GateFigures(0.009, 0.0, None))[1]
    with pytest.raises(ValueError, match="aupro drop must be within"):
        Allowances(aupro=-0.1)


@pytest.fixture(scope="module")
def variants(tiny_run, tmp_path_factory):
    run = load_run(tiny_run)
    data = run.config.data
    fit = [Path(p) for p in json.loads(run.paths.split.read_text())["fit"][:8]]
    calibration_images = np.stack([load_image(p, data.image_size, data.color) for p in fit])
    return build_variants(run, tmp_path_factory.mktemp("ir"), FALLBACK_ORDER, calibration_images)


@pytest.fixture(scope="module")
def gate(tiny_run) -> GateEvaluator:
    run = load_run(tiny_run)
    holdout = run.holdout_images()
    return GateEvaluator(run, holdout, build_gate_set(holdout, run.config.data, 2, run.config.seed))


def test_gate_decisions_follow_the_allowances(variants, gate):
    loose = GateLog()
    chosen, drops = choose_precisions(variants, gate, Allowances(1.0, 1.0, 1.0), loose)
    assert chosen == {name: "int8" for name in NETWORK_NAMES}
    assert [t.network for t in loose.trials] == list(NETWORK_NAMES)
    assert drops["decoder"] == pytest.approx(loose.trials[-1].drops.image_auroc)
    # With no drop allowed at all, whatever is kept did not lose on any of the three figures.
    strict = GateLog()
    chosen, _ = choose_precisions(variants, gate, Allowances(0.0, 0.0, 0.0), strict)
    body = strict.to_dict()
    check_trial_decisions(body["trials"], body["gate_baseline"], body["allowances"])
    for name in NETWORK_NAMES:
        assert chosen[name] == first_accepted(body["trials"], name)
    # The same mix measures the same: the gate is steady from one trial to the next.
    assert strict.baseline == loose.baseline


def test_networks_no_frame_runs_stay_in_fp16_unjudged(variants, tiny_run):
    """Without the feature map no frame runs the decoder or the map backbone: INT8 would pass the gate unjudged, so
    they stay in FP16 and the gate spends no trial on them."""
    run = load_run(tiny_run)
    run.calibration = replace(run.calibration, map_weights={"latent": 1.0, "feature": 0.0, "knn": 1.0})
    holdout = run.holdout_images()
    gate = GateEvaluator(run, holdout, build_gate_set(holdout, run.config.data, 1, run.config.seed))
    assert gate.frame_networks() == ["denoiser", "encoder", "knn_backbone"]
    log = GateLog()
    chosen, drops = choose_precisions(variants, gate, Allowances(1.0, 1.0, 1.0), log)
    assert chosen == {
        "knn_backbone": "int8",
        "encoder": "int8",
        "denoiser": "int8",
        "map_backbone": "fp16",
        "decoder": "fp16",
    }
    assert drops["map_backbone"] is drops["decoder"] is None and drops["denoiser"] is not None
    assert [t.network for t in log.trials] == ["knn_backbone", "encoder", "denoiser"]
    assert log.to_dict()["not_judged_off_frame"] == ["map_backbone", "decoder"]


def test_gate_set_of_a_set_without_masks(tiny_run, tiny_dataset, without_masks, tmp_path):
    run = load_run(tiny_run)
    holdout = run.holdout_images()
    bare = run.config.data.model_copy(update={"root": without_masks(tiny_dataset, tmp_path / "bare")})
    gate_set = build_gate_set(holdout, bare, 2, seed=5, defects_per_good=2)
    count = len(holdout)
    assert (gate_set.held_out_goods, gate_set.synthetic_defects) == (count, 2 * count)
    assert (gate_set.test_images, gate_set.test_images_with_pixel_truth) == (6, 2)
    assert gate_set.images.shape == (3 * count + 6, 1, 64, 64) and np.abs(gate_set.images).max() <= 1.0
    # Test images come type by type: blowhole, crack, good.
    assert list(gate_set.labels) == [False] * count + [True] * 2 * count + [True] * 4 + [False] * 2
    assert all(mask.any() for mask in gate_set.masks[count : 3 * count]) and not gate_set.masks[:count].any()
    assert list(gate_set.known[3 * count :]) == [False] * 4 + [True] * 2
    # The first copy is the one a single defect per good gives; the second is another kind on each good.
    first, _ = make_synthetic_defects(holdout, 5)
    assert np.array_equal(gate_set.images[count : 2 * count], first)
    assert not np.array_equal(gate_set.masks[count : 2 * count], gate_set.masks[2 * count : 3 * count])
    with pytest.raises(ValueError, match="defects_per_good must be at least 1, got 0"):
        build_gate_set(holdout, bare, 2, seed=5, defects_per_good=0)
    # Test defects without a mask add to the image figure only: the pixel figures equal those of the same
    # gate set without them.
    pipeline = build_pipeline(run, run.config.inspection, torch.device("cpu"))
    figures = measure(pipeline, run.calibration, gate_set).figures
    keep = gate_set.known
    masked_only = type(gate_set)(
        gate_set.images[keep], gate_set.labels[keep], gate_set.masks[keep], keep[keep], count, count, 2, 2
    )
    reference = measure(pipeline, run.calibration, masked_only).figures
    assert (figures.pixel_auroc, figures.aupro) == (reference.pixel_auroc, reference.aupro)
    assert figures.pixel_auroc is not None and 0.0 <= figures.image_auroc <= 1.0
    no_test = run.config.data.model_copy(update={"root": tmp_path / "only_train"})
    assert build_gate_set(holdout, no_test, 2, seed=5).test_images == 0


def test_bundle_evaluates_a_set_without_masks(bundle, keys, tiny_dataset, without_masks, tmp_path, capsys):
    root = without_masks(tiny_dataset, tmp_path / "bare")
    argv = ["evaluate", "--bundle", str(bundle[0]), "--trusted-key", str(keys[1]), "--data", str(root), "--tag", "t"]
    assert train_host_main(argv) == 0
    assert "| **all** | 6 | 3 |" in capsys.readouterr().out
    saved = json.loads((bundle[0].parent / f"{bundle[0].stem}-eval" / "t" / "metrics.json").read_text())
    assert saved["overall"]["pixel_auroc"] is None and saved["types_without_masks"] == ["blowhole", "crack"]


def test_allowances_are_checked_before_any_export(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main(["bundle", "--run", "r", "--out", "o.tar", "--sign-key", "k", "--model-version", "1",
                     "--max-pixel-auroc-drop", "2"])  # fmt: skip
    assert "--max-pixel-auroc-drop: must be within [0, 1], got 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pixel_auroc drop must be within"):
        ExportOptions(model_version="1", max_pixel_auroc_drop=-0.5)
