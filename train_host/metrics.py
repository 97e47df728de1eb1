"""Anomaly-detection metrics: ROC/AUROC, pixel AUROC, AUPRO, F1, recall and false-alarm rate.

Only numpy (plus cv2 for connected components) is used, so the module can run
on the training host without torch or sklearn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "F1Result",
    "OperatingPoint",
    "RocCurve",
    "aupro",
    "auroc",
    "best_f1",
    "f1_at_threshold",
    "operating_point",
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


@dataclass(frozen=True)
class OperatingPoint:
    """What a line sees at one image threshold: defects caught and good parts rejected."""

    threshold: float
    defects: int
    defects_found: int
    goods: int
    false_alarms: int

    @property
    def recall(self) -> float:
        """Fraction of defective images at or above the threshold."""
        return self.defects_found / self.defects

    @property
    def false_alarm_rate(self) -> float:
        """Fraction of good images at or above the threshold."""
        return self.false_alarms / self.goods


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


def _region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel, 1 / size of its 8-connected defect region (0 on good pixels), and the number of regions."""
    count, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
    inverse = np.zeros(count, dtype=np.float64)
    inverse[1:] = 1.0 / sizes[1:]
    return inverse[labels], count - 1


def _kth_largest(values: np.ndarray, k: int) -> float:
    return float(np.partition(values, values.size - k)[values.size - k])


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the exact PRO curve up to ``fpr_limit`` (MVTec AD protocol).

    Each 8-connected region of each mask is one region. Every distinct map
    value t is a threshold: PRO(t) is the mean over regions of the fraction of
    region pixels with ``map >= t`` and FPR(t) the fraction of good pixels with
    ``map >= t``. The points, from (0, 0) on, are joined by straight lines
    (tied good and defect pixels move together), integrated with the trapezoid
    rule up to ``fpr_limit`` (linearly interpolated there) and divided by
    ``fpr_limit``, giving a value in [0, 1].
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    _check_same_shape(maps, masks, "maps", "masks")
    if maps.ndim != 3:
        raise ValueError(f"maps and masks must have shape (N, H, W), got {maps.shape}")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if maps.size == 0:
        raise ValueError("maps and masks are empty")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    defect = masks != 0
    n_good = int(defect.size - np.count_nonzero(defect))
    if n_good == 0:
        raise ValueError("masks contain no good (zero) pixels; AUPRO is undefined")

    # The curve up to the limit ends at the first point with FPR >= limit, the threshold of the k-th largest good
    # value: only pixels at or above it shape that part, so only they are sorted. A larger k only keeps more
    # pixels, so one is added against rounding in the product.
    k = min(n_good, int(np.ceil(fpr_limit * n_good)) + 1)
    floor = _kth_largest(maps[~defect], k)
    values, good_steps, pro_steps = [], [], []
    n_regions = 0
    for image_map, image_defect in zip(maps, defect, strict=True):
        weights, count = _region_weights(image_defect)
        n_regions += count
        kept = image_map >= floor
        values.append(image_map[kept])
        good_steps.append(~image_defect[kept])
        pro_steps.append(weights[kept])
    if n_regions == 0:
        raise ValueError("masks contain no defect region; AUPRO is undefined")

    value = np.concatenate(values)
    order = np.argsort(value, kind="stable")[::-1]
    value = value[order]
    # One point per distinct value, after all pixels tied at it.
    last_of_run = np.append(np.flatnonzero(np.diff(value) != 0), value.size - 1)
    false_positives = np.cumsum(np.concatenate(good_steps)[order], dtype=np.int64)[last_of_run]
    region_sum = np.cumsum(np.concatenate(pro_steps)[order])[last_of_run]
    fpr = np.concatenate(([0.0], false_positives / n_good))
    pro = np.concatenate(([0.0], region_sum / n_regions))

    # First point at or beyond the limit; fpr[0] == 0 < limit <= fpr[-1].
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


# --------------------------------------------------------------------------- #
# Operating point
# --------------------------------------------------------------------------- #


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> OperatingPoint:
    """Counts when ``score >= threshold`` is judged defective; needs both good and defective samples."""
    s, y = _prepare_scores_labels(scores, labels)
    n_pos = int(y.sum())
    _require_both_classes(n_pos, y.size - n_pos)
    predicted = s >= threshold
    return OperatingPoint(
        threshold=float(threshold),
        defects=n_pos,
        defects_found=int(np.count_nonzero(predicted & y)),
        goods=int(y.size - n_pos),
        false_alarms=int(np.count_nonzero(predicted & ~y)),
    )
