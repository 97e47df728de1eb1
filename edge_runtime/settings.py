"""Typed inspection settings: how an image is healed and scored. Shared by host evaluation and device."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_runtime.anomaly_map import FusionRule


class StrictModel(BaseModel):
    """Unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MapWeights(StrictModel):
    latent: float = Field(0.85, ge=0.0)
    # The paper fuses 0.15 of the feature map. Beside the KNN and latent maps it moved no figure by more than 0.002 on
    # either example set, and it costs a decode and two map-backbone passes, a third of a frame's time
    # (docs/RESULTS.md). 0.15 restores the paper's fusion.
    feature: float = Field(0.0, ge=0.0)
    knn: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _some_map_used(self) -> MapWeights:
        if self.latent + self.feature + self.knn <= 0.0:
            raise ValueError("at least one of latent, feature, knn must have a positive weight")
        return self

    @property
    def needs_healing(self) -> bool:
        return self.latent > 0.0 or self.feature > 0.0

    def as_dict(self) -> dict[str, float]:
        return {"latent": self.latent, "feature": self.feature, "knn": self.knn}


class InspectionSettings(StrictModel):
    t_max: int = Field(80, ge=10, le=999, description="largest noise timestep (of 1000) the severity can pick")
    dynamic_noise: bool = Field(True, description="pick the noise timestep per image from the KNN severity")
    fixed_timestep: int = Field(60, ge=0, le=999, description="noise timestep when dynamic_noise is off")
    # One step (was two) measured better on both example sets in image AUROC, pixel AUROC and AUPRO with the
    # 16,000-patch memory, and saves a denoiser call (docs/RESULTS.md).
    denoise_steps: int = Field(1, ge=0, le=50, description="denoiser calls per image")
    add_noise: bool = Field(False, description="add Gaussian noise instead of noiseless input scaling")
    condition_weight: float = Field(4.0, ge=0.0, description="DDAD conditioning weight w")
    # Off by default: on both example sets the adapted backbone measured no better than ImageNet's
    # (docs/RESULTS.md, ablations); the adapted copy is still trained, so it can be switched on per run.
    use_adapted_backbone: bool = Field(False, description="compare features with the domain-adapted backbone")
    map_weights: MapWeights = MapWeights()
    blur_sigma: float = Field(4.0, ge=0.0)
    # Bundles and runs made before this setting scored by the maximum (0); they keep doing so (manifest schema 4).
    score_top_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="image score = mean of this share of the map's highest pixels; 0 = max"
    )
    # The healing maps count only where the memory also finds the pixel unusual: better image AUROC, recall and false
    # alarms on both example sets, maps level (docs/RESULTS.md). Bundles and runs made before keep the plain sum.
    fusion: FusionRule = Field("capped", description="capped: healing maps add at most the KNN map's evidence; sum")
    severity_bins: int = Field(10, ge=2, le=100)
    noise_seed: int = 0


def scored_by_maximum_if_older(raw_inspection: dict) -> dict:
    """Raw inspection settings written before `score_top_fraction` existed, made to keep scoring by the maximum:
    their thresholds were set on maximum scores, and today's default would shift every score."""
    return {"score_top_fraction": 0.0} | raw_inspection


def fused_by_sum_if_older(raw_inspection: dict) -> dict:
    """Raw inspection settings written before `fusion` existed, made to keep the plain sum of the maps their
    thresholds were set on."""
    return {"fusion": "sum"} | raw_inspection
