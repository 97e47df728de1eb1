"""The readable evaluation report: a Markdown page with a metrics table, ROC curve and sample pictures."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train_host.evaluation import EvaluationReport, SamplePicture, TypeMetrics, save_report_json  # noqa: E402


def _row(m: TypeMetrics) -> str:
    return (
        f"| {m.defect_type} | {m.defect_images} | {m.good_images} | {m.image_auroc:.3f} | {m.pixel_auroc:.3f} "
        f"| {m.aupro:.3f} | {m.f1.f1:.3f} | {m.f1.precision:.3f} | {m.f1.recall:.3f} |"
    )


def metrics_table(report: EvaluationReport) -> str:
    header = (
        "| defect type | defect images | good images | image AUROC | pixel AUROC | AUPRO (FPR<=0.3) "
        "| F1 @ threshold | precision | recall |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = [_row(m) for m in report.per_type] + [_row(report.overall).replace("| all |", "| **all** |")]
    return "\n".join([header, *rows])


def _panel(picture: SamplePicture) -> np.ndarray:
    """input | healed | heatmap overlay | ground truth, side by side (RGB)."""

    def rgb(image: np.ndarray) -> np.ndarray:
        if image.ndim == 2 or image.shape[2] == 1:
            return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
        return image

    healed = picture.healed_image if picture.healed_image is not None else np.zeros_like(picture.input_image)
    truth = (picture.mask.astype(np.uint8) * 255)[:, :, None]
    separator = np.full((picture.overlay.shape[0], 4, 3), 255, dtype=np.uint8)
    parts = [rgb(picture.input_image), rgb(healed), picture.overlay, rgb(truth)]
    row: list[np.ndarray] = []
    for part in parts:
        row += [part, separator]
    return np.concatenate(row[:-1], axis=1)


def save_roc_plot(report: EvaluationReport, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.plot(report.roc.fpr, report.roc.tpr, label=f"image AUROC {report.overall.image_auroc:.3f}")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(f"ROC: {report.tag}")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: EvaluationReport, folder: Path) -> Path:
    """Writes metrics.json, roc.png, samples/*.png and report.md into folder; returns report.md."""
    save_report_json(report, folder)
    save_roc_plot(report, folder / "roc.png")
    samples = folder / "samples"
    samples.mkdir(exist_ok=True)
    lines = [
        f"# Evaluation: {report.tag}",
        "",
        f"Run: `{report.run}`; overrides: {', '.join(f'`{o}`' for o in report.overrides) or 'none'}.",
        f"Image threshold (from good held-out images): {report.image_threshold:.4f}; "
        f"mean inspection time {report.mean_inspection_ms:.1f} ms per image.",
        "",
        metrics_table(report),
        "",
        "![ROC curve](roc.png)",
        "",
        "## Samples: input | healed | heatmap overlay | ground truth",
        "",
    ]
    for picture in report.pictures:
        name = f"{picture.defect_type}_{picture.name}.png"
        cv2.imwrite(str(samples / name), cv2.cvtColor(_panel(picture), cv2.COLOR_RGB2BGR))
        lines += [
            f"**{picture.defect_type}** `{picture.name}`, score {picture.score:.3f}",
            "",
            f"![](samples/{name})",
            "",
        ]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
