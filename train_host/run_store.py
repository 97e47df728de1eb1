"""The layout of a training run folder, and loading a finished run back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_runtime.calibration import Calibration
from edge_runtime.knn import KnnMemory
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.preprocess import channels_of
from edge_runtime.schedule import DiffusionSchedule
from edge_runtime.settings import InspectionSettings, fused_by_sum_if_older, scored_by_maximum_if_older
from train_host.autoencoder import Autoencoder
from train_host.backbone import Backbone, knn_backbone, map_backbone
from train_host.config import ConfigError, TrainConfig, parse_config, read_config_file
from train_host.dataset import load_image
from train_host.torch_networks import TorchNetworks
from train_host.unet import UNet


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def autoencoder(self) -> Path:
        return self.root / "autoencoder.pt"

    @property
    def unet(self) -> Path:
        return self.root / "unet.pt"

    @property
    def adapted_backbone(self) -> Path:
        return self.root / "backbone_adapted.pt"

    @property
    def memory(self) -> Path:
        return self.root / "memory"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def log(self) -> Path:
        return self.root / "training_log.json"

    @property
    def evaluations(self) -> Path:
        return self.root / "eval"


def save_module(module: torch.nn.Module, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(module.state_dict(), tmp)
    tmp.replace(path)  # a crash mid-write never leaves a half checkpoint that resume would trust


def new_autoencoder(config: TrainConfig) -> Autoencoder:
    a = config.autoencoder
    return Autoencoder(channels_of(config.data.color), a.channels, a.latent_channels)


def new_unet(config: TrainConfig) -> UNet:
    u = config.unet
    return UNet(config.autoencoder.latent_channels, u.base_channels, u.channel_multipliers, u.attention_levels)


def load_state(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint missing: {path}")
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module.eval()


@dataclass
class TrainedRun:
    paths: RunPaths
    config: TrainConfig
    autoencoder: Autoencoder
    unet: UNet
    knn_backbone: Backbone
    frozen_map_backbone: Backbone
    adapted_map_backbone: Backbone
    memory: KnnMemory
    calibration: Calibration | None
    holdout: list[Path]

    def holdout_images(self) -> np.ndarray:
        data = self.config.data
        return np.stack([load_image(path, data.image_size, data.color) for path in self.holdout])


def schedule_of(config: TrainConfig) -> DiffusionSchedule:
    s = config.schedule
    return DiffusionSchedule(s.num_timesteps, s.beta_start, s.beta_end)


def build_pipeline(run: TrainedRun, settings: InspectionSettings, device: torch.device) -> InspectionPipeline:
    """The device's numpy pipeline, driven by this run's torch models."""
    map_backbone = run.adapted_map_backbone if settings.use_adapted_backbone else run.frozen_map_backbone
    networks = TorchNetworks(run.autoencoder, run.unet, run.knn_backbone, map_backbone, device)
    return InspectionPipeline(networks, run.memory, settings, schedule_of(run.config))


def load_run_config(path: Path) -> TrainConfig:
    """The config a run was trained with. Runs made before `inspection.score_top_fraction` existed were
    calibrated on maximum scores, so for them the setting is 0 (the maximum), not today's default; runs made before
    `inspection.fusion` existed were calibrated on summed maps and keep summing; runs made before
    `backbone.knn_coarse_stages` existed have none."""
    raw = read_config_file(path)
    if isinstance(raw, dict) and isinstance(raw.get("inspection"), dict):
        raw["inspection"] = fused_by_sum_if_older(scored_by_maximum_if_older(raw["inspection"]))
    if isinstance(raw, dict) and isinstance(raw.get("backbone"), dict):
        raw["backbone"] = one_memory_if_older(raw["backbone"])
    return parse_config(raw, str(path))


def one_memory_if_older(raw_backbone: dict) -> dict:
    """Raw backbone settings written before `knn_coarse_stages` existed: their memory is one scale of all
    `knn_stages`, so they have no coarse stages, not today's default."""
    return {"knn_coarse_stages": []} | raw_backbone


def load_run(root: Path, require_calibration: bool = True) -> TrainedRun:
    paths = RunPaths(root)
    if not paths.config.is_file():
        raise ConfigError(f"{root} is not a training run (no {paths.config.name})")
    if require_calibration and not paths.calibration.is_file():
        raise ConfigError(f"{root} is not a finished training run (no {paths.calibration.name})")
    config = load_run_config(paths.config)
    size = config.data.image_size
    adapted = map_backbone(config.backbone, size)
    if paths.adapted_backbone.is_file():
        load_state(adapted, paths.adapted_backbone)
    split = json.loads(paths.split.read_text())
    return TrainedRun(
        paths=paths,
        config=config,
        autoencoder=load_state(new_autoencoder(config), paths.autoencoder),
        unet=load_state(new_unet(config), paths.unet),
        knn_backbone=knn_backbone(config.backbone, size),
        frozen_map_backbone=map_backbone(config.backbone, size).eval(),
        adapted_map_backbone=adapted.eval(),
        memory=KnnMemory.load(paths.memory),
        calibration=(
            Calibration.from_dict(json.loads(paths.calibration.read_text())) if paths.calibration.is_file() else None
        ),
        holdout=[Path(p) for p in split["holdout"]],
    )
