"""How sure a comparison on a small image set can be: a paired bootstrap over its images.

A difference in AUROC measured on a few dozen images is noisy. The precision gate keeps an INT8 network only when
the upper confidence bound of each drop is within its allowance as well, and the fusion-weight choice leaves the
configured weights only for a candidate whose gain has a positive lower bound. The images are resampled, the same
draw for both measurements, so a change that barely moves the scores gets a narrow bound however small the set is;
one that reorders them gets a wide one.

Written here because the figures are AUROCs over weighted counts, which vectorise over all resamples at once;
scikit-learn's resampling helpers would recompute every curve one resample at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95  # one-sided: the drop is within the bound in 95 of 100 draws of a gate set
RESAMPLES = 1000
PIXEL_BINS = 1024  # pixel values counted in quantile bins; the bound is approximate, the point drop stays exact


@dataclass(frozen=True)
class PerImageCounts:
    """One measurement of a gate set, as counts per image that a resample can reweight.

    `score_*` count each image's score at its rank among the set's distinct scores (one 1 per row);
    `pixel_*` count the defect and normal pixels of each image per bin of that measurement's map values
    (rows of images without pixel truth are zero)."""

    score_defect: np.ndarray  # N x K
    score_good: np.ndarray  # N x K
    pixel_defect: np.ndarray | None  # N x PIXEL_BINS
    pixel_good: np.ndarray | None  # N x PIXEL_BINS


def _rank_counts(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, rank = np.unique(values, return_inverse=True)
    onehot = np.zeros((len(values), int(rank.max()) + 1))
    onehot[np.arange(len(values)), rank] = 1.0
    return onehot * labels[:, None], onehot * ~labels[:, None]


def _pixel_counts(maps: np.ndarray, masks: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if not masks[known].any():
        return None
    flat = maps.reshape(len(maps), -1)
    inner_edges = np.quantile(flat[known], np.linspace(0.0, 1.0, PIXEL_BINS + 1)[1:-1])
    bins = np.searchsorted(inner_edges, flat, side="right")
    defect = np.zeros((len(maps), PIXEL_BINS))
    good = np.zeros((len(maps), PIXEL_BINS))
    for index in np.flatnonzero(known):
        is_defect = masks[index].reshape(-1)
        defect[index] = np.bincount(bins[index][is_defect], minlength=PIXEL_BINS)
        good[index] = np.bincount(bins[index][~is_defect], minlength=PIXEL_BINS)
    return defect, good


def count_per_image(
    scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray, known: np.ndarray
) -> PerImageCounts:
    score_defect, score_good = _rank_counts(scores, labels.astype(bool))
    pixels = _pixel_counts(maps, masks.astype(bool), known.astype(bool))
    return PerImageCounts(score_defect, score_good, *(pixels if pixels is not None else (None, None)))


def weighted_auroc(defect: np.ndarray, good: np.ndarray) -> np.ndarray:
    """AUROC per row of (R x K) counts ordered by value; ties between the classes count 1/2; NaN for a row
    that lacks a class."""
    good_below = np.cumsum(good, axis=1) - good
    wins = np.sum(defect * (good_below + 0.5 * good), axis=1)
    pairs = defect.sum(axis=1) * good.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def resample_weights(count: int, seed: int) -> np.ndarray:
    """RESAMPLES x count: how often each image is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(count, np.full(count, 1.0 / count), size=RESAMPLES).astype(np.float64)


def _upper_bound(before: np.ndarray, after: np.ndarray) -> float:
    drops = before - after
    drops = drops[np.isfinite(drops)]
    return float(np.quantile(drops, CONFIDENCE)) if drops.size else float("nan")


def resampled_aurocs(counts: PerImageCounts, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Image and pixel AUROC of each resample (a row of `weights`); the pixel one is None without pixel truth."""
    image = weighted_auroc(weights @ counts.score_defect, weights @ counts.score_good)
    if counts.pixel_defect is None or counts.pixel_good is None:
        return image, None
    return image, weighted_auroc(weights @ counts.pixel_defect, weights @ counts.pixel_good)


def drop_upper_bounds(baseline: PerImageCounts, candidate: PerImageCounts, seed: int = 0) -> tuple[float, float | None]:
    """Upper confidence bounds of the (image AUROC, pixel AUROC) drops from baseline to candidate."""
    weights = resample_weights(len(baseline.score_defect), seed)
    image_before, pixel_before = resampled_aurocs(baseline, weights)
    image_after, pixel_after = resampled_aurocs(candidate, weights)
    image = _upper_bound(image_before, image_after)
    if pixel_before is None or pixel_after is None:
        return image, None
    return image, _upper_bound(pixel_before, pixel_after)
