"""Reading image folders in the MVTec layout: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.preprocess import IMAGE_SUFFIXES, ColorMode, FrameError, preprocess, read_image_file

GOOD = "good"


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used; the message names it."""


@dataclass(frozen=True)
class TestSample:
    path: Path
    defect_type: str
    mask_path: Path | None

    @property
    def is_defect(self) -> bool:
        return self.defect_type != GOOD


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder not found: {folder}")


def train_images(root: Path) -> list[Path]:
    folder = root / "train" / GOOD
    _require_folder(folder, "training")
    paths = _images_in(folder)
    if not paths:
        raise DatasetError(f"no images in {folder} (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def list_test_samples(root: Path) -> list[TestSample]:
    folder = root / "test"
    _require_folder(folder, "test")
    samples: list[TestSample] = []
    for type_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in _images_in(type_folder):
            mask = None
            if type_folder.name != GOOD:
                mask = root / "ground_truth" / type_folder.name / f"{path.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetError(f"mask missing for {path}: expected {mask}")
            samples.append(TestSample(path=path, defect_type=type_folder.name, mask_path=mask))
    if not samples:
        raise DatasetError(f"no test images under {folder}")
    return samples


def read_image(path: Path) -> np.ndarray:
    """HxW (gray) or HxWx3 (RGB) uint8, as stored."""
    try:
        return read_image_file(path)
    except FrameError as error:
        raise DatasetError(str(error)) from None


def load_image(path: Path, size: tuple[int, int], color: ColorMode) -> np.ndarray:
    """Model input CxHxW float32 in [-1, 1]."""
    return preprocess(read_image(path), size, color)


def load_mask(sample: TestSample, image_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Boolean HxW mask at the model size (all False for good samples); image_shape is the stored image's."""
    if sample.mask_path is None:
        return np.zeros(size, dtype=bool)
    mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {sample.mask_path}")
    if mask.shape != image_shape:
        raise DatasetError(
            f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.path} "
            f"is {image_shape[1]}x{image_shape[0]}"
        )
    height, width = size
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST) > 127


def load_test_item(sample: TestSample, size: tuple[int, int], color: ColorMode) -> tuple[np.ndarray, np.ndarray]:
    """(model input CxHxW, boolean mask HxW) for one test sample."""
    stored = read_image(sample.path)
    return preprocess(stored, size, color), load_mask(sample, stored.shape[:2], size)


def split_holdout(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split of train/good into (fit, held-out calibration) lists."""
    if len(paths) < 4:
        raise DatasetError(f"need at least 4 good training images, found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    held_count = min(max(2, round(fraction * len(paths))), len(paths) - 2)
    held = sorted(paths[i] for i in order[:held_count])
    fit = sorted(paths[i] for i in order[held_count:])
    return fit, held
