"""Tests for train_host.metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from train_host.metrics import (
    F1Result,
    RocCurve,
    aupro,
    auroc,
    best_f1,
    f1_at_threshold,
    operating_point,
    pixel_auroc,
    roc_curve,
)


def _pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Brute-force reference: P(pos > neg) + 0.5 * P(pos == neg) over all pairs."""
    pos = scores[labels.astype(bool)][:, None]
    neg = scores[~labels.astype(bool)][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


# --------------------------------------------------------------------------- #
# auroc
# --------------------------------------------------------------------------- #


def test_auroc_perfect_separation() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0


def test_auroc_reversed() -> None:
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0


def test_auroc_with_ties_hand_computed() -> None:
    # Pairs (pos, neg), tie = 1/2:
    #   0.4 vs 0.1 -> 1, 0.4 vs 0.4 -> 0.5, 0.8 vs 0.1 -> 1, 0.8 vs 0.4 -> 1
    #   U = 3.5, n_pos * n_neg = 4 -> 0.875
    scores = np.array([0.1, 0.4, 0.4, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == pytest.approx(0.875, abs=1e-12)
    assert auroc(scores, labels.astype(bool)) == pytest.approx(0.875, abs=1e-12)


def test_auroc_all_tied_is_half() -> None:
    assert auroc(np.full(5, 0.3), np.array([0, 1, 0, 1, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("pos_fraction", [0.2, 0.8])  # exercises both search directions
def test_auroc_matches_pairwise_reference_with_ties(pos_fraction: float) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < pos_fraction
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding creates many ties
    assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("labels", [np.zeros(4, dtype=int), np.ones(4, dtype=bool)])
def test_auroc_one_class_raises(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="only one class"):
        auroc(np.array([0.1, 0.2, 0.3, 0.4]), labels)


def test_auroc_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))


def test_auroc_nan_raises() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))


def test_auroc_non_binary_labels_raise() -> None:
    with pytest.raises(ValueError, match="0/1"):
        auroc(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]))


# --------------------------------------------------------------------------- #
# roc_curve
# --------------------------------------------------------------------------- #


def test_roc_curve_hand_computed() -> None:
    # Descending: 0.8(+), 0.4(+), 0.4(-), 0.1(-); P = N = 2.
    #   t=inf: tp=0 fp=0 -> (0, 0)
    #   t=0.8: tp=1 fp=0 -> (0, 0.5)
    #   t=0.4: tp=2 fp=1 -> (0.5, 1)   both tied 0.4 samples flip together
    #   t=0.1: tp=2 fp=2 -> (1, 1)
    curve = roc_curve(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1]))
    assert isinstance(curve, RocCurve)
    np.testing.assert_allclose(curve.fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve.tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.8, 0.4, 0.1])
    # Trapezoid area of this curve is the tie-aware AUROC: 0.25*... = 0.875
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(0.875)


def test_roc_curve_endpoints_and_monotone() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.normal(size=200) + labels, 1)
    curve = roc_curve(scores, labels)
    assert (curve.fpr[0], curve.tpr[0]) == (0.0, 0.0)
    assert (curve.fpr[-1], curve.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve.fpr) >= 0)
    assert np.all(np.diff(curve.tpr) >= 0)
    assert curve.thresholds[0] == np.inf
    assert np.all(np.diff(curve.thresholds) < 0)
    assert len(curve.fpr) == len(curve.tpr) == len(curve.thresholds)
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)


def test_roc_curve_points_match_thresholds() -> None:
    rng = np.random.default_rng(2)
    labels = rng.random(50) < 0.5
    scores = np.round(rng.random(50), 1)
    curve = roc_curve(scores, labels)
    for fpr, tpr, t in zip(curve.fpr[1:], curve.tpr[1:], curve.thresholds[1:], strict=True):
        predicted = scores >= t
        assert tpr == pytest.approx(np.sum(predicted & labels) / labels.sum())
        assert fpr == pytest.approx(np.sum(predicted & ~labels) / (~labels).sum())


# --------------------------------------------------------------------------- #
# pixel_auroc
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("defect_fraction", [0.1, 0.9])
def test_pixel_auroc_equals_flattened_auroc(defect_fraction: float) -> None:
    rng = np.random.default_rng(3)
    masks = np.where(rng.random((4, 16, 16)) < defect_fraction, 255, 0).astype(np.uint8)
    maps = rng.random((4, 16, 16)) + 0.2 * (masks > 0)
    expected = auroc(maps.ravel(), (masks > 0).ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(maps, masks > 0) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(maps.astype(np.float32), masks) == pytest.approx(expected, abs=1e-6)


def test_pixel_auroc_with_ties_matches_pairwise() -> None:
    rng = np.random.default_rng(4)
    masks = rng.random((2, 12, 12)) < 0.3
    maps = np.round(rng.random((2, 12, 12)) + 0.3 * masks, 1).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(_pairwise_auroc(maps.ravel(), masks.ravel()), abs=1e-12)


def test_pixel_auroc_errors() -> None:
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    maps = np.zeros((1, 2, 2))
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(maps, np.array([[[1, 0], [0, 0]]]))


# --------------------------------------------------------------------------- #
# aupro
# --------------------------------------------------------------------------- #


def test_aupro_perfect_map_is_one() -> None:
    masks = np.zeros((3, 32, 32), dtype=np.uint8)
    masks[0, 2:6, 2:6] = 255
    masks[0, 20:30, 10:25] = 255
    masks[1, 15:16, 15:17] = 255  # image 2 stays empty: only good pixels
    maps = (masks > 0).astype(np.float32)
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-3)


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((1, 32, 32), dtype=bool)
    masks[0, 2:4, 2:4] = True  # small region: 4 px
    masks[0, 12:28, 12:28] = True  # big region: 256 px
    maps = np.zeros((1, 32, 32))
    maps[0, 2:4, 2:4] = 1.0
    return maps, masks


def test_aupro_detects_only_small_region_is_half() -> None:
    # Small region at 1.0 (always found), big region at 0.0 (below every good
    # pixel, so never found while FPR < 1), good pixels spread over [0.2, 0.6]:
    # every threshold in (0, 1] gives PRO = (1 + 0) / 2 = 0.5 while FPR sweeps
    # 0 -> 1, so the curve is flat at 0.5 on [0, 0.3] and AUPRO = 0.5.
    maps, masks = _two_region_case()
    rng = np.random.default_rng(5)
    good = ~masks
    maps[good] = rng.uniform(0.2, 0.6, size=int(good.sum()))
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-6)


def test_aupro_tied_background_interpolates_linearly() -> None:
    # Same regions, but good pixels tie with the big region at 0.0. Then the
    # only operating points are (FPR, PRO) = (0, 0), (0, 0.5) [t in (0, 1]] and
    # (1, 1) [t = 0]; as in the MVTec reference the tie is a straight line:
    #   PRO(0.3) = 0.5 + 0.5 * 0.3 = 0.65
    #   area = 0.3 * (0.5 + 0.65) / 2 = 0.1725, normalised 0.1725 / 0.3 = 0.575
    maps, masks = _two_region_case()
    assert aupro(maps, masks) == pytest.approx(0.575, abs=1e-9)


def test_aupro_regions_use_8_connectivity() -> None:
    # (1,1) and (2,2) touch diagonally: one region under 8-connectivity.
    # Map finds (1,1) and the separate pixel (10,10) but not (2,2):
    #   8-conn: PRO = mean(1/2, 1) = 0.75   (4-conn would give mean(1, 0, 1) = 2/3)
    masks = np.zeros((1, 16, 16), dtype=np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 10, 10] = 1
    rng = np.random.default_rng(6)
    maps = rng.uniform(0.2, 0.6, size=(1, 16, 16))
    maps[0, 1, 1] = maps[0, 10, 10] = 1.0
    maps[0, 2, 2] = 0.0
    assert aupro(maps, masks) == pytest.approx(0.75, abs=1e-6)


def test_aupro_empty_mask_images_count_as_good_pixels() -> None:
    # Image 0: 4x4 region (16 px) found perfectly, 1008 good px at 0.
    # Image 1: empty mask, all 1024 px at 1.0 -> false positives for every t in (0, 1].
    # Points: (0, 0), (f, 1) with f = 1024 / 2032 for t in (0, 1], and (1, 1).
    # PRO(0.3) = 0.3 / f, area = 0.3 * PRO(0.3) / 2, normalised = 0.15 / f.
    masks = np.zeros((2, 32, 32), dtype=np.uint8)
    masks[0, 5:9, 5:9] = 1
    maps = masks.astype(np.float64)
    maps[1] = 1.0
    f = 1024 / 2032
    assert aupro(maps, masks) == pytest.approx(0.15 / f, abs=1e-9)


def test_aupro_random_noise_is_about_chance() -> None:
    # Noise: PRO(t) ~ FPR(t), area under the diagonal up to 0.3 is 0.045 -> 0.15.
    rng = np.random.default_rng(7)
    masks = np.zeros((20, 64, 64), dtype=np.uint8)
    for i in range(20):
        y, x = rng.integers(0, 48, size=2)
        h, w = rng.integers(3, 16, size=2)
        masks[i, y : y + h, x : x + w] = 255
    maps = rng.random((20, 64, 64)).astype(np.float32)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.15, abs=0.05)


def test_aupro_all_empty_masks_raise() -> None:
    with pytest.raises(ValueError, match="no defect region"):
        aupro(np.random.default_rng(8).random((3, 8, 8)), np.zeros((3, 8, 8), dtype=bool))


def test_aupro_argument_errors() -> None:
    maps = np.zeros((1, 8, 8))
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 2, 2] = True
    with pytest.raises(ValueError, match="same shape"):
        aupro(maps, masks[:, :4])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="N, H, W"):
        aupro(maps[0], masks[0])


def _slow_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """The protocol written out: every distinct value a threshold, regions from scipy, segments clipped."""
    eight = np.ones((3, 3), dtype=int)
    regions = []
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask != 0, structure=eight)
        regions += [(index, labelled == region) for region in range(1, count + 1)]
    good = masks == 0
    points = [(0.0, 0.0)]
    for threshold in sorted(np.unique(maps), reverse=True):
        above = maps >= threshold
        fpr = np.count_nonzero(above & good) / np.count_nonzero(good)
        pro = np.mean([np.count_nonzero(above[i] & region) / np.count_nonzero(region) for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # the segment crosses the limit: cut it there
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / fpr_limit


def _random_regions(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for image in range(count - 1):  # the last image stays defect-free
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, size - 4, size=2)
            h, w = rng.integers(1, 8, size=2)
            masks[image, y : y + h, x : x + w] = 255
    return masks


@pytest.mark.parametrize(
    ("seed", "decimals", "fpr_limit"), [(10, None, 0.3), (11, 2, 0.3), (12, 1, 0.3), (13, 3, 0.05)]
)
def test_aupro_matches_the_protocol_written_out(seed: int, decimals: int | None, fpr_limit: float) -> None:
    # Maps that partly follow the masks, continuous or rounded (many ties between good and defect pixels).
    rng = np.random.default_rng(seed)
    masks = _random_regions(rng, 5, 24)
    maps = rng.random(masks.shape) + 0.6 * (masks > 0) * rng.random(masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    expected = _slow_aupro(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)
    assert aupro(maps.astype(np.float32), masks, fpr_limit=fpr_limit) == pytest.approx(
        _slow_aupro(maps.astype(np.float32), masks, fpr_limit), abs=1e-9
    )


def test_aupro_is_exact_where_a_threshold_grid_is_not() -> None:
    # One region whose pixels lie in a narrow band just above most good pixels: a grid of thresholds over the
    # whole value range misses the steep rise that the exact curve has.
    rng = np.random.default_rng(14)
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 8:20, 8:20] = True
    maps = rng.random(masks.shape)
    maps[masks] = 0.9 + 0.001 * rng.random(int(masks.sum()))
    maps[1, 0, 0] = 1000.0  # one outlier stretches the value range
    assert aupro(maps, masks) == pytest.approx(_slow_aupro(maps, masks, 0.3), abs=1e-9)
    assert aupro(maps, masks) > 0.6


@pytest.mark.parametrize("seed", [20, 21])
def test_image_and_pixel_auroc_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(80) < 0.4
    scores = np.round(rng.random(80) + 0.5 * labels, 2)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    masks = _random_regions(rng, 6, 20)
    maps = np.round(rng.random(masks.shape) + 0.4 * (masks > 0), 2).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel() > 0, maps.ravel()), abs=1e-9)


# --------------------------------------------------------------------------- #
# Operating point
# --------------------------------------------------------------------------- #


def test_operating_point_counts_at_the_threshold() -> None:
    # Defects 0.9, 0.7, 0.3 -> two at or above 0.7; goods 0.8, 0.7, 0.2, 0.1 -> two false alarms (ties count).
    scores = np.array([0.9, 0.8, 0.7, 0.7, 0.3, 0.2, 0.1])
    labels = np.array([1, 0, 1, 0, 1, 0, 0])
    point = operating_point(scores, labels, 0.7)
    assert (point.defects, point.defects_found, point.goods, point.false_alarms) == (3, 2, 4, 2)
    assert point.recall == pytest.approx(2 / 3) and point.false_alarm_rate == pytest.approx(0.5)
    assert point.recall == pytest.approx(f1_at_threshold(scores, labels, 0.7).recall)
    with pytest.raises(ValueError, match="only one class"):
        operating_point(scores[labels == 0], labels[labels == 0], 0.5)


# --------------------------------------------------------------------------- #
# F1
# --------------------------------------------------------------------------- #

_F1_SCORES = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
_F1_LABELS = np.array([1, 0, 1, 1, 0, 0])


def test_f1_at_threshold_hand_computed() -> None:
    # t = 0.5: predicted {0.9, 0.8, 0.7} -> tp=2 (0.9, 0.7), fp=1 (0.8), fn=1 (0.3)
    #   precision = recall = f1 = 2/3
    result = f1_at_threshold(_F1_SCORES, _F1_LABELS, 0.5)
    assert isinstance(result, F1Result)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(2 / 3)
    assert result.threshold == 0.5
    # t = 0.8 (inclusive): predicted {0.9, 0.8} -> tp=1 fp=1 fn=2
    #   precision 1/2, recall 1/3, f1 = 2 * (1/6) / (5/6) = 0.4
    result = f1_at_threshold(_F1_SCORES, _F1_LABELS, 0.8)
    assert (result.precision, result.recall) == pytest.approx((0.5, 1 / 3))
    assert result.f1 == pytest.approx(0.4)


def test_f1_at_threshold_undefined_is_zero() -> None:
    result = f1_at_threshold(_F1_SCORES, _F1_LABELS, 5.0)  # nothing predicted
    assert (result.precision, result.recall, result.f1) == (0.0, 0.0, 0.0)
    result = f1_at_threshold(_F1_SCORES, np.zeros(6, dtype=int), 0.0)  # no positives
    assert (result.precision, result.recall, result.f1) == (0.0, 0.0, 0.0)


def test_best_f1_hand_computed() -> None:
    # Candidate thresholds, f1 = 2tp / (2tp + fp + fn):
    #   0.9: tp1 fp0 fn2 -> 0.5      0.3: tp3 fp1 fn0 -> 6/7 (best)
    #   0.8: tp1 fp1 fn2 -> 0.4      0.2: tp3 fp2 fn0 -> 0.75
    #   0.7: tp2 fp1 fn1 -> 2/3      0.1: tp3 fp3 fn0 -> 2/3
    result = best_f1(_F1_SCORES, _F1_LABELS)
    assert result.threshold == pytest.approx(0.3)
    assert result.precision == pytest.approx(0.75)
    assert result.recall == pytest.approx(1.0)
    assert result.f1 == pytest.approx(6 / 7)
    assert result == f1_at_threshold(_F1_SCORES, _F1_LABELS, result.threshold)


def test_best_f1_beats_every_score_threshold_with_ties() -> None:
    rng = np.random.default_rng(9)
    labels = rng.random(80) < 0.4
    scores = np.round(rng.random(80) + 0.4 * labels, 1)
    best = best_f1(scores, labels)
    all_f1 = [f1_at_threshold(scores, labels, t).f1 for t in np.unique(scores)]
    assert best.f1 == pytest.approx(max(all_f1))
    assert best.threshold in scores
