"""Calibration from good held-out images: severity bins, map statistics, image and pixel thresholds."""

from __future__ import annotations

import numpy as np

from edge_runtime.anomaly_map import MapStats
from edge_runtime.calibration import Calibration
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.severity import SeverityBins
from train_host.config import CalibrationConfig
from train_host.torch_setup import progress


def fit_calibration(pipeline: InspectionPipeline, images: np.ndarray, config: CalibrationConfig) -> Calibration:
    severities = [pipeline.severity(image) for image in progress(images, "calibration: knn")]
    bins = SeverityBins.fit(np.array([s.distance for s in severities]), pipeline.settings.severity_bins)
    raws = [
        pipeline.raw_maps(image, bins, severity=severity)
        for image, severity in progress(zip(images, severities, strict=True), "calibration: maps", len(images))
    ]
    stats = {
        kind: MapStats.fit(np.stack([raw.maps[kind] for raw in raws]), config.map_scale_quantile)
        for kind in raws[0].maps
    }
    provisional = Calibration(bins=bins, map_stats=stats, image_threshold=np.inf, pixel_threshold=np.inf)
    combined = np.stack([pipeline.anomaly_map(raw, provisional) for raw in raws])
    scores = combined.reshape(len(combined), -1).max(axis=1)
    return Calibration(
        bins=bins,
        map_stats=stats,
        image_threshold=float(np.quantile(scores, 1.0 - config.image_false_alarm_rate)),
        pixel_threshold=float(np.quantile(combined, config.pixel_quantile)),
    )
