"""Typed results of inspecting one frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DefectRegion:
    """One connected area above the pixel threshold, in model-input pixels."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float

    def scaled(self, scale_x: float, scale_y: float) -> DefectRegion:
        """The same region in the pixels of an image `scale_x` times as wide and `scale_y` times as high."""
        return DefectRegion(
            x=round(self.x * scale_x),
            y=round(self.y * scale_y),
            width=round(self.width * scale_x),
            height=round(self.height * scale_y),
            area=round(self.area * scale_x * scale_y),
            peak=float(self.peak),
        )


@dataclass(frozen=True)
class RawMaps:
    """Unnormalised per-kind maps of one image, plus what the healing chose."""

    severity_distance: float
    severity_bin: int
    timestep: int
    steps: int
    maps: dict[str, np.ndarray]
    healed_image: np.ndarray | None


@dataclass(frozen=True)
class InspectionResult:
    score: float
    is_defect: bool
    severity_distance: float
    severity_bin: int
    timestep: int
    steps: int
    anomaly_map: np.ndarray
    regions: list[DefectRegion]
    healed_image: np.ndarray | None
    timings_ms: dict[str, float] = field(default_factory=dict)
