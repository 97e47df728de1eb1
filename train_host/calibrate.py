"""Calibration from good held-out images: severity bins, map statistics, image and pixel thresholds."""

from __future__ import annotations

import numpy as np

from edge_runtime.anomaly_map import MapStats, image_scores
from edge_runtime.calibration import Calibration
from edge_runtime.pipeline import InspectionPipeline, weighed_maps, weights_in_force
from edge_runtime.severity import SeverityBins
from train_host.config import CalibrationConfig
from train_host.fusion_weights import choose_map_weights
from train_host.synthetic_defects import make_synthetic_defects
from train_host.torch_setup import progress


def fit_calibration(
    pipeline: InspectionPipeline,
    images: np.ndarray,
    config: CalibrationConfig,
    seed: int = 0,
    fixed_weights: dict[str, float] | None = None,
) -> Calibration:
    """Map statistics, fusion weights and thresholds from good held-out images (and synthetic defects on them).
    `fixed_weights`, when given, are used as they are instead of being chosen."""
    severities = [pipeline.severity(image) for image in progress(images, "calibration: knn")]
    bins = SeverityBins.fit(np.array([s.distance for s in severities]), pipeline.settings.severity_bins)
    raws = [
        pipeline.raw_maps(image, bins, severity=severity)
        for image, severity in progress(zip(images, severities, strict=True), "calibration: maps", len(images))
    ]
    stats = {
        kind: MapStats.fit(np.stack([raw.maps[kind] for raw in raws]), config.map_scale_quantile, config.edge_band_px)
        for kind in raws[0].maps
    }
    weights = weights_in_force(fixed_weights, pipeline.settings)
    if fixed_weights is None and config.choose_map_weights and len(weighed_maps(weights)) > 1:
        defective, masks = make_synthetic_defects(images, seed)
        synthetic = [pipeline.raw_maps(image, bins) for image in progress(defective, "calibration: synthetic maps")]
        settings = pipeline.settings
        weights, _ = choose_map_weights(
            raws,
            synthetic,
            masks,
            stats,
            weights,
            settings.blur_sigma,
            settings.score_top_fraction,
            seed,
            settings.fusion,
        )
    provisional = Calibration(
        bins=bins, map_stats=stats, image_threshold=np.inf, pixel_threshold=np.inf, map_weights=weights
    )
    combined = np.stack([pipeline.anomaly_map(raw, provisional) for raw in raws])
    scores = image_scores(combined, pipeline.settings.score_top_fraction)
    return Calibration(
        bins=bins,
        map_stats=stats,
        map_weights=weights,
        image_threshold=false_alarm_threshold(scores, config.image_false_alarm_rate),
        pixel_threshold=float(np.quantile(combined, config.pixel_quantile)),
    )


def false_alarm_threshold(good_scores: np.ndarray, rate: float) -> float:
    """The score that `rate` of the held-out good images reach (linear between neighbouring scores)."""
    return float(np.quantile(good_scores, 1.0 - rate))


def expected_false_alarm_rate(held_out_goods: int, rate: float) -> float:
    """How often a new good part reaches `false_alarm_threshold` of that many held-out good scores, on average.

    The threshold sits at 0-based position p = (1 - rate)(n - 1) among the n sorted scores, and a new good part's
    score falls into each of the n + 1 gaps between them equally often, so above the threshold in
    (n - p) / (n + 1) = (rate (n - 1) + 1) / (n + 1) of cases. Exact where p falls on a score; between two scores
    the true rate lies between theirs and depends on the scores' distribution. Always more than `rate` (below 0.5),
    the more so the fewer goods were held out (magnetic_tile's 113: 2.8 % for 2 %; kolektor_sdd's 32: about 4.9 %,
    between 3.0 and 6.1 %)."""
    return (rate * (held_out_goods - 1) + 1.0) / (held_out_goods + 1)


def synthetic_recall(
    pipeline: InspectionPipeline, calibration: Calibration, good_images: np.ndarray, seed: int
) -> float:
    """Share of synthetic defects, pasted on good held-out images, that the stored threshold flags.

    An estimate of recall made without a single real defect: no test image is used, so it can be shown to a
    site before the line runs. Real defects unlike the synthetic ones can be found more or less often."""
    defective, _ = make_synthetic_defects(good_images, seed)
    flagged = [
        pipeline.inspect(image, calibration).is_defect for image in progress(defective, "calibration: synthetic")
    ]
    return float(np.mean(flagged))
