"""Evaluation of a run on labelled test images, through the device's numpy inspection pipeline.

Image metrics need only the folder labels; pixel metrics cover the images whose every pixel is labelled (good
images and defects with a mask) and are None where a type has no masks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.calibration import Calibration
from edge_runtime.overlay import heatmap_overlay
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.preprocess import to_uint8_image
from edge_runtime.results import InspectionResult
from train_host import metrics
from train_host.calibrate import expected_false_alarm_rate, fit_calibration, synthetic_recall
from train_host.config import ConfigError, DataConfig, TrainConfig, parse_config
from train_host.dataset import (
    GOOD,
    DatasetError,
    TestSample,
    list_test_samples,
    load_test_item,
    spread_subset,
    types_without_masks,
)
from train_host.run_store import TrainedRun, build_pipeline, load_run
from train_host.torch_setup import pick_device, progress, seed_everything

RECALIBRATED_SECTIONS = ("inspection", "calibration")
PICTURES_PER_TYPE = 2


@dataclass(frozen=True)
class TypeMetrics:
    defect_type: str
    defect_images: int
    good_images: int
    image_auroc: float
    # At the stored image threshold: what the line's PLC sees.
    recall: float
    false_alarm_rate: float
    defects_found: int
    false_alarms: int
    f1: metrics.F1Result
    # Defect images with a pixel mask; the pixel metrics are None when there are none.
    masked_defect_images: int
    pixel_auroc: float | None
    aupro: float | None


@dataclass(frozen=True)
class SamplePicture:
    name: str
    defect_type: str
    score: float
    input_image: np.ndarray
    healed_image: np.ndarray | None
    overlay: np.ndarray
    mask: np.ndarray | None


@dataclass
class EvaluationReport:
    run: str
    tag: str
    overrides: list[str]
    image_threshold: float
    mean_inspection_ms: float
    overall: TypeMetrics
    per_type: list[TypeMetrics]
    roc: metrics.RocCurve
    types_without_masks: list[str] = field(default_factory=list)
    pictures: list[SamplePicture] = field(default_factory=list)
    # Recall the stored threshold gives on synthetic defects pasted on held-out goods (None: not measured).
    expected_recall: float | None = None
    expected_false_alarm_rate: float | None = None  # on new good parts, from the held-out goods' count

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "tag": self.tag,
            "overrides": self.overrides,
            "image_threshold": self.image_threshold,
            "mean_inspection_ms": self.mean_inspection_ms,
            "types_without_masks": self.types_without_masks,
            "expected_recall": self.expected_recall,
            "expected_false_alarm_rate": self.expected_false_alarm_rate,
            "overall": asdict(self.overall),
            "per_type": [asdict(m) for m in self.per_type],
        }


def config_with_overrides(run: TrainedRun, overrides: list[str]) -> TrainConfig:
    """The run's config with inspection/calibration overrides; other sections would need retraining."""
    raw = run.config.model_dump(mode="json")
    config = parse_config(raw, f"{run.paths.config} + overrides", overrides)
    for section in raw:
        if section not in RECALIBRATED_SECTIONS and getattr(config, section) != getattr(run.config, section):
            raise ConfigError(f"evaluate can only override {', '.join(RECALIBRATED_SECTIONS)}; '{section}' changed")
    return config


def calibration_for(run: TrainedRun, config: TrainConfig, pipeline: InspectionPipeline) -> Calibration:
    unchanged = all(getattr(config, s) == getattr(run.config, s) for s in RECALIBRATED_SECTIONS)
    if unchanged and run.calibration is not None:
        return run.calibration
    print("inspection settings differ from training: recalibrating on the held-out good images")
    return fit_calibration(pipeline, run.holdout_images(), config.calibration, config.seed)


def select_samples(samples: list[TestSample], max_per_type: int | None, seed: int = 0) -> list[TestSample]:
    """Up to `max_per_type` samples of each type, spread over the type's files rather than its first ones."""
    by_type: dict[str, list[TestSample]] = {}
    for sample in samples:
        by_type.setdefault(sample.defect_type, []).append(sample)
    kept = {id(s) for group in by_type.values() for s in spread_subset(group, max_per_type, seed)}
    return [sample for sample in samples if id(sample) in kept]


def pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> tuple[float | None, float | None]:
    """(pixel AUROC, AUPRO) over fully labelled images; None for both where no pixel is a defect."""
    if not masks.any():
        return None, None
    return metrics.pixel_auroc(maps, masks), metrics.aupro(maps, masks)


def metrics_for(
    name: str,
    chosen: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    known: np.ndarray,
    labels: np.ndarray,
    threshold: float,
) -> TypeMetrics:
    """Metrics over the chosen images (one defect type plus all good images, or everything); `known` marks the
    images whose mask is known (their pixel metrics)."""
    point = metrics.operating_point(scores[chosen], labels[chosen], threshold)
    labelled = chosen & known
    pixel_auroc, aupro = pixel_metrics(maps[labelled], masks[labelled])
    return TypeMetrics(
        defect_type=name,
        defect_images=point.defects,
        good_images=point.goods,
        image_auroc=metrics.auroc(scores[chosen], labels[chosen]),
        recall=point.recall,
        false_alarm_rate=point.false_alarm_rate,
        defects_found=point.defects_found,
        false_alarms=point.false_alarms,
        f1=metrics.f1_at_threshold(scores[chosen], labels[chosen], threshold),
        masked_defect_images=int((labelled & labels).sum()),
        pixel_auroc=pixel_auroc,
        aupro=aupro,
    )


def require_both_kinds(samples: list[TestSample]) -> None:
    """Image metrics and the operating point need good and defective test images."""
    if not samples:
        raise DatasetError("no test images to evaluate")
    test_folder = samples[0].path.parent.parent
    if not any(s.is_defect for s in samples):
        raise DatasetError(f"no defective test images under {test_folder} (expected test/<defect type>/)")
    if all(s.is_defect for s in samples):
        raise DatasetError(f"no good test images in {test_folder / GOOD}: the false-alarm rate and AUROC need them")


def evaluate(
    run_dir: Path, overrides: list[str], tag: str, max_per_type: int | None = None, device: str | None = None
) -> EvaluationReport:
    """Evaluate a training run, its torch networks driving the device pipeline."""
    run = load_run(run_dir)
    config = config_with_overrides(run, overrides)
    seed_everything(config.seed, config.threads)
    pipeline = build_pipeline(run, config.inspection, pick_device(device or config.device))
    calibration = calibration_for(run, config, pipeline)
    samples = select_samples(
        list_test_samples(config.data.root), max_per_type or config.data.max_test_images_per_type, config.seed
    )
    report = inspect_test_set(pipeline, calibration, samples, config.data, str(run_dir), tag, overrides)
    report.expected_recall = synthetic_recall(pipeline, calibration, run.holdout_images(), config.seed)
    report.expected_false_alarm_rate = expected_false_alarm_rate(
        len(run.holdout), config.calibration.image_false_alarm_rate
    )
    return report


def inspect_test_set(
    pipeline: InspectionPipeline,
    calibration: Calibration,
    samples: list[TestSample],
    data: DataConfig,
    source: str,
    tag: str,
    overrides: list[str] | None = None,
) -> EvaluationReport:
    """Inspect every sample and compute the metrics, per defect type and overall."""
    require_both_kinds(samples)
    types = [s.defect_type for s in samples]
    scores, maps, masks, pictures, milliseconds = [], [], [], [], []
    pictured: dict[str, int] = {}
    for sample in progress(samples, f"evaluate {tag}"):
        image, mask = load_test_item(sample, data.image_size, data.color)
        shown = pictured.get(sample.defect_type, 0) < PICTURES_PER_TYPE
        result = pipeline.inspect(image, calibration, decode_healed=shown)
        scores.append(result.score)
        maps.append(result.anomaly_map.astype(np.float32))
        masks.append(np.zeros(data.image_size, dtype=bool) if mask is None else mask)
        milliseconds.append(result.timings_ms["total"])
        if shown:
            pictured[sample.defect_type] = pictured.get(sample.defect_type, 0) + 1
            pictures.append(sample_picture(sample, image, mask, result, calibration.pixel_threshold))
    score_array, map_array, mask_array = np.array(scores), np.stack(maps), np.stack(masks)
    known = np.array([s.has_pixel_truth for s in samples])
    labels = np.array([t != GOOD for t in types])
    threshold = calibration.image_threshold
    type_array = np.array(types)

    def summary(name: str, chosen: np.ndarray) -> TypeMetrics:
        return metrics_for(name, chosen, score_array, map_array, mask_array, known, labels, threshold)

    per_type = [summary(t, ~labels | (type_array == t)) for t in sorted(set(types) - {GOOD})]
    return EvaluationReport(
        run=source,
        tag=tag,
        overrides=overrides or [],
        image_threshold=threshold,
        mean_inspection_ms=float(np.mean(milliseconds)),
        overall=summary("all", np.ones(len(samples), dtype=bool)),
        per_type=per_type,
        roc=metrics.roc_curve(score_array, labels),
        types_without_masks=types_without_masks(samples),
        pictures=pictures,
    )


def sample_picture(
    sample: TestSample, image: np.ndarray, mask: np.ndarray | None, result: InspectionResult, pixel_threshold: float
) -> SamplePicture:
    picture_input = to_uint8_image(image)
    return SamplePicture(
        name=sample.path.stem,
        defect_type=sample.defect_type,
        score=result.score,
        input_image=picture_input,
        healed_image=None if result.healed_image is None else to_uint8_image(result.healed_image),
        overlay=heatmap_overlay(picture_input, result.anomaly_map, pixel_threshold, result.regions),
        mask=mask,
    )


def save_report_json(report: EvaluationReport, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path


def evaluate_bundle(
    archive: Path, trusted_keys: list[Path], data_root: Path, tag: str, max_per_type: int | None = None
) -> EvaluationReport:
    """Evaluate a signed bundle exactly as a device runs it: verified, installed, OpenVINO networks."""
    # Imported here: evaluating a training run needs neither OpenVINO nor the bundle format.
    from edge_runtime.bundle import temporary_slot
    from edge_runtime.inspector import Inspector

    with temporary_slot(archive, trusted_keys, prefix="bundle-eval-") as slot:
        inspector = Inspector.from_slot(slot)
        manifest = inspector.manifest
        data = DataConfig(
            root=data_root, image_size=(manifest.input.height, manifest.input.width), color=manifest.input.color
        )
        samples = select_samples(list_test_samples(data_root), max_per_type)
        return inspect_test_set(inspector.pipeline, inspector.calibration, samples, data, str(archive), tag)
