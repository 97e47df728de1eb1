"""One table from several benchmark reports (JSON written by `bench` and `bench-torch`), at one step count, with
the ratios a buyer asks about: how much faster than the torch pipeline, and what the reconstruction costs on top
of the memory-only (PatchCore-style) mode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bench import LatencyStats


@dataclass(frozen=True)
class ComparedRun:
    label: str
    steps: int
    latency: LatencyStats
    fps_latency_mode: float
    fps_throughput_mode: float | None
    peak_rss_mb: float
    stages_p50_ms: dict[str, float]

    @property
    def is_torch(self) -> bool:
        return self.label.startswith("torch")

    @property
    def is_memory_only(self) -> bool:
        return "memory only" in self.label


def read_run(path: Path, steps: int) -> ComparedRun:
    """The run at `steps` of one report (a memory-only report has one run, at 0 steps, used whatever `steps`)."""
    try:
        report = json.loads(path.read_text())
        runs = report["runs"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a benchmark report ({error})") from error
    chosen = next((run for run in runs if run["steps"] == steps), None)
    if chosen is None and len(runs) == 1 and runs[0]["steps"] == 0:
        chosen = runs[0]
    if chosen is None:
        measured = sorted(run["steps"] for run in runs)
        raise ValueError(f"{path}: no run with {steps} steps (measured: {measured})")
    # The latency-mode figure where there is one: a service runs one performance hint, not two.
    rss = report.get("peak_rss_latency_mb") or report["peak_rss_mb"]
    return ComparedRun(
        label=report["label"],
        steps=chosen["steps"],
        latency=LatencyStats(**chosen["end_to_end"]),
        fps_latency_mode=chosen["fps_latency_mode"],
        fps_throughput_mode=chosen["fps_throughput_mode"],
        peak_rss_mb=rss,
        stages_p50_ms={name: value["p50_ms"] for name, value in chosen["stages"].items()},
    )


def compare_table(runs: list[ComparedRun]) -> str:
    """Markdown: one row per report, ratios against the torch run and the memory-only run where present."""
    torch_run = next((run for run in runs if run.is_torch), None)
    memory_run = next((run for run in runs if run.is_memory_only), None)
    lines = [
        "| pipeline | steps | p50 ms | p99 ms | p99 / p50 | fps latency | fps throughput | peak RSS MB "
        "| speed-up vs torch (p50) | added over memory-only (p50) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        p50 = run.latency.p50_ms
        speedup = f"{torch_run.latency.p50_ms / p50:.1f}x" if torch_run else "-"
        added = "-"
        if memory_run and not run.is_memory_only:
            added = f"{(p50 - memory_run.latency.p50_ms) / memory_run.latency.p50_ms:.1f}x"
        throughput = f"{run.fps_throughput_mode:.1f}" if run.fps_throughput_mode else "-"
        lines.append(
            f"| {run.label} | {run.steps} | {p50:.1f} | {run.latency.p99_ms:.1f} | {run.latency.p99_ms / p50:.2f} "
            f"| {run.fps_latency_mode:.1f} | {throughput} | {run.peak_rss_mb:.0f} | {speedup} | {added} |"
        )
    return "\n".join(lines)


def stage_table(runs: list[ComparedRun]) -> str:
    """Markdown: p50 milliseconds per stage, one column per report."""
    stages = list(dict.fromkeys(name for run in runs for name in run.stages_p50_ms))
    lines = ["| stage | " + " | ".join(run.label for run in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for stage in stages:
        cells = [f"{run.stages_p50_ms[stage]:.1f}" if stage in run.stages_p50_ms else "-" for run in runs]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_reports(paths: list[Path], steps: int) -> str:
    runs = [read_run(path, steps) for path in paths]
    return compare_table(runs) + "\n\n" + stage_table(runs)
