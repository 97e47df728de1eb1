"""Statistics from good held-out images that turn raw maps into scores and verdicts."""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.anomaly_map import MapStats
from edge_runtime.severity import SeverityBins


@dataclass(frozen=True)
class Calibration:
    bins: SeverityBins
    map_stats: dict[str, MapStats]
    image_threshold: float
    pixel_threshold: float

    def to_dict(self) -> dict:
        return {
            "bins": {"low": self.bins.low, "high": self.bins.high, "count": self.bins.count},
            "map_stats": {k: {"location": s.location, "scale": s.scale} for k, s in self.map_stats.items()},
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        try:
            return cls(
                bins=SeverityBins(**data["bins"]),
                map_stats={k: MapStats(**v) for k, v in data["map_stats"].items()},
                image_threshold=float(data["image_threshold"]),
                pixel_threshold=float(data["pixel_threshold"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"calibration data is incomplete or malformed: {error!r}") from error
