"""Anomaly maps from input vs healed image, their normalisation, fusion and smoothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class MapStats:
    """Location and scale of one map kind on good held-out images."""

    location: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray, quantile: float = 0.99) -> MapStats:
        location = float(np.median(values))
        spread = float(np.quantile(values, quantile)) - location
        return cls(location=location, scale=max(spread, 1e-6))

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return (values - self.location) / self.scale


def fuse_maps(
    maps: Mapping[str, np.ndarray], stats: Mapping[str, MapStats], weights: Mapping[str, float], blur_sigma: float
) -> np.ndarray:
    """Weighted sum of normalised maps, then Gaussian smoothing."""
    used = [kind for kind in MAP_KINDS if weights.get(kind, 0.0) > 0.0]
    if not used:
        raise ValueError("at least one map weight must be positive")
    combined = sum(weights[kind] * stats[kind].normalise(maps[kind]) for kind in used)
    combined = np.asarray(combined, dtype=np.float32)
    if blur_sigma > 0:
        combined = cv2.GaussianBlur(combined, (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma)
    return combined
