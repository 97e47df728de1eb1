"""The torch (FP32) baseline for the device benchmark: the same numpy pipeline, torch running the networks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edge_runtime.bench import BenchmarkReport, StepsBenchmark, load_frames, measure_latency, report_header
from edge_runtime.preprocess import preprocess
from edge_runtime.results import InspectionResult
from train_host.run_store import build_pipeline, load_run


def torch_inspect(run_dir: Path, steps: int) -> Callable[[np.ndarray], InspectionResult]:
    run = load_run(run_dir)
    settings = run.config.inspection.model_copy(update={"denoise_steps": steps})
    pipeline = build_pipeline(run, settings, torch.device("cpu"))
    # The HNSW search with as many threads as torch, as the device searches with every core in latency mode: the
    # comparison is of the networks, not of a search held to one core.
    pipeline.memory.use_threads(torch.get_num_threads())
    data = run.config.data

    def inspect(frame: np.ndarray) -> InspectionResult:
        start = time.perf_counter()
        image = preprocess(frame, data.image_size, data.color)
        prepared = time.perf_counter()
        result = pipeline.inspect(image, run.calibration)
        timings = {**result.timings_ms, "preprocess": (prepared - start) * 1000.0}
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return dataclasses.replace(result, timings_ms=timings)

    return inspect


def benchmark_torch(
    run_dir: Path, images: Path, frames: int, steps_list: list[int], threads: int | None
) -> BenchmarkReport:
    if threads:
        torch.set_num_threads(threads)
    loaded = load_frames(images, frames)
    runs = []
    for steps in steps_list:
        latency, stages, fps = measure_latency(torch_inspect(run_dir, steps), loaded)
        runs.append(StepsBenchmark(steps, len(loaded), latency, stages, fps, None, None))
    return report_header(f"torch fp32 ({run_dir})", runs, torch.get_num_threads())
