"""Latency and throughput of the inspection pipeline on real frames."""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.calibration import Calibration
from edge_runtime.preprocess import IMAGE_SUFFIXES, read_image_file
from edge_runtime.results import InspectionResult


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p99_ms: float
    mean_ms: float


@dataclass(frozen=True)
class StepsBenchmark:
    steps: int
    frames: int
    end_to_end: LatencyStats
    stages: dict[str, LatencyStats]
    fps_latency_mode: float
    fps_throughput_mode: float | None
    throughput_workers: int | None


@dataclass(frozen=True)
class BenchmarkReport:
    label: str
    cpu: str
    cores: int
    date: str
    peak_rss_mb: float
    runs: list[StepsBenchmark]
    # Peak resident set once the latency runs were done, before a second (throughput) copy was compiled.
    peak_rss_latency_mb: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def stats(values: Sequence[float]) -> LatencyStats:
    array = np.asarray(values, dtype=np.float64)
    return LatencyStats(
        p50_ms=float(np.percentile(array, 50)), p99_ms=float(np.percentile(array, 99)), mean_ms=float(array.mean())
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_frames(folder: Path, count: int) -> list[np.ndarray]:
    """Up to `count` images found under folder (recursively), as stored."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")
    return [read_image_file(p) for p in paths[:count]]


def measure_latency(
    inspect: Callable[[np.ndarray], InspectionResult], frames: list[np.ndarray], warmup: int = 3
) -> tuple[LatencyStats, dict[str, LatencyStats], float]:
    """Frames inspected one after another: end-to-end and per-stage latency, and the frame rate that gives."""
    for frame in frames[:warmup]:
        inspect(frame)
    totals: list[float] = []
    per_stage: dict[str, list[float]] = {}
    start = time.perf_counter()
    for frame in frames:
        result = inspect(frame)
        totals.append(result.timings_ms["total"])
        for stage, milliseconds in result.timings_ms.items():
            if stage != "total":
                per_stage.setdefault(stage, []).append(milliseconds)
    elapsed = time.perf_counter() - start
    return stats(totals), {k: stats(v) for k, v in per_stage.items()}, len(frames) / elapsed


def measure_throughput(submit: Callable[[np.ndarray], object], frames: list[np.ndarray]) -> float:
    """Frames per second with every frame submitted at once to a pool of workers."""
    start = time.perf_counter()
    futures = [submit(frame) for frame in frames]
    for future in futures:
        future.result()  # type: ignore[attr-defined]
    return len(frames) / (time.perf_counter() - start)


def report_header(
    label: str, runs: list[StepsBenchmark], cores: int, rss_latency_mode: float | None = None
) -> BenchmarkReport:
    return BenchmarkReport(
        label=label,
        cpu=cpu_model(),
        cores=cores,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        peak_rss_mb=peak_rss_mb(),
        runs=runs,
        peak_rss_latency_mb=rss_latency_mode,
    )


def memory_only(calibration: Calibration) -> Calibration:
    """The same bundle's KNN patch map alone, fused as the only map: what the PatchCore-style mode costs."""
    return replace(calibration, map_weights={"latent": 0.0, "feature": 0.0, "knn": 1.0})


def format_report(report: BenchmarkReport) -> str:
    lines = [
        f"{report.label}: {report.cpu}, {report.cores} cores, {report.date}, peak RSS {report.peak_rss_mb:.0f} MB",
        "| steps | p50 ms | p99 ms | fps (latency) | fps (throughput) | slowest stages (p50 ms) |",
        "|---|---|---|---|---|---|",
    ]
    for run in report.runs:
        slowest = sorted(run.stages.items(), key=lambda item: -item[1].p50_ms)[:4]
        stages = ", ".join(f"{name} {value.p50_ms:.1f}" for name, value in slowest)
        throughput = (
            f"{run.fps_throughput_mode:.1f} ({run.throughput_workers} workers)" if run.fps_throughput_mode else "-"
        )
        lines.append(
            f"| {run.steps} | {run.end_to_end.p50_ms:.1f} | {run.end_to_end.p99_ms:.1f} | {run.fps_latency_mode:.1f} "
            f"| {throughput} | {stages} |"
        )
    return "\n".join(lines)
