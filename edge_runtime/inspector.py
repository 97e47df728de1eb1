"""The device's inspector: an installed bundle turned into `inspect(frame) -> InspectionResult`."""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.bundle import load_installed
from edge_runtime.knn import KnnMemory
from edge_runtime.manifest import FIRST_SCALE_UNITS_SCHEMA, FIRST_SPARSE_SEARCH_SCHEMA, Manifest
from edge_runtime.openvino_networks import CompiledNetworks, RuntimeOptions
from edge_runtime.pipeline import InspectionPipeline
from edge_runtime.preprocess import preprocess, read_image_file
from edge_runtime.results import InspectionResult
from edge_runtime.settings import InspectionSettings


@dataclass(frozen=True)
class ReferenceCheck:
    file: str
    expected_score: float
    measured_score: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return abs(self.measured_score - self.expected_score) <= self.tolerance


class Inspector:
    def __init__(self, manifest: Manifest, slot: Path, options: RuntimeOptions | None = None) -> None:
        self.manifest = manifest
        self.slot = slot
        files = {name: slot / spec.xml for name, spec in manifest.networks.items()}
        self.compiled = CompiledNetworks(files, options)
        self.memory = load_memory(slot, manifest)
        self.memory.use_threads(self.compiled.options.search_threads())
        self.pipeline = self.new_pipeline()
        self.calibration = manifest.calibration.to_calibration()
        # Compiled now, so that a network that cannot run fails the load, not a frame; the rest stay uncompiled.
        for name in self.pipeline.used_networks(self.calibration):
            self.compiled.model(name)
        self.size = (manifest.input.height, manifest.input.width)
        self.color = manifest.input.color

    @classmethod
    def from_slot(cls, slot: Path, options: RuntimeOptions | None = None) -> Inspector:
        """Load an installed bundle (its file hashes are checked again)."""
        return cls(load_installed(slot), slot, options)

    def new_pipeline(self, settings: InspectionSettings | None = None) -> InspectionPipeline:
        """A pipeline with its own infer requests (one per thread), sharing the compiled models and memory."""
        settings = settings or self.manifest.inspection
        return InspectionPipeline(self.compiled.worker(), self.memory, settings, self.manifest.schedule.to_schedule())

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """Frame -> model input; raises FrameError for frames that cannot be inspected."""
        return preprocess(frame, self.size, self.color)

    def inspect(self, frame: np.ndarray, pipeline: InspectionPipeline | None = None) -> InspectionResult:
        """Inspect one frame; pass a pipeline from `new_pipeline` when calling from several threads."""
        start = time.perf_counter()
        image = self.prepare(frame)
        prepared = time.perf_counter()
        result = (pipeline or self.pipeline).inspect(image, self.calibration)
        timings = {
            **result.timings_ms,
            "preprocess": (prepared - start) * 1000.0,
            "total": (time.perf_counter() - start) * 1000.0,
        }
        return dataclasses.replace(result, timings_ms=timings)

    def health_check(self) -> list[ReferenceCheck]:
        """Score the bundle's reference images; each must land within its tolerance."""
        checks = []
        for reference in self.manifest.references:
            score = self.inspect(read_image_file(self.slot / reference.file)).score
            checks.append(ReferenceCheck(reference.file, reference.expected_score, score, reference.tolerance))
        return checks


class InspectorPool:
    """Frames inspected concurrently by worker threads, each with its own infer requests; results come back
    as futures, in the order the caller keeps them."""

    def __init__(self, inspector: Inspector, workers: int, settings: InspectionSettings | None = None) -> None:
        self.inspector = inspector
        self.settings = settings
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect")

    def _pipeline(self) -> InspectionPipeline:
        if not hasattr(self._local, "pipeline"):
            self._local.pipeline = self.inspector.new_pipeline(self.settings)
        return self._local.pipeline

    def submit(self, frame: np.ndarray) -> Future[InspectionResult]:
        return self._executor.submit(lambda: self.inspector.inspect(frame, self._pipeline()))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def load_memory(slot: Path, manifest: Manifest) -> KnnMemory:
    """The bundle's KNN memory; RuntimeError (a model that cannot run) when it disagrees with its manifest."""
    folder = slot / manifest.memory.folder
    try:
        memory = KnnMemory.load(folder)
    except (ValueError, KeyError) as error:
        raise RuntimeError(f"KNN memory in {folder} cannot be read: {error}") from error
    expected = manifest.memory.coarse_folder
    if (expected is not None) != (memory.coarse is not None):
        says = f"coarse_folder {expected!r}" if expected is not None else "no coarse memory"
        raise RuntimeError(f"the manifest names {says}, but the memory in {folder} does not match")
    if manifest.schema_version < FIRST_SCALE_UNITS_SCHEMA and memory.scale_units() != (1.0, 1.0):
        raise RuntimeError(
            f"the memory in {folder} joins its scales in typical distances, which needs manifest schema "
            f"{FIRST_SCALE_UNITS_SCHEMA}, not {manifest.schema_version}"
        )
    if manifest.schema_version < FIRST_SPARSE_SEARCH_SCHEMA and memory.ordinary_distance is not None:
        raise RuntimeError(
            f"the memory in {folder} is searched sparsely below its ordinary distance, which needs manifest schema "
            f"{FIRST_SPARSE_SEARCH_SCHEMA}, not {manifest.schema_version}"
        )
    return memory
