"""What `inspect --out FOLDER` leaves behind: one heatmap overlay per image (at the image's own size, under the
image's path relative to the inputs' common folder), `results.jsonl` with one line per image, and `report.md`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

import cv2
import numpy as np

from edge_runtime.overlay import heatmap_overlay
from edge_runtime.results import DefectRegion, InspectionResult

RESULTS_FILE = "results.jsonl"
REPORT_FILE = "report.md"


@dataclass(frozen=True)
class ImageVerdict:
    """One inspected image as `results.jsonl` holds it; regions in the image's own pixels."""

    file: str  # the input path as given
    overlay: str  # the overlay, relative to the output folder
    width: int
    height: int
    score: float
    is_defect: bool
    threshold: float  # the image threshold: a defect at or above it
    severity_bin: int
    timestep: int
    steps: int
    regions: list[DefectRegion]
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def overlay_names(images: list[Path]) -> list[Path]:
    """Each image's path relative to the deepest folder holding all of them: a folder's layout is kept."""
    absolute = [path.resolve() for path in images]
    if len(set(absolute)) != len(absolute):
        repeated = next(str(p) for p, a in zip(images, absolute, strict=True) if absolute.count(a) > 1)
        raise ValueError(f"image {repeated} is given more than once; its overlay would be written twice")
    root = Path(os.path.commonpath([path.parent for path in absolute]))
    return [path.relative_to(root) for path in absolute]


def check_out_folder(out: Path, images: list[Path]) -> None:
    """Refuse an output folder that holds an input: its overlays would be read as inputs on the next run."""
    folder = out.resolve()
    for image in images:
        if folder in image.resolve().parents:
            raise ValueError(f"--out {out} holds the input {image}; write the results somewhere else")


def verdict_of(
    file: Path,
    overlay: Path,
    image: np.ndarray,
    result: InspectionResult,
    threshold: float,
    model_version: str,
) -> ImageVerdict:
    height, width = image.shape[:2]
    scale_x, scale_y = width / result.anomaly_map.shape[1], height / result.anomaly_map.shape[0]
    return ImageVerdict(
        file=str(file),
        overlay=overlay.as_posix(),
        width=width,
        height=height,
        score=float(result.score),
        is_defect=bool(result.is_defect),
        threshold=float(threshold),
        severity_bin=int(result.severity_bin),
        timestep=int(result.timestep),
        steps=int(result.steps),
        regions=[region.scaled(scale_x, scale_y) for region in result.regions],
        model_version=model_version,
        timings_ms={stage: round(float(ms), 3) for stage, ms in result.timings_ms.items()},
    )


def overlay_at_image_size(image: np.ndarray, result: InspectionResult, pixel_threshold: float) -> np.ndarray:
    """HxWx3 uint8 RGB at the image's size: the map and the boxes (found at model size) scaled up to it."""
    height, width = image.shape[:2]
    anomaly_map = cv2.resize(result.anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    scale_x, scale_y = width / result.anomaly_map.shape[1], height / result.anomaly_map.shape[0]
    regions = [region.scaled(scale_x, scale_y) for region in result.regions]
    return heatmap_overlay(image, anomaly_map, pixel_threshold, regions)


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write overlay {path}")


class InspectOutput:
    """Writes each image's overlay and results line as it is inspected (a line is flushed at once, so a run that
    stops part way keeps what it did); `close()` writes the report."""

    def __init__(self, out: Path, model_version: str, threshold: float, pixel_threshold: float) -> None:
        self.out = out
        self.model_version = model_version
        self.threshold = threshold
        self.pixel_threshold = pixel_threshold
        self.verdicts: list[ImageVerdict] = []
        out.mkdir(parents=True, exist_ok=True)
        self._results: IO[str] = (out / RESULTS_FILE).open("w", encoding="utf-8")

    def add(self, file: Path, overlay: Path, image: np.ndarray, result: InspectionResult) -> ImageVerdict:
        write_image(self.out / overlay, overlay_at_image_size(image, result, self.pixel_threshold))
        verdict = verdict_of(file, overlay, image, result, self.threshold, self.model_version)
        self._results.write(verdict.to_json() + "\n")
        self._results.flush()
        self.verdicts.append(verdict)
        return verdict

    def close(self) -> None:
        self._results.close()
        (self.out / REPORT_FILE).write_text(report_markdown(self.verdicts, self.model_version, self.threshold))

    def __enter__(self) -> InspectOutput:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        if error_type is None:
            self.close()
        else:  # a run that failed part way keeps its results lines but gets no report claiming to be complete
            self._results.close()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def report_markdown(verdicts: list[ImageVerdict], model_version: str, threshold: float) -> str:
    """The run in short: model, counts, threshold, and every image by descending score with its overlay."""
    defects = sum(verdict.is_defect for verdict in verdicts)
    lines = [
        "# Inspection report",
        "",
        f"- model version: {model_version}",
        f"- images: {len(verdicts)}",
        f"- defects flagged: {defects}",
        f"- score threshold: {threshold:.6g} (an image scoring at or above it is a defect)",
        "",
        "| # | image | score | verdict | regions | overlay |",
        "|---:|---|---:|---|---:|---|",
    ]
    ranked = sorted(verdicts, key=lambda verdict: (-verdict.score, verdict.file))
    for rank, verdict in enumerate(ranked, start=1):
        label = "**defect**" if verdict.is_defect else "good"
        link = f"[{_cell(verdict.overlay)}]({quote(verdict.overlay)})"
        row = [str(rank), _cell(verdict.file), f"{verdict.score:.4f}", label, str(len(verdict.regions)), link]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
