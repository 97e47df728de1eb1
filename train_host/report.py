"""The readable evaluation report: a Markdown page with a metrics table, ROC curve and sample pictures."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train_host.evaluation import EvaluationReport, SamplePicture, TypeMetrics, save_report_json  # noqa: E402

NOT_AVAILABLE = "n/a"


def format_metric(value: float | None) -> str:
    """Three decimals, or n/a for a metric the data cannot give (pixel metrics without masks)."""
    return NOT_AVAILABLE if value is None else f"{value:.3f}"


def _row(m: TypeMetrics) -> str:
    cells = [
        m.defect_type,
        str(m.defect_images),
        str(m.good_images),
        format_metric(m.image_auroc),
        f"{m.recall:.3f} ({m.defects_found}/{m.defect_images})",
        f"{m.false_alarm_rate:.3f} ({m.false_alarms}/{m.good_images})",
        format_metric(m.pixel_auroc),
        format_metric(m.aupro),
        format_metric(m.f1.f1),
        format_metric(m.f1.precision),
    ]
    return "| " + " | ".join(cells) + " |"


def metrics_table(report: EvaluationReport) -> str:
    header = (
        "| defect type | defect images | good images | image AUROC | recall @ threshold | false alarms @ threshold "
        "| pixel AUROC | AUPRO (FPR<=0.3) | F1 @ threshold | precision |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [_row(m) for m in report.per_type] + [_row(report.overall).replace("| all |", "| **all** |")]
    return "\n".join([header, *rows])


def mask_note(report: EvaluationReport) -> str | None:
    """Which types the pixel metrics leave out, for a set labelled (partly) per image only."""
    missing = report.types_without_masks
    if not missing:
        return None
    if report.overall.pixel_auroc is None:
        return "No pixel masks in this set (ground_truth/): pixel AUROC and AUPRO are not available."
    masked = [m.defect_type for m in report.per_type if m.defect_type not in missing]
    return (
        f"No pixel masks for {', '.join(missing)} (ground_truth/<type>): their pixel metrics are not available, "
        f"and those of **all** cover {', '.join(masked)} and the good images only."
    )


def _no_mask_panel(size: tuple[int, int]) -> np.ndarray:
    """Grey with a cross: the defect has no mask, so there is no ground truth to show."""
    height, width = size
    panel = np.full((height, width), 96, dtype=np.uint8)
    cv2.line(panel, (0, 0), (width - 1, height - 1), 160, 1)
    cv2.line(panel, (0, height - 1), (width - 1, 0), 160, 1)
    return panel


def _panel(picture: SamplePicture) -> np.ndarray:
    """input | healed | heatmap overlay | ground truth, side by side (RGB)."""

    def rgb(image: np.ndarray) -> np.ndarray:
        if image.ndim == 2 or image.shape[2] == 1:
            return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
        return image

    healed = picture.healed_image if picture.healed_image is not None else np.zeros_like(picture.input_image)
    truth = _no_mask_panel(picture.overlay.shape[:2]) if picture.mask is None else picture.mask.astype(np.uint8) * 255
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
        *(
            [
                f"Expected recall at that threshold, on synthetic defects pasted on held-out goods: "
                f"{report.expected_recall:.3f} (measured on the test set: {report.overall.recall:.3f})."
            ]
            if report.expected_recall is not None
            else []
        ),
        *(
            [
                f"Expected false-alarm rate at that threshold on new good parts, from the number of held-out goods "
                f"that set it: {report.expected_false_alarm_rate:.1%} (measured on the test set: "
                f"{report.overall.false_alarm_rate:.1%})."
            ]
            if report.expected_false_alarm_rate is not None
            else []
        ),
        "",
        metrics_table(report),
        "",
        *([note, ""] if (note := mask_note(report)) else []),
        "![ROC curve](roc.png)",
        "",
        "## Samples: input | healed | heatmap overlay | ground truth (grey with a cross: no mask)",
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
