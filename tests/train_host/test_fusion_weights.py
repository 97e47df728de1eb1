import numpy as np
import pytest

from edge_runtime.anomaly_map import MapStats
from edge_runtime.results import RawMaps
from train_host.fusion_weights import candidate_weights, choose_map_weights, fusion_quality

SIZE = (32, 32)


def raw(maps: dict[str, np.ndarray]) -> RawMaps:
    return RawMaps(severity_distance=0.0, severity_bin=0, timestep=0, steps=0, maps=maps, healed_image=None)


def test_candidates_start_with_the_configured_weights_and_never_revive_an_unused_map():
    configured = {"latent": 0.85, "feature": 0.15, "knn": 0.0}
    candidates = candidate_weights(configured)
    assert candidates[0] == configured
    assert all(c["knn"] == 0.0 for c in candidates)
    assert {"latent": 0.0, "feature": 0.3, "knn": 0.0} in candidates
    assert len(candidates) == 4 * 4 - 1


def test_a_map_that_only_adds_noise_is_dropped_and_the_informative_one_kept():
    rng = np.random.default_rng(0)
    masks = np.zeros((24, *SIZE), bool)
    masks[:, 10:16, 12:18] = True

    def maps(defect: np.ndarray | None) -> dict[str, np.ndarray]:
        knn = rng.normal(0, 1, SIZE).astype(np.float32)
        if defect is not None:
            knn[defect] += 4.0
        return {"knn": knn, "latent": rng.normal(0, 3, SIZE).astype(np.float32)}

    good = [raw(maps(None)) for _ in range(24)]
    defective = [raw(maps(mask)) for mask in masks]
    stats = {"knn": MapStats((0.0,), (1.0,), 0), "latent": MapStats((0.0,), (1.0,), 0)}
    configured = {"latent": 1.0, "knn": 1.0}
    weights, quality = choose_map_weights(good, defective, masks, stats, configured, 1.0, 0.0, 0, "sum")
    assert weights["latent"] == 0.0 and weights["knn"] > 0.0
    assert quality > 1.9  # both AUROCs near 1 once the noise is gone


def test_the_configured_weights_stay_when_no_candidate_is_surely_better():
    rng = np.random.default_rng(1)
    masks = np.zeros((30, *SIZE), bool)
    masks[:, 8:14, 8:14] = True

    def maps(defect: np.ndarray | None) -> dict[str, np.ndarray]:
        # Two maps that see the defect equally well: any reweighting only reshuffles the noise.
        out = {kind: rng.normal(0, 1, SIZE).astype(np.float32) for kind in ("knn", "latent")}
        if defect is not None:
            for kind in out:
                out[kind][defect] += 0.6
        return out

    good = [raw(maps(None)) for _ in range(30)]
    defective = [raw(maps(mask)) for mask in masks]
    stats = {"knn": MapStats((0.0,), (1.0,), 0), "latent": MapStats((0.0,), (1.0,), 0)}
    configured = {"latent": 1.0, "knn": 1.0}
    qualities = [
        fusion_quality(good, defective, masks, stats, w, 1.0, 0.0, np.arange(masks.size), "sum")
        for w in candidate_weights(configured)
    ]
    assert max(qualities) > qualities[0]  # some candidate scores higher by chance on this set...
    weights, _ = choose_map_weights(good, defective, masks, stats, configured, 1.0, 0.0, 0, "sum")
    assert weights == configured  # ...but not surely, so the configured weights stay


def test_defects_and_goods_must_come_in_pairs():
    good = [raw({"knn": np.zeros(SIZE, np.float32)})] * 3
    masks = np.ones((2, *SIZE), bool)
    with pytest.raises(ValueError, match="2 synthetic defects for 3 good images"):
        stats = {"knn": MapStats((0.0,), (1.0,), 0)}
        choose_map_weights(good, good[:2], masks, stats, {"knn": 1.0}, 1.0, 0.0, 0, "sum")


def test_calibration_keeps_the_configured_weights_unless_asked_to_choose(tiny_run):
    import torch

    from train_host.calibrate import fit_calibration
    from train_host.config import CalibrationConfig
    from train_host.run_store import build_pipeline, load_run

    run = load_run(tiny_run)
    pipeline = build_pipeline(run, run.config.inspection, torch.device("cpu"))
    images = run.holdout_images()
    configured = run.config.inspection.map_weights.as_dict()
    assert fit_calibration(pipeline, images, CalibrationConfig(), 0).map_weights == configured
    chosen = fit_calibration(pipeline, images, CalibrationConfig(choose_map_weights=True), 0).map_weights
    assert chosen in candidate_weights(configured)
