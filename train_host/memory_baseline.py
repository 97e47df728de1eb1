"""The memory-only baseline: the KNN patch map alone, PatchCore-style, with no trained network at all.

It is what a user would pick instead of the full method, so the full method is measured against it. It
reuses the run's pieces (dataset split, memory bank, calibration on held-out goods, the device pipeline and
the evaluation), so its figures compare one to one with `train`'s."""

from __future__ import annotations

import numpy as np
import torch

from edge_runtime.pipeline import InspectionPipeline
from train_host.backbone import Backbone, knn_backbone
from train_host.calibrate import expected_false_alarm_rate, fit_calibration, synthetic_recall
from train_host.config import TrainConfig
from train_host.dataset import list_test_samples, load_image, split_holdout, spread_subset, train_images
from train_host.evaluation import EvaluationReport, inspect_test_set, select_samples
from train_host.memory_bank import build_memory, measure_typical_distances
from train_host.run_store import schedule_of
from train_host.torch_setup import pick_device, seed_everything


class BackboneOnlyNetworks:
    """The networks a KNN-only pipeline calls: the frozen backbone. Healing is never asked for."""

    def __init__(self, backbone: Backbone, device: torch.device) -> None:
        self.backbone = backbone.eval().to(device)
        self.device = device

    @torch.inference_mode()
    def knn_features(self, image: np.ndarray) -> list[np.ndarray]:
        batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        return [stage[0].float().cpu().numpy() for stage in self.backbone(batch)]

    def _no_healing(self, *_: object) -> np.ndarray:
        raise RuntimeError("the memory-only baseline has no healing networks")

    map_features = encode = predict_noise = decode = _no_healing


def memory_only_config(config: TrainConfig) -> TrainConfig:
    """The same config with the reconstruction maps switched off."""
    weights = config.inspection.map_weights.model_copy(update={"latent": 0.0, "feature": 0.0, "knn": 1.0})
    inspection = config.inspection.model_copy(update={"map_weights": weights})
    return config.model_copy(update={"inspection": inspection})


def evaluate_memory_only(config: TrainConfig, tag: str = "memory_only") -> EvaluationReport:
    config = memory_only_config(config)
    seed_everything(config.seed, config.threads)
    device = pick_device(config.device)
    data = config.data
    fit_paths, holdout_paths = split_holdout(train_images(data.root), data.holdout_fraction, config.seed)
    fit_paths = spread_subset(fit_paths, data.max_train_images, config.seed)
    backbone = knn_backbone(config.backbone, data.image_size)

    def load(paths: list) -> np.ndarray:
        return np.stack([load_image(path, data.image_size, data.color) for path in paths])

    memory = build_memory(
        backbone, load(fit_paths), config.memory, device, config.seed, config.backbone.fine_stage_count(data.image_size)
    )
    holdout = load(holdout_paths)
    measure_typical_distances(memory, backbone, holdout, device)
    networks = BackboneOnlyNetworks(backbone, device)
    pipeline = InspectionPipeline(networks, memory, config.inspection, schedule_of(config))
    calibration = fit_calibration(pipeline, holdout, config.calibration)
    samples = select_samples(list_test_samples(data.root), data.max_test_images_per_type, config.seed)
    report = inspect_test_set(pipeline, calibration, samples, data, str(data.root), tag)
    report.expected_recall = synthetic_recall(pipeline, calibration, holdout, config.seed)
    report.expected_false_alarm_rate = expected_false_alarm_rate(
        len(holdout), config.calibration.image_false_alarm_rate
    )
    return report
