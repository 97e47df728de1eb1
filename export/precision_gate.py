"""The precision gate: per network, the cheapest precision that keeps the image score and the heatmap.

Each candidate mix of network precisions is recalibrated and measured on one gate set: the run's held-out good
images, synthetic defects made from them (so every set has pixel truth, however few labelled test images it
has) and, where the set has them, a few labelled test images per type (their masks only where present). A
candidate is kept only if image AUROC, pixel AUROC and AUPRO each stay within their allowance of all-FP32, and
the upper confidence bounds of the two AUROC drops as well (`train_host.paired_bootstrap`): a small gate set must not
let a drop through by luck.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge_runtime.calibration import Calibration
from edge_runtime.openvino_networks import NETWORK_NAMES, OpenVinoNetworks
from edge_runtime.pipeline import InspectionPipeline, networks_for, weights_in_force
from train_host import metrics
from train_host.calibrate import fit_calibration
from train_host.config import DataConfig
from train_host.dataset import list_test_samples, load_test_item
from train_host.evaluation import pixel_metrics, select_samples
from train_host.paired_bootstrap import PerImageCounts, count_per_image, drop_upper_bounds
from train_host.run_store import TrainedRun, schedule_of
from train_host.synthetic_defects import make_synthetic_defects
from train_host.torch_setup import progress

Precision = Literal["int8", "fp16", "fp32"]
FALLBACK_ORDER: tuple[Precision, ...] = ("int8", "fp16", "fp32")
# A network no frame runs under the bundle's fusion weights (the decoder and map backbone without the feature map)
# moves none of the gate's figures, so INT8 would pass unjudged; it stays in FP16, whose output matches FP32, for
# whatever does run it: a report decoding the healed image (INT8 decoder on magnetic_tile: mean error 0.11 against
# FP32, twice the autoencoder's own, docs/RESULTS.md).
OFF_FRAME_PRECISION: Precision = "fp16"


@dataclass(frozen=True)
class GateFigures:
    """What the gate compares; a pixel figure is None only when the gate set has no defect pixel."""

    image_auroc: float
    pixel_auroc: float | None
    aupro: float | None


@dataclass(frozen=True)
class Measurement:
    """A gate set's figures under one mix, and the per-image counts their confidence bounds are drawn from."""

    figures: GateFigures
    counts: PerImageCounts


@dataclass(frozen=True)
class Allowances:
    """The largest drop against all-FP32 each figure may take on the line's images. The drop measured on the gate
    set may use only `measured_share` of it, and the drop's upper confidence bound all of it: the gate set is not
    the line's images (on magnetic_tile a mix measured at 0.0055 pixel AUROC, bound 0.0098, cost 0.011 on the test
    images, docs/RESULTS.md)."""

    image_auroc: float = 0.01
    pixel_auroc: float = 0.01
    aupro: float = 0.01
    measured_share: float = 0.5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"allowed {name} drop must be within [0, 1], got {value}")

    def limits(self) -> tuple[GateFigures, GateFigures]:
        """(the limit of each measured drop, the limit of each drop's upper bound)."""
        whole = GateFigures(self.image_auroc, self.pixel_auroc, self.aupro)
        share = self.measured_share
        return GateFigures(self.image_auroc * share, self.pixel_auroc * share, self.aupro * share), whole


@dataclass(frozen=True)
class Trial:
    network: str  # "all" when every network is set to one precision
    precision: Precision
    figures: GateFigures
    drops: GateFigures
    accepted: bool
    drop_bounds: GateFigures | None = None  # upper confidence bounds of the AUROC drops; AUPRO is not bounded

    def to_dict(self) -> dict:
        return {
            "network": self.network,
            "precision": self.precision,
            **asdict(self.figures),
            "drops": asdict(self.drops),
            "drop_upper_bounds": None if self.drop_bounds is None else asdict(self.drop_bounds),
            "accepted": self.accepted,
            # The image figures under the names earlier reports used.
            "auroc": self.figures.image_auroc,
            "drop": self.drops.image_auroc,
        }


@dataclass(frozen=True)
class GateSet:
    images: np.ndarray  # N x C x H x W in [-1, 1]
    labels: np.ndarray  # N, True for defective
    masks: np.ndarray  # N x H x W bool; all False where unknown
    known: np.ndarray  # N, whether the mask is known (pixel metrics)
    held_out_goods: int
    synthetic_defects: int
    test_images: int
    test_images_with_pixel_truth: int

    def describe(self) -> dict[str, int]:
        return {
            "held_out_goods": self.held_out_goods,
            "synthetic_defects": self.synthetic_defects,
            "test_images": self.test_images,
            "test_images_with_pixel_truth": self.test_images_with_pixel_truth,
        }


@dataclass
class GateLog:
    """What the gate measured, kept beside the bundle."""

    gate_set: dict[str, int] = field(default_factory=dict)
    allowances: Allowances = field(default_factory=Allowances)
    baseline: GateFigures | None = None
    trials: list[Trial] = field(default_factory=list)
    off_frame: list[str] = field(default_factory=list)  # not judged: no frame runs them

    def to_dict(self) -> dict:
        return {
            "gate_set": self.gate_set,
            "allowances": asdict(self.allowances),
            "not_judged_off_frame": self.off_frame,
            "gate_baseline": None if self.baseline is None else asdict(self.baseline),
            "gate_baseline_auroc": None if self.baseline is None else self.baseline.image_auroc,
            "trials": [trial.to_dict() for trial in self.trials],
        }


def build_gate_set(
    holdout: np.ndarray,
    data: DataConfig,
    test_per_type: int,
    seed: int,
    max_goods: int | None = None,
    defects_per_good: int = 1,
) -> GateSet:
    """Held-out goods, `defects_per_good` synthetic defects made from each (a different kind each time), and
    labelled test images where the set has them."""
    if defects_per_good < 1:
        raise ValueError(f"defects_per_good must be at least 1, got {defects_per_good}")
    goods = holdout if max_goods is None else holdout[:max_goods]
    made = [make_synthetic_defects(goods, seed + copy, first_kind=copy) for copy in range(defects_per_good)]
    samples = select_samples(list_test_samples(data.root), test_per_type) if (data.root / "test").is_dir() else []
    items = [load_test_item(sample, data.image_size, data.color) for sample in samples]
    test_masks = [np.zeros(data.image_size, dtype=bool) if mask is None else mask for _, mask in items]
    count, height, width = len(goods), *data.image_size
    synthetic = count * defects_per_good
    synthetic_images = [images for images, _ in made]
    synthetic_masks = [masks for _, masks in made]
    return GateSet(
        images=np.concatenate([goods, *synthetic_images, *[image[None] for image, _ in items]]).astype(np.float32),
        labels=np.array([False] * count + [True] * synthetic + [s.is_defect for s in samples]),
        masks=np.concatenate(
            [np.zeros((count, height, width), dtype=bool), *synthetic_masks, *[m[None] for m in test_masks]]
        ),
        known=np.array([True] * (count + synthetic) + [s.has_pixel_truth for s in samples]),
        held_out_goods=count,
        synthetic_defects=synthetic,
        test_images=len(samples),
        test_images_with_pixel_truth=sum(s.has_pixel_truth for s in samples),
    )


def measure(pipeline: InspectionPipeline, calibration: Calibration, gate_set: GateSet) -> Measurement:
    scores_list, maps_list = [], []
    for image in progress(gate_set.images, "precision gate"):
        result = pipeline.inspect(image, calibration)
        scores_list.append(result.score)
        maps_list.append(result.anomaly_map.astype(np.float32))
    scores, maps, known = np.array(scores_list), np.stack(maps_list), gate_set.known
    pixel_auroc, aupro = pixel_metrics(maps[known], gate_set.masks[known])
    figures = GateFigures(metrics.auroc(scores, gate_set.labels), pixel_auroc, aupro)
    return Measurement(figures, count_per_image(scores, gate_set.labels, maps, gate_set.masks, known))


def bound_drops(baseline: Measurement, candidate: Measurement, seed: int) -> GateFigures:
    image, pixel = drop_upper_bounds(baseline.counts, candidate.counts, seed)
    return GateFigures(image_auroc=image, pixel_auroc=pixel, aupro=None)


def judge(
    baseline: GateFigures, figures: GateFigures, allowances: Allowances, bounds: GateFigures | None = None
) -> tuple[GateFigures, bool]:
    """(drops against the baseline, whether every drop stays within its share of the allowance and every upper
    bound of a drop, where given, within the allowance)."""

    def drop(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None else before - after

    drops = GateFigures(
        image_auroc=baseline.image_auroc - figures.image_auroc,
        pixel_auroc=drop(baseline.pixel_auroc, figures.pixel_auroc),
        aupro=drop(baseline.aupro, figures.aupro),
    )
    drop_limits, bound_limits = allowances.limits()
    checked = [(drops, drop_limits)] if bounds is None else [(drops, drop_limits), (bounds, bound_limits)]
    within = [
        value <= allowed
        for figures_checked, limits in checked
        for value, allowed in zip(asdict(figures_checked).values(), asdict(limits).values(), strict=True)
        if value is not None
    ]
    return drops, all(within)


class GateEvaluator:
    """The gate's figures for a mix of network precisions, recalibrated on the held-out goods each time."""

    def __init__(self, run: TrainedRun, holdout: np.ndarray, gate_set: GateSet) -> None:
        self.run = run
        self.holdout = holdout
        self.gate_set = gate_set

    def pipeline(self, files: dict[str, Path]) -> InspectionPipeline:
        networks = OpenVinoNetworks.from_files(files)
        return InspectionPipeline(networks, self.run.memory, self.run.config.inspection, schedule_of(self.run.config))

    @property
    def chosen_weights(self) -> dict[str, float] | None:
        """The fusion weights the training chose on synthetic defects, if it chose any."""
        return self.run.calibration.map_weights if self.run.calibration is not None else None

    def frame_networks(self) -> list[str]:
        """The networks every frame of the bundle runs: the only ones whose precision the gate's figures judge."""
        return networks_for(weights_in_force(self.chosen_weights, self.run.config.inspection))

    def calibrate(self, pipeline: InspectionPipeline) -> Calibration:
        # The chosen fusion weights stay: the gate judges precision, not fusion.
        config = self.run.config
        return fit_calibration(
            pipeline, self.holdout, config.calibration, config.seed, fixed_weights=self.chosen_weights
        )

    def measure(self, files: dict[str, Path]) -> Measurement:
        pipeline = self.pipeline(files)
        return measure(pipeline, self.calibrate(pipeline), self.gate_set)

    @property
    def seed(self) -> int:
        return self.run.config.seed


def _files(variants: dict[str, dict[Precision, Path]], mix: dict[str, Precision]) -> dict[str, Path]:
    return {name: variants[name][mix[name]] for name in NETWORK_NAMES}


def _show(figures: GateFigures | None) -> str:
    if figures is None:
        return "n/a"
    values = [figures.image_auroc, figures.pixel_auroc, figures.aupro]
    return "/".join("-" if value is None else f"{value:+.4f}" for value in values)


def choose_precisions(
    variants: dict[str, dict[Precision, Path]], gate: GateEvaluator, allowances: Allowances, log: GateLog
) -> tuple[dict[str, Precision], dict[str, float | None]]:
    """Per network in turn, the cheapest precision whose mix with the choices so far stays within every
    allowance of all-FP32 (bounds included); returns the choices and each network's image AUROC drop (None in
    FP32 and for a network no frame runs, which stays in `OFF_FRAME_PRECISION`)."""
    chosen: dict[str, Precision] = {name: "fp32" for name in NETWORK_NAMES}
    log.allowances = allowances
    baseline = gate.measure(_files(variants, chosen))
    log.baseline = baseline.figures
    drops: dict[str, float | None] = {name: None for name in NETWORK_NAMES}
    on_frame = gate.frame_networks()
    for name in NETWORK_NAMES:
        if name not in on_frame:
            chosen[name] = OFF_FRAME_PRECISION
            log.off_frame.append(name)
            print(f"gate: {name} runs on no frame with these fusion weights: {OFF_FRAME_PRECISION}, not judged")
            continue
        for precision in FALLBACK_ORDER[:-1]:
            mix = {**chosen, name: precision}
            candidate = gate.measure(_files(variants, mix))
            bounds = bound_drops(baseline, candidate, gate.seed)
            drop, accepted = judge(baseline.figures, candidate.figures, allowances, bounds)
            log.trials.append(Trial(name, precision, candidate.figures, drop, accepted, bounds))
            print(
                f"gate: {name} {precision}: image AUROC/pixel AUROC/AUPRO drops {_show(drop)}, "
                f"upper bounds {_show(bounds)}: {'kept' if accepted else 'rejected'}"
            )
            if accepted:
                chosen[name], drops[name] = precision, drop.image_auroc
                break
    return chosen, drops


def fixed_precisions(
    variants: dict[str, dict[Precision, Path]], gate: GateEvaluator, precision: Precision, log: GateLog
) -> tuple[dict[str, Precision], dict[str, float | None]]:
    """Every network in one precision, as asked; the drops against FP32 are still measured and recorded."""
    chosen: dict[str, Precision] = {name: precision for name in NETWORK_NAMES}
    if precision == "fp32":
        return chosen, {name: None for name in NETWORK_NAMES}
    baseline = gate.measure(_files(variants, {name: "fp32" for name in NETWORK_NAMES}))
    candidate = gate.measure(_files(variants, chosen))
    log.baseline = baseline.figures
    bounds = bound_drops(baseline, candidate, gate.seed)
    drop, within = judge(baseline.figures, candidate.figures, log.allowances, bounds)
    log.trials.append(Trial("all", precision, candidate.figures, drop, True, bounds))
    if not within:
        print(f"gate: {precision} as asked, although its drops {_show(drop)} exceed the allowances")
    return chosen, {name: drop.image_auroc for name in NETWORK_NAMES}
