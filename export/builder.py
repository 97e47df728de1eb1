"""From a training run to a signed bundle: export the networks, quantise them behind the precision gate,
recalibrate with the networks the device will run, pick reference images, pack and sign."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from edge_runtime.calibration import Calibration
from edge_runtime.knn import COARSE_FOLDER, ordinary_distance_of
from edge_runtime.manifest import (
    CalibrationSpec,
    InputSpec,
    Manifest,
    MemorySpec,
    NetworkSpec,
    ReferenceImage,
    ScheduleSpec,
    TargetSpec,
)
from edge_runtime.openvino_networks import NETWORK_NAMES
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.preprocess import preprocess, to_uint8_image
from edge_runtime.versions import version_problem
from export import gate_defaults
from export.convert import (
    DecoderGraph,
    DenoiserGraph,
    EncoderGraph,
    GraphSpec,
    onnx_to_openvino,
    quantise_int8,
    save_ir,
    to_onnx,
)
from export.packing import write_bundle
from export.precision_gate import (
    FALLBACK_ORDER,
    Allowances,
    GateEvaluator,
    GateLog,
    Precision,
    build_gate_set,
    choose_precisions,
    fixed_precisions,
)
from export.recording import RecordingNetworks
from export.signing import load_private_key
from train_host.dataset import load_image
from train_host.run_store import TrainedRun, build_pipeline, load_run, schedule_of
from train_host.torch_setup import progress

PrecisionChoice = Literal["auto", "int8", "fp16", "fp32"]


@dataclass(frozen=True)
class ExportOptions:
    model_version: str
    precision: PrecisionChoice = "auto"
    max_auroc_drop: float = gate_defaults.MAX_DROP
    max_pixel_auroc_drop: float = gate_defaults.MAX_DROP
    max_aupro_drop: float = gate_defaults.MAX_DROP
    calibration_images: int = 32
    gate_images_per_type: int = gate_defaults.IMAGES_PER_TYPE
    gate_good_images: int | None = gate_defaults.GOOD_IMAGES
    gate_defects_per_good: int = gate_defaults.DEFECTS_PER_GOOD
    reference_images: int = 3
    search_ef: int | None = None  # HNSW ef the device searches with; None keeps the run's
    product: str | None = None  # with device_class: the devices (bundle.product, bundle.device_class) it is for
    device_class: str | None = None

    def __post_init__(self) -> None:
        # Every mistake here fails before any network is exported, not after minutes of export.
        self.allowances()
        if self.gate_good_images is not None and self.gate_good_images < 1:
            raise ValueError(f"gate_good_images must be at least 1, got {self.gate_good_images}")
        if self.gate_defects_per_good < 1:
            raise ValueError(f"gate_defects_per_good must be at least 1, got {self.gate_defects_per_good}")
        problem = version_problem(self.model_version)
        if problem is not None:
            raise ValueError(f"model version {problem}")
        if self.search_ef is not None and self.search_ef < 1:
            raise ValueError(f"search_ef must be at least 1, got {self.search_ef}")
        if (self.product is None) != (self.device_class is None):
            raise ValueError("product and device class go together: give both or neither")
        self.target()

    def target(self) -> TargetSpec | None:
        if self.product is None or self.device_class is None:
            return None
        return TargetSpec(product=self.product, device_class=self.device_class)

    def allowances(self) -> Allowances:
        return Allowances(self.max_auroc_drop, self.max_pixel_auroc_drop, self.max_aupro_drop)


def graph_specs(run: TrainedRun) -> dict[str, GraphSpec]:
    data = run.config.data
    channels = 1 if data.color == "gray" else 3
    height, width = data.image_size
    image = torch.zeros(1, channels, height, width)
    latent = torch.zeros(1, run.config.autoencoder.latent_channels, height // 8, width // 8)
    map_backbone = run.adapted_map_backbone if run.config.inspection.use_adapted_backbone else run.frozen_map_backbone
    return {
        "knn_backbone": GraphSpec(run.knn_backbone, (image,), ("image",)),
        "map_backbone": GraphSpec(map_backbone, (image,), ("image",)),
        "encoder": GraphSpec(EncoderGraph(run.autoencoder), (image,), ("image",)),
        "denoiser": GraphSpec(DenoiserGraph(run.unet), (latent, torch.tensor([10])), ("latent", "timestep")),
        "decoder": GraphSpec(DecoderGraph(run.autoencoder), (latent,), ("latent",)),
    }


def record_network_inputs(run: TrainedRun, images: np.ndarray) -> dict[str, list[tuple[np.ndarray, ...]]]:
    """Inputs each network receives while the torch pipeline inspects good images."""
    torch_pipeline = build_pipeline(run, run.config.inspection, torch.device("cpu"))
    recorder = RecordingNetworks(torch_pipeline.networks)
    torch_pipeline.networks = recorder
    for image in progress(images, "recording calibration inputs"):
        torch_pipeline.raw_maps(image, run.calibration.bins)
    return dict(recorder.inputs)


def build_variants(
    run: TrainedRun, folder: Path, needed: tuple[Precision, ...], calibration_images: np.ndarray
) -> dict[str, dict[Precision, Path]]:
    """IR files of every network in every needed precision, under folder/<precision>/<name>.xml."""
    samples = record_network_inputs(run, calibration_images) if "int8" in needed else {}
    variants: dict[str, dict[Precision, Path]] = {}
    for name, spec in graph_specs(run).items():
        model = onnx_to_openvino(to_onnx(spec, folder / "onnx" / f"{name}.onnx"))
        variants[name] = {}
        for precision in needed:
            xml = folder / precision / f"{name}.xml"
            if precision == "int8":
                save_ir(quantise_int8(model, samples[name]), xml, fp16=False)
            else:
                save_ir(model, xml, fp16=precision == "fp16")
            variants[name][precision] = xml
    return variants


def stage_references(
    pipeline: InspectionPipeline, calibration: Calibration, images: np.ndarray, run: TrainedRun, staging: Path
) -> list[ReferenceImage]:
    """Good held-out images stored as PNG at model size, with the score this bundle gives them."""
    data = run.config.data
    folder = staging / "reference"
    folder.mkdir(parents=True)
    references = []
    tolerance = 0.05 * abs(calibration.image_threshold) + 0.05
    for index, image in enumerate(images):
        picture = to_uint8_image(image)
        name = f"good_{index}.png"
        stored = picture if picture.shape[2] == 3 else picture[:, :, 0]
        bgr = cv2.cvtColor(stored, cv2.COLOR_RGB2BGR) if stored.ndim == 3 else stored
        cv2.imwrite(str(folder / name), bgr)
        score = pipeline.inspect(preprocess(stored, data.image_size, data.color), calibration).score
        references.append(ReferenceImage(file=f"reference/{name}", expected_score=score, tolerance=tolerance))
    return references


def stage_networks(
    variants: dict[str, dict[Precision, Path]],
    chosen: dict[str, Precision],
    drops: dict[str, float | None],
    staging: Path,
) -> dict[str, NetworkSpec]:
    folder = staging / "models"
    folder.mkdir(parents=True)
    specs = {}
    for name in NETWORK_NAMES:
        xml = variants[name][chosen[name]]
        shutil.copy(xml, folder / f"{name}.xml")
        shutil.copy(xml.with_suffix(".bin"), folder / f"{name}.bin")
        specs[name] = NetworkSpec(
            xml=f"models/{name}.xml", weights=f"models/{name}.bin", precision=chosen[name], auroc_drop=drops[name]
        )
    return specs


def measure_ordinary_distance(pipeline: InspectionPipeline, holdout: np.ndarray) -> None:
    """The memory's ordinary distance measured again through the bundle's own KNN backbone, before the calibration,
    as the calibration itself is: quantised features lie a little farther from a memory built from FP32 ones
    (magnetic_tile's INT8 backbone: 33.5 against 32.8), so the device skips the share of patches training measured.
    A memory without one (trained before it existed) keeps searching every patch."""
    memory = pipeline.memory
    if memory.ordinary_distance is None:
        return
    memory.ordinary_distance = None
    fine = [memory.scale_distances(pipeline.networks.knn_features(image))[0] for image in holdout]
    memory.ordinary_distance = ordinary_distance_of(fine)


def build_bundle(run_dir: Path, out: Path, sign_key: Path, options: ExportOptions) -> Manifest:
    run = load_run(run_dir)
    if options.search_ef is not None:
        # Before anything is measured: the gate, the calibration and the references then see the device's search.
        for scale in run.memory.scales():
            scale.index.set_ef(options.search_ef)
    private_key = load_private_key(sign_key)
    data = run.config.data
    split = json.loads(run.paths.split.read_text())
    fit_paths = [Path(p) for p in split["fit"]][: options.calibration_images]
    calibration_images = np.stack([load_image(p, data.image_size, data.color) for p in fit_paths])
    holdout = run.holdout_images()
    needed: tuple[Precision, ...] = (
        FALLBACK_ORDER if options.precision in ("auto", "int8") else (options.precision, "fp32")
    )
    with tempfile.TemporaryDirectory(prefix="bundle-") as temporary:
        work = Path(temporary)
        variants = build_variants(run, work / "ir", tuple(dict.fromkeys(needed)), calibration_images)
        gate_set = build_gate_set(
            holdout,
            data,
            options.gate_images_per_type,
            run.config.seed,
            options.gate_good_images,
            options.gate_defects_per_good,
        )
        gate = GateEvaluator(run, holdout, gate_set)
        log = GateLog(gate_set=gate_set.describe(), allowances=options.allowances())
        if options.precision == "auto":
            chosen, drops = choose_precisions(variants, gate, options.allowances(), log)
        else:
            chosen, drops = fixed_precisions(variants, gate, options.precision, log)
        final_files = {name: variants[name][chosen[name]] for name in NETWORK_NAMES}
        pipeline = gate.pipeline(final_files)
        measure_ordinary_distance(pipeline, holdout)
        calibration = gate.calibrate(pipeline)
        staging = work / "staging"
        networks = stage_networks(variants, chosen, drops, staging)
        run.memory.save(staging / "memory")
        references = stage_references(pipeline, calibration, holdout[: options.reference_images], run, staging)
        manifest = Manifest(
            model_version=options.model_version,
            created_at=datetime.now(timezone.utc),
            input=InputSpec(height=data.image_size[0], width=data.image_size[1], color=data.color),
            schedule=ScheduleSpec.from_schedule(schedule_of(run.config)),
            inspection=run.config.inspection,
            calibration=CalibrationSpec.from_calibration(calibration),
            networks=networks,
            memory=MemorySpec(
                folder="memory", coarse_folder=f"memory/{COARSE_FOLDER}" if run.memory.coarse is not None else None
            ),
            references=references,
            target=options.target(),
        )
        final = write_bundle(staging, manifest, out, private_key)
    report = {"precisions": chosen, "auroc_drops": drops, **log.to_dict()}
    out.with_suffix(".export.json").write_text(json.dumps(report, indent=2))
    return final
