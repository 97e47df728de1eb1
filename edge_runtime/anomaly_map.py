"""Anomaly maps from input vs healed image, their normalisation, fusion and smoothing."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

MAP_KINDS = ("latent", "feature", "knn")


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to (height, width)."""
    height, width = size
    return cv2.resize(values.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def latent_map(latent: np.ndarray, healed_latent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Mean absolute latent difference over channels, at image resolution."""
    return resize_map(np.abs(latent - healed_latent).mean(axis=0), size)


def cosine_distance_map(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """1 - cosine similarity per position of two CxHxW feature maps."""
    dot = (first * second).sum(axis=0)
    norms = np.linalg.norm(first, axis=0) * np.linalg.norm(second, axis=0)
    return 1.0 - dot / np.maximum(norms, 1e-8)


def feature_map(
    input_features: Sequence[np.ndarray], healed_features: Sequence[np.ndarray], size: tuple[int, int]
) -> np.ndarray:
    """Sum over backbone stages of the cosine distance between input and healed features."""
    total = np.zeros(size, dtype=np.float32)
    for first, second in zip(input_features, healed_features, strict=True):
        total += resize_map(cosine_distance_map(first, second), size)
    return total


def edge_bands(shape: tuple[int, int], band_width: int, band_count: int) -> np.ndarray:
    """Per pixel, its band by distance to the nearest image edge: 0 along the edge, then every
    `band_width` pixels inwards, the innermost band holding everything deeper."""
    height, width = shape
    rows, columns = np.mgrid[0:height, 0:width]
    to_edge = np.minimum(np.minimum(rows, height - 1 - rows), np.minimum(columns, width - 1 - columns))
    return np.minimum(to_edge // max(band_width, 1), band_count - 1)


@dataclass(frozen=True)
class MapStats:
    """Location and scale of one map kind on good held-out images, per band of distance to the image edge.

    Patches along the edge of a picture see the part's outline, fixtures or the image border, and match the
    memory less well than interior ones even on good parts; one global scale let those edges set the image
    score of most good parts. Each band is therefore measured on its own. One band = a global statistic."""

    location: tuple[float, ...]
    scale: tuple[float, ...]
    band_width: int = 0

    @classmethod
    def fit(cls, values: np.ndarray, quantile: float = 0.99, band_width: int = 8) -> MapStats:
        """values: NxHxW maps of good images; band_width 0 fits a single global band."""
        count = band_count(values.shape[1:], band_width)
        bands = edge_bands(values.shape[1:], band_width, count)
        locations, scales = [], []
        for band in range(count):
            inside = values[:, bands == band]
            location = float(np.median(inside))
            locations.append(location)
            scales.append(max(float(np.quantile(inside, quantile)) - location, 1e-6))
        return cls(location=tuple(locations), scale=tuple(scales), band_width=band_width)

    def normalise(self, values: np.ndarray) -> np.ndarray:
        location, scale = _band_maps(self, values.shape)
        return (values - location) / scale


def band_count(shape: tuple[int, int], band_width: int) -> int:
    """Bands that fit between the edge and the centre of a map of this shape (1 when band_width is 0)."""
    if band_width <= 0:
        return 1
    return max(1, (min(shape) // 2 - 1) // band_width + 1)


@functools.lru_cache(maxsize=16)
def _band_maps(stats: MapStats, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # Per-pixel location and scale, built once per map kind and size: normalising is on every frame's path.
    bands = edge_bands(shape, stats.band_width, len(stats.location))
    return np.asarray(stats.location, dtype=np.float32)[bands], np.asarray(stats.scale, dtype=np.float32)[bands]


def image_scores(anomaly_maps: np.ndarray, top_fraction: float) -> np.ndarray:
    """Image scores of a stack of maps (NxHxW): the mean of each map's highest `top_fraction` of pixels, or
    its maximum when the fraction is 0 (or smaller than one pixel).

    A single pixel is at the mercy of one noisy patch; the mean of the top 1 % still rises with a defect as
    small as kolektor_sdd's thin cracks (docs/RESULTS.md)."""
    flat = anomaly_maps.reshape(len(anomaly_maps), -1)
    count = round(top_fraction * flat.shape[1])
    if count <= 1:
        return flat.max(axis=1)
    return np.partition(flat, flat.shape[1] - count, axis=1)[:, -count:].mean(axis=1)


def image_score(anomaly_map: np.ndarray, top_fraction: float) -> float:
    """The score of one map (HxW); see `image_scores`."""
    return float(image_scores(anomaly_map[None], top_fraction)[0])


FusionRule = Literal["capped", "sum"]
HEALING_KINDS = ("latent", "feature")


def fuse_maps(
    maps: Mapping[str, np.ndarray],
    stats: Mapping[str, MapStats],
    weights: Mapping[str, float],
    blur_sigma: float,
    fusion: FusionRule,
) -> np.ndarray:
    """Weighted sum of normalised maps, then Gaussian smoothing.

    "capped": each healing map (latent, feature) adds at most what the KNN map, fused beside it, finds unusual at
    that pixel. Input and healed image differ on good texture too; where the memory sees a good patch, that
    difference is noise, and it set the image score of good parts. Where the memory does see something, the healing
    still outlines it (docs/RESULTS.md). Without a KNN map there is nothing to cap by, and the maps are summed.
    "sum": the plain weighted sum, the rule of bundles and runs made before the cap existed."""
    used = [kind for kind in MAP_KINDS if weights.get(kind, 0.0) > 0.0]
    if not used:
        raise ValueError("at least one map weight must be positive")
    normalised = {kind: stats[kind].normalise(maps[kind]) for kind in used}
    if fusion == "capped" and "knn" in normalised:
        memory_evidence = np.maximum(normalised["knn"], 0.0)
        for kind in HEALING_KINDS:
            if kind in normalised:
                normalised[kind] = np.minimum(normalised[kind], memory_evidence)
    combined = np.asarray(sum(weights[kind] * normalised[kind] for kind in used), dtype=np.float32)
    if blur_sigma > 0:
        combined = cv2.GaussianBlur(combined, (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma)
    return combined
