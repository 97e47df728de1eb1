"""The standard ablation study of a run: each row is an evaluation with a few inspection settings changed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from train_host.evaluation import EvaluationReport, evaluate
from train_host.report import format_metric, write_report


@dataclass(frozen=True)
class Ablation:
    tag: str
    description: str
    overrides: tuple[str, ...]


_PAPER_FEATURE_WEIGHT = "inspection.map_weights.feature=0.15"

ABLATIONS = (
    Ablation("full", "full method (defaults)", ()),
    Ablation("fixed_noise", "fixed noise level t=60 instead of dynamic", ("inspection.dynamic_noise=false",)),
    Ablation("added_noise", "added Gaussian noise instead of noiseless scaling", ("inspection.add_noise=true",)),
    # The feature map is off by default; these rows fuse the paper's 0.15 of it, from either backbone.
    Ablation("feature_map", "the paper's feature map fused (0.15), ImageNet backbone", (_PAPER_FEATURE_WEIGHT,)),
    Ablation(
        "adaptation",
        "the paper's feature map fused (0.15), domain-adapted backbone",
        (_PAPER_FEATURE_WEIGHT, "inspection.use_adapted_backbone=true"),
    ),
    Ablation("knn_only", "KNN patch map only", ("inspection.map_weights.latent=0", "inspection.map_weights.feature=0")),
    Ablation("reconstruction_only", "reconstruction maps only (no KNN map fused)", ("inspection.map_weights.knn=0",)),
    Ablation("summed_maps", "maps summed, the healing not capped by the KNN map", ("inspection.fusion=sum",)),
    Ablation("steps_1", "1 denoising step", ("inspection.denoise_steps=1",)),
    Ablation("steps_2", "2 denoising steps", ("inspection.denoise_steps=2",)),
    Ablation("steps_4", "4 denoising steps", ("inspection.denoise_steps=4",)),
)


def command_for(run: Path, ablation: Ablation) -> str:
    sets = " ".join(f"--set {o}" for o in ablation.overrides)
    return f"python -m train_host evaluate --run {run} --tag {ablation.tag} {sets}".strip()


def run_ablations(run: Path, tags: list[str] | None = None) -> list[tuple[Ablation, EvaluationReport]]:
    chosen = [a for a in ABLATIONS if tags is None or a.tag in tags]
    results = []
    for ablation in chosen:
        report = evaluate(run, list(ablation.overrides), ablation.tag)
        write_report(report, run / "eval" / ablation.tag)
        results.append((ablation, report))
    return results


def ablation_table(run: Path, results: list[tuple[Ablation, EvaluationReport]]) -> str:
    lines = [
        "| variant | image AUROC | pixel AUROC | AUPRO | F1 @ threshold | ms / image (host, torch) | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for ablation, report in results:
        m = report.overall
        lines.append(
            f"| {ablation.description} | {m.image_auroc:.3f} | {format_metric(m.pixel_auroc)} "
            f"| {format_metric(m.aupro)} | {m.f1.f1:.3f} "
            f"| {report.mean_inspection_ms:.0f} | `{command_for(run, ablation)}` |"
        )
    return "\n".join(lines)
