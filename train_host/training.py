"""The training run: autoencoder -> denoiser -> domain adaptation -> KNN memory -> calibration.

Each step saves its output in the run folder; running again resumes after the last finished step."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_runtime.sampler import ConditionedDDIMSampler
from train_host.adaptation import adapt_backbone
from train_host.backbone import knn_backbone, loss_backbone, map_backbone
from train_host.calibrate import expected_false_alarm_rate, fit_calibration
from train_host.config import ConfigError, TrainConfig, config_to_yaml
from train_host.dataset import load_image, split_holdout, spread_subset, train_images
from train_host.fit_autoencoder import crop_shape, train_autoencoder
from train_host.fit_denoiser import encode_with_flips, train_denoiser
from train_host.memory_bank import build_memory, measure_typical_distances
from train_host.run_store import (
    RunPaths,
    build_pipeline,
    load_run,
    load_run_config,
    load_state,
    new_autoencoder,
    new_unet,
    save_module,
    schedule_of,
)
from train_host.torch_setup import pick_device, progress, seed_everything


def load_images(paths: list[Path], config: TrainConfig) -> np.ndarray:
    data = config.data
    return np.stack([load_image(p, data.image_size, data.color) for p in progress(paths, "loading images")])


def prepare_run_folder(config: TrainConfig, paths: RunPaths) -> None:
    """Write the config, or check that a resumed run was started with the same one."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.config.is_file():
        if load_run_config(paths.config) != config:
            raise ConfigError(f"{paths.root} holds a run with a different config; use a new --out or --fresh")
        return
    paths.config.write_text(config_to_yaml(config))


class StepLog:
    """Durations and final losses of the steps, kept in training_log.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, done: bool, action: Callable[[], list[float] | None]) -> None:
        if done:
            print(f"[{name}] already done, skipping")
            return
        start = time.perf_counter()
        losses = action()
        entry = {"seconds": round(time.perf_counter() - start, 1)}
        if losses:
            entry["final_loss"] = float(np.mean(losses[-50:]))
        self.entries[name] = entry
        self.path.write_text(json.dumps(self.entries, indent=2))
        print(f"[{name}] done in {entry['seconds']} s")


def train(config: TrainConfig, out: Path) -> RunPaths:
    seed_everything(config.seed, config.threads)
    device = pick_device(config.device)
    paths = RunPaths(out)
    started = time.perf_counter()
    # The dataset is checked before anything is written, so a typo leaves no half-made run folder.
    fit_paths, holdout_paths = split_holdout(train_images(config.data.root), config.data.holdout_fraction, config.seed)
    prepare_run_folder(config, paths)
    fit_paths = spread_subset(fit_paths, config.data.max_train_images, config.seed)
    paths.split.write_text(json.dumps({"fit": [str(p) for p in fit_paths], "holdout": [str(p) for p in holdout_paths]}))
    images = load_images(fit_paths, config)
    size = config.data.image_size
    schedule = schedule_of(config)
    log = StepLog(paths.log)

    def fit_autoencoder() -> list[float]:
        features = None
        if config.autoencoder.feature_loss_weight > 0:
            features = loss_backbone(config.backbone, crop_shape(images, config.autoencoder))
        model, losses = train_autoencoder(images, config.autoencoder, device, config.seed, features)
        save_module(model, paths.autoencoder)
        return losses

    log.run("autoencoder", paths.autoencoder.is_file(), fit_autoencoder)
    autoencoder = load_state(new_autoencoder(config), paths.autoencoder).to(device)

    def fit_unet() -> list[float]:
        latents = encode_with_flips(autoencoder, images, device)
        model, losses = train_denoiser(latents, config.unet, schedule, device, config.seed)
        save_module(model, paths.unet)
        return losses

    log.run("denoiser", paths.unet.is_file(), fit_unet)
    unet = load_state(new_unet(config), paths.unet).to(device)

    def fit_adaptation() -> list[float]:
        settings = config.inspection
        sampler = ConditionedDDIMSampler(schedule, max(settings.denoise_steps, 1), settings.condition_weight)
        backbone = map_backbone(config.backbone, size)
        adapted, losses = adapt_backbone(
            backbone, autoencoder, unet, sampler, settings, images, config.adaptation, device, config.seed
        )
        save_module(adapted, paths.adapted_backbone)
        return losses

    if config.adaptation.enabled:
        log.run("adaptation", paths.adapted_backbone.is_file(), fit_adaptation)

    @functools.cache
    def holdout_images() -> np.ndarray:
        # Loaded once for the memory's units and the calibration, and not at all when both steps are done.
        return load_images(holdout_paths, config)

    def fit_memory() -> None:
        frozen = knn_backbone(config.backbone, size).to(device)
        fine_stages = config.backbone.fine_stage_count(size)
        memory = build_memory(frozen, images, config.memory, device, config.seed, fine_stages)
        measure_typical_distances(memory, frozen, holdout_images(), device)
        memory.save(paths.memory)

    log.run("memory", (paths.memory / "memory.json").is_file(), fit_memory)

    def calibrate() -> None:
        pipeline = build_pipeline(load_run(paths.root, require_calibration=False), config.inspection, device)
        held_out = holdout_images()
        calibration = fit_calibration(pipeline, held_out, config.calibration, config.seed)
        paths.calibration.write_text(json.dumps(calibration.to_dict(), indent=2))
        rate = config.calibration.image_false_alarm_rate
        print(
            f"image threshold {calibration.image_threshold:.4f}: reached by {rate:.1%} of {len(held_out)} held-out "
            f"good images, by about {expected_false_alarm_rate(len(held_out), rate):.1%} of new good parts"
        )

    log.run("calibration", paths.calibration.is_file(), calibrate)
    log.entries["total_seconds"] = round(time.perf_counter() - started, 1)
    log.path.write_text(json.dumps(log.entries, indent=2))
    return paths
