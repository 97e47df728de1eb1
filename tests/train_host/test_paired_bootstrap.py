"""The gate's confidence bounds: exact AUROC on unit weights, zero width for an unchanged network, a wide bound
for one that reorders the scores of a small set."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from train_host.paired_bootstrap import PIXEL_BINS, count_per_image, drop_upper_bounds, weighted_auroc


def gate_measurement(seed: int, noise: float, base: np.ndarray | None = None):
    rng = np.random.default_rng(seed)
    labels = np.array([False] * 30 + [True] * 30)
    scores = rng.normal(labels * 1.0, 1.0) if base is None else base + rng.normal(0.0, noise, base.shape)
    masks = np.zeros((60, 16, 16), dtype=bool)
    masks[30:, 4:9, 4:9] = True
    maps = rng.normal(0.0, 1.0, masks.shape) + 2.0 * masks
    return scores, labels, maps, masks


def test_unit_weights_give_the_exact_auroc_with_ties():
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.3, 0.4, 0.9, 0.2])
    labels = np.array([False, False, True, True, False, True, True, False])
    counts = count_per_image(scores, labels, np.zeros((8, 2, 2)), np.zeros((8, 2, 2), bool), np.ones(8, bool))
    ones = np.ones((1, 8))
    auroc = weighted_auroc(ones @ counts.score_defect, ones @ counts.score_good)[0]
    assert auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert counts.pixel_defect is None, "no defect pixel: no pixel figure"


def test_binned_pixel_auroc_is_close_to_the_exact_one():
    scores, labels, maps, masks = gate_measurement(0, 0.0)
    counts = count_per_image(scores, labels, maps, masks, np.ones(60, bool))
    assert counts.pixel_defect is not None and counts.pixel_defect.shape == (60, PIXEL_BINS)
    ones = np.ones((1, 60))
    binned = weighted_auroc(ones @ counts.pixel_defect, ones @ counts.pixel_good)[0]
    assert binned == pytest.approx(roc_auc_score(masks.reshape(-1), maps.reshape(-1)), abs=2e-3)


def test_an_unchanged_network_has_no_width_and_a_reordering_one_a_wide_bound():
    scores, labels, maps, masks = gate_measurement(1, 0.0)
    known = np.ones(60, bool)
    baseline = count_per_image(scores, labels, maps, masks, known)
    assert drop_upper_bounds(baseline, baseline) == (0.0, 0.0)
    slightly = count_per_image(scores + 1e-3 * np.arange(60) % 7e-3, labels, maps, masks, known)
    reordered = count_per_image(
        gate_measurement(2, 0.8, scores)[0],
        labels,
        maps + 0.5 * np.random.default_rng(3).normal(size=maps.shape),
        masks,
        known,
    )
    small_image, _ = drop_upper_bounds(baseline, slightly)
    wide_image, wide_pixel = drop_upper_bounds(baseline, reordered)
    assert small_image < 0.01 < wide_image
    assert wide_pixel is not None and wide_pixel > 0.01
    # The bound is above the drop measured on the whole set.
    ones = np.ones((1, 60))
    drop = (
        weighted_auroc(ones @ baseline.score_defect, ones @ baseline.score_good)
        - weighted_auroc(ones @ reordered.score_defect, ones @ reordered.score_good)
    )[0]
    assert wide_image > drop
