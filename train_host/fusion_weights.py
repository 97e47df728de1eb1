"""Fusion weights chosen on synthetic defects pasted on good held-out images: never on test images."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from edge_runtime.anomaly_map import FusionRule, MapStats, fuse_maps, image_scores
from edge_runtime.pipeline import weighed_maps
from edge_runtime.results import RawMaps
from train_host import metrics
from train_host.paired_bootstrap import (
    CONFIDENCE,
    PerImageCounts,
    count_per_image,
    resample_weights,
    resampled_aurocs,
)

# Multipliers of each configured weight: a map can be dropped, halved, kept or doubled.
MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)
PIXEL_SAMPLE = 200_000  # pixels scored per candidate: enough for a steady AUROC, cheap for 60 candidates


def candidate_weights(configured: dict[str, float]) -> list[dict[str, float]]:
    """The configured weights first, then every product of multipliers over the maps in use."""
    used = weighed_maps(configured)
    candidates = [dict(configured)]
    for factors in itertools.product(MULTIPLIERS, repeat=len(used)):
        if not any(factors):
            continue
        weights = dict.fromkeys(configured, 0.0)
        weights.update({kind: configured[kind] * f for kind, f in zip(used, factors, strict=True)})
        if weights != configured:
            candidates.append(weights)
    return candidates


def fuse_all(
    raws: Sequence[RawMaps],
    stats: dict[str, MapStats],
    weights: dict[str, float],
    blur_sigma: float,
    fusion: FusionRule,
) -> np.ndarray:
    """The fused maps of many images (N x H x W), fused with the same weights and rule."""
    return np.stack([fuse_maps(raw.maps, stats, weights, blur_sigma, fusion) for raw in raws])


def fusion_quality(
    good: Sequence[RawMaps],
    defective: Sequence[RawMaps],
    masks: np.ndarray,
    stats: dict[str, MapStats],
    weights: dict[str, float],
    blur_sigma: float,
    top_fraction: float,
    pixels: np.ndarray,
    fusion: FusionRule,
) -> float:
    """Image AUROC (good against synthetic) plus pixel AUROC on the synthetic masks, at sampled pixels."""
    fused_good = fuse_all(good, stats, weights, blur_sigma, fusion)
    fused_defective = fuse_all(defective, stats, weights, blur_sigma, fusion)
    scores = np.concatenate([image_scores(fused, top_fraction) for fused in (fused_good, fused_defective)])
    labels = np.concatenate([np.zeros(len(good), bool), np.ones(len(defective), bool)])
    flat_maps, flat_masks = fused_defective.reshape(-1)[pixels], masks.reshape(-1)[pixels]
    pixel = metrics.auroc(flat_maps, flat_masks) if 0 < flat_masks.sum() < len(flat_masks) else 0.5
    return metrics.auroc(scores, labels) + pixel


def choose_map_weights(
    good: Sequence[RawMaps],
    defective: Sequence[RawMaps],
    masks: np.ndarray,
    stats: dict[str, MapStats],
    configured: dict[str, float],
    blur_sigma: float,
    top_fraction: float,
    seed: int,
    fusion: FusionRule,
) -> tuple[dict[str, float], float]:
    """The candidate that best separates synthetic defects from good parts, where it is surely better than the
    configured weights; otherwise the configured weights. `defective[i]` is a defect pasted on `good[i]`.
    Returns (weights, their quality)."""
    rng = np.random.default_rng(seed)
    pixels = rng.choice(masks.size, min(PIXEL_SAMPLE, masks.size), replace=False)
    sureness = GainCheck(good, defective, masks, stats, configured, blur_sigma, top_fraction, seed, fusion)
    best, best_quality = dict(configured), -np.inf
    for weights in candidate_weights(configured):
        quality = fusion_quality(good, defective, masks, stats, weights, blur_sigma, top_fraction, pixels, fusion)
        if quality > best_quality + 1e-6 and (weights == configured or sureness.surely_better(weights)):
            best, best_quality = weights, quality
    return best, float(best_quality)


class GainCheck:
    """Whether a candidate's quality beats the configured weights' in 95 of 100 resamples of the image pairs.

    With 100 or so held-out goods the best of 60 candidates differs from the configured weights by a few
    thousandths, most of it chance: taking it anyway cost the real test images up to 0.007 image AUROC
    (docs/RESULTS.md). Each good image and the defect pasted on it are resampled together."""

    def __init__(
        self,
        good: Sequence[RawMaps],
        defective: Sequence[RawMaps],
        masks: np.ndarray,
        stats: dict[str, MapStats],
        configured: dict[str, float],
        blur_sigma: float,
        top_fraction: float,
        seed: int,
        fusion: FusionRule,
    ) -> None:
        if len(good) != len(defective):
            raise ValueError(f"{len(defective)} synthetic defects for {len(good)} good images: they come in pairs")
        self.good, self.defective, self.stats = good, defective, stats
        self.blur_sigma, self.top_fraction, self.fusion = blur_sigma, top_fraction, fusion
        self.labels = np.r_[np.zeros(len(good), bool), np.ones(len(defective), bool)]
        self.masks = np.concatenate([np.zeros_like(masks), masks])
        self.resamples = resample_weights(len(good), seed)
        self.configured_quality = self._quality_per_resample(configured)  # once, not per candidate

    def _quality_per_resample(self, weights: dict[str, float]) -> np.ndarray:
        fused = fuse_all([*self.good, *self.defective], self.stats, weights, self.blur_sigma, self.fusion)
        counts = count_per_image(image_scores(fused, self.top_fraction), self.labels, fused, self.masks, self.labels)
        image, pixel = resampled_aurocs(_paired(counts, len(self.good)), self.resamples)
        return image + (pixel if pixel is not None else 0.0)

    def surely_better(self, candidate: dict[str, float]) -> bool:
        gains = self._quality_per_resample(candidate) - self.configured_quality
        gains = gains[np.isfinite(gains)]
        return bool(gains.size) and float(np.quantile(gains, 1.0 - CONFIDENCE)) > 0.0


def _paired(counts: PerImageCounts, pairs: int) -> PerImageCounts:
    """Counts of image i and of image i + pairs added into one row: a resample draws both or neither."""

    def add(rows: np.ndarray | None) -> np.ndarray | None:
        return None if rows is None else rows[:pairs] + rows[pairs:]

    return PerImageCounts(
        add(counts.score_defect), add(counts.score_good), add(counts.pixel_defect), add(counts.pixel_good)
    )
