"""Statistics from good held-out images that turn raw maps into scores and verdicts."""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.anomaly_map import MapStats
from edge_runtime.severity import SeverityBins


def map_stats_from_dict(data: dict) -> MapStats:
    """Band statistics; a plain number (calibrations before edge bands) is one global band."""

    def as_tuple(value: float | list[float]) -> tuple[float, ...]:
        return tuple(float(v) for v in value) if isinstance(value, list | tuple) else (float(value),)

    location, scale = as_tuple(data["location"]), as_tuple(data["scale"])
    if len(location) != len(scale):
        raise ValueError(f"map statistics have {len(location)} locations but {len(scale)} scales")
    return MapStats(location=location, scale=scale, band_width=int(data.get("band_width", 0)))


@dataclass(frozen=True)
class Calibration:
    bins: SeverityBins
    map_stats: dict[str, MapStats]
    image_threshold: float
    pixel_threshold: float
    map_weights: dict[str, float] | None = None  # chosen at calibration; None = the inspection settings'

    def to_dict(self) -> dict:
        weights = {} if self.map_weights is None else {"map_weights": dict(self.map_weights)}
        return weights | {
            "bins": {"low": self.bins.low, "high": self.bins.high, "count": self.bins.count},
            "map_stats": {
                k: {"location": list(s.location), "scale": list(s.scale), "band_width": s.band_width}
                for k, s in self.map_stats.items()
            },
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        try:
            return cls(
                bins=SeverityBins(**data["bins"]),
                map_stats={k: map_stats_from_dict(v) for k, v in data["map_stats"].items()},
                image_threshold=float(data["image_threshold"]),
                pixel_threshold=float(data["pixel_threshold"]),
                map_weights=_weights_from(data.get("map_weights")),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"calibration data is incomplete or malformed: {error!r}") from error


def _weights_from(data: dict | None) -> dict[str, float] | None:
    return None if data is None else {kind: float(weight) for kind, weight in data.items()}
