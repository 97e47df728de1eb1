"""Fusion weights chosen on synthetic defects pasted on good held-out images: never on test images."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from edge_runtime.anomaly_map import MapStats, fuse_maps, image_scores
from edge_runtime.results import RawMaps
from train_host import metrics

# Multipliers of each configured weight: a map can be dropped, halved, kept or doubled.
MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)
PIXEL_SAMPLE = 200_000  # pixels scored per candidate: enough for a steady AUROC, cheap for 60 candidates


def candidate_weights(configured: dict[str, float]) -> list[dict[str, float]]:
    """The configured weights first, then every product of multipliers over the maps in use."""
    used = [kind for kind, weight in configured.items() if weight > 0]
    candidates = [dict(configured)]
    for factors in itertools.product(MULTIPLIERS, repeat=len(used)):
        if not any(factors):
            continue
        weights = dict.fromkeys(configured, 0.0)
        weights.update({kind: configured[kind] * f for kind, f in zip(used, factors, strict=True)})
        if weights != configured:
            candidates.append(weights)
    return candidates


def fusion_quality(
    good: Sequence[RawMaps],
    defective: Sequence[RawMaps],
    masks: np.ndarray,
    stats: dict[str, MapStats],
    weights: dict[str, float],
    blur_sigma: float,
    top_fraction: float,
    pixels: np.ndarray,
) -> float:
    """Image AUROC (good against synthetic) plus pixel AUROC on the synthetic masks, at sampled pixels."""
    fused_good = np.stack([fuse_maps(raw.maps, stats, weights, blur_sigma) for raw in good])
    fused_defective = np.stack([fuse_maps(raw.maps, stats, weights, blur_sigma) for raw in defective])
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
) -> tuple[dict[str, float], float]:
    """The candidate that best separates synthetic defects from good parts; the configured weights win ties.
    Returns (weights, their quality)."""
    rng = np.random.default_rng(seed)
    pixels = rng.choice(masks.size, min(PIXEL_SAMPLE, masks.size), replace=False)
    best, best_quality = dict(configured), -np.inf
    for weights in candidate_weights(configured):
        quality = fusion_quality(good, defective, masks, stats, weights, blur_sigma, top_fraction, pixels)
        if quality > best_quality + 1e-6:
            best, best_quality = weights, quality
    return best, float(best_quality)
