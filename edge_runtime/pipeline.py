"""One image through D3AD: KNN severity -> noise level -> noiseless scaling -> conditioned denoising ->
maps -> normalised fused map -> score. Plain numpy around whatever runs the networks."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager

import cv2
import numpy as np

from edge_runtime.anomaly_map import MAP_KINDS, feature_map, fuse_maps, image_score, latent_map, resize_map
from edge_runtime.calibration import Calibration
from edge_runtime.knn import KnnMemory, Severity
from edge_runtime.networks import InspectionNetworks
from edge_runtime.results import DefectRegion, InspectionResult, RawMaps
from edge_runtime.sampler import ConditionedDDIMSampler
from edge_runtime.schedule import DiffusionSchedule
from edge_runtime.settings import InspectionSettings
from edge_runtime.severity import SeverityBins, noise_timestep

# The networks each map needs beyond the KNN backbone, which every frame runs (its severity picks the noise level).
NETWORKS_OF_MAP = {
    "knn": (),
    "latent": ("encoder", "denoiser"),
    "feature": ("encoder", "denoiser", "decoder", "map_backbone"),
}


def weighed_maps(weights: Mapping[str, float]) -> list[str]:
    """The maps the fusion weighs; a map of weight zero is not computed at all."""
    return [kind for kind, weight in weights.items() if weight > 0.0]


def weights_in_force(chosen: dict[str, float] | None, settings: InspectionSettings) -> dict[str, float]:
    """The fusion weights frames use: those calibration chose on synthetic defects, else the configured ones."""
    return chosen or settings.map_weights.as_dict()


def networks_for(weights: Mapping[str, float]) -> list[str]:
    """The networks a frame runs when the fusion weighs the maps so."""
    return sorted({"knn_backbone"}.union(*(NETWORKS_OF_MAP[kind] for kind in weighed_maps(weights))))


class StageTimer:
    """Wall-clock milliseconds per named stage of one inspection."""

    def __init__(self) -> None:
        self.milliseconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.milliseconds[name] = self.milliseconds.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


class InspectionPipeline:
    def __init__(
        self,
        networks: InspectionNetworks,
        memory: KnnMemory,
        settings: InspectionSettings,
        schedule: DiffusionSchedule,
    ) -> None:
        self.networks = networks
        self.memory = memory
        self.settings = settings
        self.sampler = ConditionedDDIMSampler(schedule, settings.denoise_steps, settings.condition_weight)
        self._noise = np.random.default_rng(settings.noise_seed)
        if settings.map_weights.knn > 0 and memory.mode != "patch":
            raise ValueError("map_weights.knn > 0 needs a patch-level KNN memory (memory mode 'patch')")

    def severity(self, image: np.ndarray) -> Severity:
        return self.memory.severity(self.networks.knn_features(image))

    def choose_timestep(self, severity_bin: int) -> int:
        if not self.settings.dynamic_noise:
            return self.settings.fixed_timestep
        return noise_timestep(severity_bin, self.settings.t_max, self.settings.severity_bins)

    def heal_latent(self, latent: np.ndarray, timestep: int) -> np.ndarray:
        """Push the latent to `timestep` and denoise it back, conditioned on itself."""
        pairs = self.sampler.timestep_pairs(timestep)
        if not pairs:
            return latent
        noise = self._noise.standard_normal(latent.shape).astype(np.float32) if self.settings.add_noise else None
        current = self.sampler.scale_input(latent, timestep, noise)
        for t, t_prev in pairs:
            predicted = self.networks.predict_noise(current, t)
            current = self.sampler.step(current, predicted, latent, t, t_prev)
        return current

    def raw_maps(
        self,
        image: np.ndarray,
        bins: SeverityBins,
        timer: StageTimer | None = None,
        severity: Severity | None = None,
        kinds: Collection[str] = MAP_KINDS,
        decode_healed: bool = False,
    ) -> RawMaps:
        """Unnormalised maps of the given kinds; pass `severity` when it is already known to skip the KNN search.
        A kind left out is not computed at all (no decode and no map backbone without the feature map).
        `decode_healed` decodes the healed latent for people to look at (a report's pictures) even where no map
        needs the healed image; it draws no noise, so the maps are the same either way."""
        timer = timer or StageTimer()
        size = image.shape[1:]
        if severity is None:
            with timer.stage("knn"):
                severity = self.severity(image)
        severity_bin = bins.bin_of(severity.distance)
        timestep = self.choose_timestep(severity_bin)
        maps: dict[str, np.ndarray] = {}
        if severity.patch_map is not None and "knn" in kinds:
            maps["knn"] = resize_map(severity.patch_map, size)
        healed_image = None
        steps = 0
        if self.settings.map_weights.needs_healing and ("latent" in kinds or "feature" in kinds):
            with timer.stage("encode"):
                latent = self.networks.encode(image)
            with timer.stage("denoise"):
                healed_latent = self.heal_latent(latent, timestep)
            if "latent" in kinds:
                maps["latent"] = latent_map(latent, healed_latent, size)
            if "feature" in kinds or decode_healed:
                with timer.stage("decode"):
                    healed_image = self.networks.decode(healed_latent)
            if "feature" in kinds:
                with timer.stage("feature_maps"):
                    maps["feature"] = feature_map(
                        self.networks.map_features(image), self.networks.map_features(healed_image), size
                    )
            steps = len(self.sampler.timestep_pairs(timestep))
        return RawMaps(
            severity_distance=severity.distance,
            severity_bin=severity_bin,
            timestep=timestep,
            steps=steps,
            maps=maps,
            healed_image=healed_image,
        )

    def fused_weights(self, calibration: Calibration) -> dict[str, float]:
        return weights_in_force(calibration.map_weights, self.settings)

    def used_maps(self, calibration: Calibration) -> list[str]:
        """The maps this calibration's fusion weighs."""
        return weighed_maps(self.fused_weights(calibration))

    def used_networks(self, calibration: Calibration) -> list[str]:
        """The networks a frame runs with this calibration's fusion weights."""
        return networks_for(self.fused_weights(calibration))

    def anomaly_map(self, raw: RawMaps, calibration: Calibration) -> np.ndarray:
        weights = self.fused_weights(calibration)
        return fuse_maps(raw.maps, calibration.map_stats, weights, self.settings.blur_sigma, self.settings.fusion)

    def inspect(self, image: np.ndarray, calibration: Calibration, decode_healed: bool = False) -> InspectionResult:
        """The verdict, map and regions of one image; `decode_healed` as in `raw_maps`."""
        timer = StageTimer()
        start = time.perf_counter()
        raw = self.raw_maps(
            image, calibration.bins, timer, kinds=self.used_maps(calibration), decode_healed=decode_healed
        )
        with timer.stage("fuse"):
            combined = self.anomaly_map(raw, calibration)
            score = image_score(combined, self.settings.score_top_fraction)
            regions = defect_regions(combined, calibration.pixel_threshold)
        timer.milliseconds["total"] = (time.perf_counter() - start) * 1000.0
        return InspectionResult(
            score=score,
            is_defect=score >= calibration.image_threshold,
            severity_distance=raw.severity_distance,
            severity_bin=raw.severity_bin,
            timestep=raw.timestep,
            steps=raw.steps,
            anomaly_map=combined,
            regions=regions,
            healed_image=raw.healed_image,
            timings_ms=timer.milliseconds,
        )


def defect_regions(anomaly_map: np.ndarray, pixel_threshold: float) -> list[DefectRegion]:
    """Connected areas of the map at or above the pixel threshold, largest first."""
    mask = (anomaly_map >= pixel_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = []
    for label in range(1, count):
        x, y, width, height, area = (int(v) for v in stats[label])
        peak = float(anomaly_map[labels == label].max())
        regions.append(DefectRegion(x=x, y=y, width=width, height=height, area=area, peak=peak))
    return sorted(regions, key=lambda region: region.area, reverse=True)
