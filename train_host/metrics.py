"""Anomaly-detection metrics: ROC/AUROC, pixel AUROC, AUPRO and F1.

Only numpy (plus cv2 for connected components) is used, so the module can run
on the training host without torch or sklearn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "F1Result",
    "RocCurve",
    "aupro",
    "auroc",
    "best_f1",
    "f1_at_threshold",
    "pixel_auroc",
    "roc_curve",
]

# Needles searched per chunk in the Mann-Whitney count; bounds the int64
# temporaries to ~32 MB each even for tens of millions of pixels.
_SEARCH_CHUNK = 1 << 22


@dataclass(frozen=True)
class RocCurve:
    """ROC curve points; ``score >= thresholds[i]`` gives ``(fpr[i], tpr[i])``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class F1Result:
    """Precision, recall and F1 at one decision threshold."""

    precision: float
    recall: float
    f1: float
    threshold: float


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _check_same_shape(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {a.shape} and {b.shape}")


def _check_no_nan(scores: np.ndarray, name: str = "scores") -> None:
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError(f"{name} contain NaN values")


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    """Return labels as bool, requiring them to be bool or 0/1."""
    if labels.dtype == np.bool_:
        return labels
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be bool or 0/1 values")
    return labels.astype(bool)


def _prepare_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    _check_same_shape(scores, labels, "scores", "labels")
    if scores.size == 0:
        raise ValueError("scores and labels are empty")
    _check_no_nan(scores)
    return scores.ravel(), _binary_labels(labels).ravel()


def _require_both_classes(n_pos: int, n_neg: int, what: str = "labels") -> None:
    if n_pos == 0 or n_neg == 0:
        present = "positive (anomalous)" if n_neg == 0 else "negative (normal)"
        raise ValueError(f"{what} contain only one class ({present}); AUROC needs both normal and anomalous samples")


# --------------------------------------------------------------------------- #
# ROC / AUROC
# --------------------------------------------------------------------------- #


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC as P(pos > neg) + 0.5 * P(pos == neg), from two 1-D score arrays.

    Both arrays are sorted in place. The smaller array is searched into the
    larger one, so the cost is dominated by the two sorts.
    """
    pos.sort()
    neg.sort()
    # NaN sorts to the end, so checking the last element is enough.
    for arr, name in ((pos, "anomalous"), (neg, "normal")):
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr[-1]):
            raise ValueError(f"scores of {name} samples contain NaN values")

    n_pos, n_neg = pos.size, neg.size
    # Accumulate 2*U in integers so ties (counted as 1/2) stay exact.
    twice_u = 0
    if n_pos <= n_neg:
        for start in range(0, n_pos, _SEARCH_CHUNK):
            needles = pos[start : start + _SEARCH_CHUNK]
            below = np.searchsorted(neg, needles, side="left")
            below_or_equal = np.searchsorted(neg, needles, side="right")
            twice_u += int(below.sum()) + int(below_or_equal.sum())
    else:
        for start in range(0, n_neg, _SEARCH_CHUNK):
            needles = neg[start : start + _SEARCH_CHUNK]
            above = n_pos - np.searchsorted(pos, needles, side="right")
            above_or_equal = n_pos - np.searchsorted(pos, needles, side="left")
            twice_u += int(above.sum()) + int(above_or_equal.sum())
    return twice_u / (2.0 * n_pos * n_neg)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> RocCurve:
    """ROC curve with one point per distinct score plus the (0, 0) start.

    ``labels`` are bool or 0/1, 1 meaning anomalous; a higher score means more
    anomalous. ``fpr`` is non-decreasing from 0.0 to 1.0; ``thresholds`` is
    strictly decreasing and starts at ``+inf``.
    """
    s, y = _prepare_scores_labels(scores, labels)
    n_pos = int(y.sum())
    _require_both_classes(n_pos, y.size - n_pos)

    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: all tied samples flip together.
    last_of_run = np.flatnonzero(np.diff(s_sorted) != 0)
    last_of_run = np.append(last_of_run, s_sorted.size - 1)

    tps = np.cumsum(y_sorted, dtype=np.int64)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / (y.size - n_pos)))
    thresholds = np.concatenate(([np.inf], s_sorted[last_of_run].astype(np.float64)))
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)).

    Ties between a positive and a negative count 1/2. Raises ``ValueError``
    for mismatched shapes, NaN scores, non-binary or single-class labels.
    """
    s, y = _prepare_scores_labels(scores, labels)
    n_pos = int(y.sum())
    _require_both_classes(n_pos, y.size - n_pos)
    return _mann_whitney_auc(s[y], s[~y])


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC over all pixels of ``maps`` (N, H, W) against ``masks``.

    Any non-zero mask value (bool, 0/1 or 0/255) marks an anomalous pixel.
    Memory stays at roughly one extra copy of the maps plus two bool masks.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    _check_same_shape(maps, masks, "maps", "masks")
    if maps.size == 0:
        raise ValueError("maps and masks are empty")
    flat = maps.reshape(-1)
    defect = masks.reshape(-1) != 0
    n_pos = int(np.count_nonzero(defect))
    _require_both_classes(n_pos, defect.size - n_pos, what="masks")
    pos = flat[defect]
    np.logical_not(defect, out=defect)
    neg = flat[defect]
    del defect
    return _mann_whitney_auc(pos, neg)


# --------------------------------------------------------------------------- #
# AUPRO
# --------------------------------------------------------------------------- #


def _detected_per_threshold(hist: np.ndarray) -> np.ndarray:
    """Turn counts per bin into counts with ``value >= thresholds[k]``.

    ``hist[..., c]`` counts values with exactly ``c`` thresholds <= value, so a
    value passes threshold ``k`` iff ``c >= k + 1``.
    """
    at_least = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    return at_least[..., 1:]


def aupro(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float = 0.3,
    num_thresholds: int = 200,
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD protocol).

    Each 8-connected region of each mask is one region. For a threshold t,
    PRO(t) is the mean over regions of the fraction of region pixels with
    ``map >= t`` and FPR(t) the fraction of good pixels with ``map >= t``.
    The curve is sampled on ``num_thresholds`` thresholds from the map
    minimum to just above the maximum, integrated with the trapezoid rule up
    to ``fpr_limit`` (linearly interpolated there) and divided by
    ``fpr_limit``, giving a value in [0, 1].
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    _check_same_shape(maps, masks, "maps", "masks")
    if maps.ndim != 3:
        raise ValueError(f"maps and masks must have shape (N, H, W), got {maps.shape}")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    if maps.size == 0:
        raise ValueError("maps and masks are empty")

    lo = float(maps.min())
    hi = float(maps.max())
    # Infinite values would turn the evenly spaced threshold grid into NaN.
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("maps contain NaN or infinite values")
    # The extra top threshold lies strictly above every value: FPR = PRO = 0.
    thresholds = np.append(np.linspace(lo, hi, num_thresholds - 1), np.nextafter(hi, np.inf))
    n_bins = num_thresholds + 1

    good_hist = np.zeros(n_bins, dtype=np.int64)
    pro_sum = np.zeros(num_thresholds, dtype=np.float64)
    n_regions = 0
    # One image at a time keeps the int64 bin indices small and is where the
    # connected components have to be computed anyway.
    for image_map, image_mask in zip(maps, masks, strict=True):
        bins = np.searchsorted(thresholds, image_map.astype(np.float64, copy=False), side="right")
        defect = image_mask != 0
        good_hist += np.bincount(bins[~defect], minlength=n_bins)
        if not defect.any():
            continue
        n_labels, region_map = cv2.connectedComponents(np.ascontiguousarray(defect, dtype=np.uint8), connectivity=8)
        n_img_regions = n_labels - 1
        region_ids = region_map[defect].astype(np.int64) - 1
        region_hist = np.bincount(region_ids * n_bins + bins[defect], minlength=n_img_regions * n_bins).reshape(
            n_img_regions, n_bins
        )
        region_sizes = region_hist.sum(axis=1, keepdims=True)
        pro_sum += (_detected_per_threshold(region_hist) / region_sizes).sum(axis=0)
        n_regions += n_img_regions

    if n_regions == 0:
        raise ValueError("masks contain no defect region; AUPRO is undefined")
    n_good = int(good_hist.sum())
    if n_good == 0:
        raise ValueError("masks contain no good (zero) pixels; AUPRO is undefined")

    # Thresholds ascend, so reverse to get FPR ascending from 0 to 1.
    fpr = (_detected_per_threshold(good_hist) / n_good)[::-1]
    pro = (pro_sum / n_regions)[::-1]

    # First point at or beyond the limit; fpr[0] == 0 < limit <= fpr[-1] == 1.
    end = int(np.searchsorted(fpr, fpr_limit, side="left"))
    x0, x1 = fpr[end - 1], fpr[end]
    y0, y1 = pro[end - 1], pro[end]
    y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
    x = np.append(fpr[:end], fpr_limit)
    y = np.append(pro[:end], y_limit)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / fpr_limit


# --------------------------------------------------------------------------- #
# F1
# --------------------------------------------------------------------------- #


def _f1_from_counts(tp: int, fp: int, fn: int, threshold: float) -> F1Result:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2.0 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
    return F1Result(precision=float(precision), recall=float(recall), f1=float(f1), threshold=float(threshold))


def f1_at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> F1Result:
    """Precision, recall and F1 when ``score >= threshold`` is predicted defective.

    Undefined ratios (no predicted or no actual positives) are reported as 0.0.
    """
    s, y = _prepare_scores_labels(scores, labels)
    predicted = s >= threshold
    tp = int(np.count_nonzero(predicted & y))
    fp = int(np.count_nonzero(predicted & ~y))
    fn = int(np.count_nonzero(~predicted & y))
    return _f1_from_counts(tp, fp, fn, threshold)


def best_f1(scores: np.ndarray, labels: np.ndarray) -> F1Result:
    """F1 at the score value that maximises it (the highest such value on ties)."""
    s, y = _prepare_scores_labels(scores, labels)
    n_pos = int(y.sum())
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    last_of_run = np.append(np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1)
    tps = np.cumsum(y[order], dtype=np.int64)[last_of_run]
    fps = (last_of_run + 1) - tps
    fns = n_pos - tps
    # 2tp + fp + fn > 0 always: every candidate predicts at least one sample.
    f1 = 2.0 * tps / (2 * tps + fps + fns)
    best = int(np.argmax(f1))
    return _f1_from_counts(int(tps[best]), int(fps[best]), int(fns[best]), float(s_sorted[last_of_run[best]]))
