"""From a KNN distance to a severity bin, and from the bin to how far the image is pushed into diffusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeverityBins:
    """Equal-width bins over the KNN distances of good images; bin numbers run 1..count."""

    low: float
    high: float
    count: int = 10

    @classmethod
    def fit(cls, good_distances: np.ndarray, count: int = 10) -> SeverityBins:
        values = np.asarray(good_distances, dtype=np.float64)
        if values.size < 2 or not np.all(np.isfinite(values)):
            raise ValueError("severity bins need at least two finite distances of good images")
        return cls(low=float(values.min()), high=float(values.max()), count=count)

    def bin_of(self, distance: float) -> int:
        width = (self.high - self.low) / self.count
        if width <= 0:
            return self.count if distance > self.high else 1
        index = int(np.floor((distance - self.low) / width)) + 1
        return int(np.clip(index, 1, self.count))


def noise_timestep(severity_bin: int, t_max: int, bin_count: int = 10, min_bin: int = 2) -> int:
    """D3AD's dynamic noise level: round_to_10(max(b, min_bin) / count * t_max)."""
    fraction = max(severity_bin, min_bin) / bin_count
    # Half-up rounding: Python's round() would send 2.5 to 2.
    return int(np.floor(fraction * t_max / 10.0 + 0.5) * 10)
