"""Typed, strict training configuration loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from edge_runtime.config_errors import ConfigError, describe_problems
from edge_runtime.preprocess import ColorMode
from edge_runtime.settings import InspectionSettings, StrictModel

BORDER_MULTIPLE = 32  # the coarsest stride, so every stage map crops back to the image exactly
BACKBONE_STAGE_COUNT = 7  # EfficientNet-Lite0 has seven block stages, strides 2,4,8,16,16,32,32
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)


class DataConfig(StrictModel):
    root: Path
    image_size: tuple[int, int] = Field((256, 256), description="(height, width), multiples of 32")
    color: ColorMode = "gray"
    holdout_fraction: float = Field(0.15, gt=0.0, lt=0.9, description="train/good slice kept for calibration")
    max_train_images: int | None = Field(None, ge=4)
    max_test_images_per_type: int | None = Field(None, ge=1)

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, size: tuple[int, int]) -> tuple[int, int]:
        if any(side < 32 or side % 32 for side in size):
            raise ValueError(f"both sides must be multiples of 32 (and >= 32), got {list(size)}")
        return size


class BackboneConfig(StrictModel):
    # Stride 8 and both stride-16 stages: texture detail in one patch vector on the stride-8 grid.
    knn_stages: list[int] = Field([2, 3, 4], min_length=1, description="stages feeding the KNN memory")
    # The first stride-32 stage adds part-level context. Searched on its own grid in a memory of its own it lifted
    # the memory's image AUROC on both example sets, more than as a wider fine vector and at a fraction of the
    # search (docs/RESULTS.md).
    knn_coarse_stages: list[int] = Field(
        [5],
        description="stages searched on their own grid, their distances joined with the fine map; [] = none; "
        "a stage is left out at image sizes that give it fewer than min_coarse_cells cells on the short side",
    )
    # A coarse grid narrower than this compares too few cells to tell a defect from the part around it: at 128 px
    # (4 x 4 cells) and 64 px (2 x 2) the stride-32 stage lowered the memory's image AUROC (docs/RESULTS.md).
    min_coarse_cells: int = Field(6, ge=1, description="fewest cells on a coarse stage grid's short side")
    map_stages: list[int] = Field([1, 2, 4], min_length=1, description="stages compared input vs healed")
    reflect_border: int = Field(
        32,
        ge=0,
        multiple_of=BORDER_MULTIPLE,
        description="pixels mirrored around the image before the backbone; capped below the image's short side",
    )

    def border_for(self, image_size: tuple[int, int]) -> int:
        """The mirrored border for this image size: a mirror cannot be wider than the image it mirrors."""
        below_image = (min(image_size) - 1) // BORDER_MULTIPLE * BORDER_MULTIPLE
        return min(self.reflect_border, below_image)

    @field_validator("knn_stages", "map_stages", "knn_coarse_stages")
    @classmethod
    def _valid_stages(cls, stages: list[int]) -> list[int]:
        bad = [s for s in stages if not 0 <= s < BACKBONE_STAGE_COUNT]
        if bad:
            raise ValueError(f"stages must be in 0..{BACKBONE_STAGE_COUNT - 1}, got {bad}")
        return sorted(set(stages))

    @model_validator(mode="after")
    def _coarse_after_fine(self) -> BackboneConfig:
        # The backbone returns its stages finest first: the coarse memory takes the maps after the fine ones.
        if self.knn_coarse_stages and min(self.knn_coarse_stages) <= max(self.knn_stages):
            raise ValueError(
                f"knn_coarse_stages {self.knn_coarse_stages} must all come after knn_stages {self.knn_stages}"
            )
        return self

    def coarse_stages_for(self, image_size: tuple[int, int]) -> list[int]:
        """The coarse stages used at this image size: those with at least min_coarse_cells on the short side."""
        return [s for s in self.knn_coarse_stages if min(image_size) // STAGE_STRIDES[s] >= self.min_coarse_cells]

    def all_knn_stages(self, image_size: tuple[int, int]) -> list[int]:
        """Every stage the KNN backbone returns at this image size: the fine ones, then the coarse ones."""
        return self.knn_stages + self.coarse_stages_for(image_size)

    def fine_stage_count(self, image_size: tuple[int, int]) -> int | None:
        """How many of the KNN backbone's maps the fine memory takes; None when there is no coarse memory."""
        return len(self.knn_stages) if self.coarse_stages_for(image_size) else None


class AutoencoderConfig(StrictModel):
    channels: list[int] = Field([8, 16, 32, 64], min_length=4, max_length=4)
    # Two, where METHOD.md's pretrained VAE has four: an autoencoder this small, trained on a few hundred good
    # images, keeps a defect in a wider latent, and one step at the severity's noise level then leaves it in place.
    latent_channels: int = Field(2, ge=1)
    iterations: int = Field(1500, ge=1)
    batch_size: int = Field(16, ge=1)
    crop_size: int = Field(128, ge=32, description="random square crops for training (fully convolutional)")
    learning_rate: float = Field(1e-3, gt=0)
    # L1 alone leaves fine texture blurred, and the feature map then lights up on texture everywhere.
    feature_loss_weight: float = Field(
        0.0, ge=0, description="weight of the frozen map backbone's cosine distance (reconstruction vs input)"
    )


class UNetConfig(StrictModel):
    base_channels: int = Field(32, ge=8)
    channel_multipliers: list[int] = Field([1, 2, 4], min_length=1)
    attention_levels: list[int] = Field([2], description="levels (0 = finest) with self-attention")
    iterations: int = Field(2500, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    max_train_timestep: int = Field(
        200, ge=1, le=1000, description="train on t < this; inspection never goes past inspection.t_max"
    )


class ScheduleConfig(StrictModel):
    num_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(0.0015, gt=0)
    beta_end: float = Field(0.0195, gt=0)


class AdaptationConfig(StrictModel):
    enabled: bool = True
    iterations: int = Field(80, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    distill_weight: float = Field(1.0, ge=0, description="pull towards the frozen ImageNet copy (anti-collapse)")


class MemoryConfig(StrictModel):
    mode: Literal["patch", "image"] = "patch"
    # 16,000 (was 8,000) keeps the rarer good patches too: magnetic_tile's image AUROC 0.961 -> 0.967, kolektor_sdd
    # level, about 1.5 ms more search per 256 px frame; a larger pool did not help (docs/RESULTS.md).
    coreset_size: int = Field(16000, ge=1, description="patch vectors kept by greedy coreset selection")
    coreset_pool: int = Field(200_000, ge=1, description="patch vectors sampled before coreset selection")
    # Storing projected vectors lost most of what the backbone knows (KNN map alone: image AUROC 0.802 against
    # 0.866 full width on magnetic_tile, docs/RESULTS.md); the projection now only speeds up coreset selection.
    projection_dim: int | None = Field(None, ge=8, description="random projection of stored vectors; null = full")
    selection_dim: int | None = Field(128, ge=8, description="random projection used only to pick the coreset")
    # A stride-32 grid has 1/16 of the stride-8 patches: 40,000 at 256 px from 640 images, kept to about a tenth.
    coarse_coreset_size: int = Field(4000, ge=1, description="vectors kept in the coarse memory")
    neighbours: int | None = Field(None, ge=1, description="k; default 1 for patch, 20 for image (paper)")
    # Search breadth: 8 measured within 0.001 of 16 on image and pixel AUROC and AUPRO on both example sets, and
    # takes about 4 ms less per 256 px frame (docs/BENCHMARKS.md); 4 lost 0.003-0.004 on magnetic_tile. The build
    # keeps ef_construction >= 100 either way.
    ef: int = Field(8, ge=1)
    connections: int = Field(16, ge=4)

    @property
    def k(self) -> int:
        if self.neighbours is not None:
            return self.neighbours
        return 1 if self.mode == "patch" else 20


class CalibrationConfig(StrictModel):
    image_false_alarm_rate: float = Field(0.02, gt=0, lt=1, description="target rate on good held-out images")
    pixel_quantile: float = Field(0.999, gt=0.5, lt=1)
    map_scale_quantile: float = Field(0.99, gt=0.5, lt=1)
    # Off by default: on both example sets the weights the synthetic defects preferred moved weight from the KNN map
    # to the healing maps and lost real-defect accuracy (kolektor_sdd image AUROC 0.944 -> 0.927 even with the bound
    # below; docs/RESULTS.md). Pasted blobs and scratches are not the defects a line meets.
    choose_map_weights: bool = Field(
        False,
        description="scale the configured map weights where that surely separates synthetic defects from held-out "
        "goods better",
    )
    edge_band_px: int = Field(8, ge=0, description="map statistics per band this wide from the image edge; 0 = one")


class TrainConfig(StrictModel):
    data: DataConfig
    backbone: BackboneConfig = BackboneConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    unet: UNetConfig = UNetConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    memory: MemoryConfig = MemoryConfig()
    inspection: InspectionSettings = InspectionSettings()
    calibration: CalibrationConfig = CalibrationConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = all cores")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.inspection.map_weights.knn > 0 and self.memory.mode != "patch":
            raise ValueError("inspection.map_weights.knn > 0 needs memory.mode 'patch'")
        if self.inspection.t_max >= self.schedule.num_timesteps:
            raise ValueError("inspection.t_max must be below schedule.num_timesteps")
        return self


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=yaml_value` overrides to a raw config mapping (a copy)."""
    result = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return result


def parse_config(raw: Any, source: str, overrides: list[str] | None = None) -> TrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(source, describe_problems(error)) from None


def read_config_file(path: Path) -> Any:
    """The YAML content of a config file, unvalidated; a missing or unreadable file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def load_config(path: Path, overrides: list[str] | None = None) -> TrainConfig:
    return parse_config(read_config_file(path), str(path), overrides)


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
