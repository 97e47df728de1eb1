"""Reading image folders in the MVTec layout: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png.

Masks are optional per defect type: a type without a ground_truth/<type> folder of masks is labelled per image
only, and its pixel metrics are not available.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from edge_runtime.preprocess import IMAGE_SUFFIXES, ColorMode, FrameError, preprocess, read_image_file

GOOD = "good"
MASK_SUFFIX = "_mask.png"
T = TypeVar("T")


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

    @property
    def has_pixel_truth(self) -> bool:
        """Whether every pixel's label is known: good images (all good) and defects with a mask."""
        return not self.is_defect or self.mask_path is not None


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


def has_masks(root: Path, defect_type: str) -> bool:
    """Whether ground_truth/<type> holds masks: then every test image of the type must have one."""
    folder = root / "ground_truth" / defect_type
    return folder.is_dir() and any(p.name.endswith(MASK_SUFFIX) for p in folder.iterdir())


def list_test_samples(root: Path) -> list[TestSample]:
    folder = root / "test"
    _require_folder(folder, "test")
    samples: list[TestSample] = []
    for type_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
        defect_type = type_folder.name
        masked = defect_type != GOOD and has_masks(root, defect_type)
        for path in _images_in(type_folder):
            mask = root / "ground_truth" / defect_type / f"{path.stem}{MASK_SUFFIX}" if masked else None
            if mask is not None and not mask.is_file():
                # A partly masked type would silently bias its pixel metrics towards the masked images.
                raise DatasetError(
                    f"mask missing for {path}: expected {mask} (ground_truth/{defect_type} has masks for other "
                    f"images of this type; add this one, or remove the folder to evaluate {defect_type} per image)"
                )
            samples.append(TestSample(path=path, defect_type=defect_type, mask_path=mask))
    if not samples:
        raise DatasetError(f"no test images under {folder}")
    return samples


def types_without_masks(samples: list[TestSample]) -> list[str]:
    """Defect types labelled per image only (no pixel masks), sorted."""
    return sorted({s.defect_type for s in samples if not s.has_pixel_truth})


def read_image(path: Path) -> np.ndarray:
    """HxW (gray) or HxWx3 (RGB) uint8, as stored."""
    try:
        return read_image_file(path)
    except FrameError as error:
        raise DatasetError(str(error)) from None


def load_image(path: Path, size: tuple[int, int], color: ColorMode) -> np.ndarray:
    """Model input CxHxW float32 in [-1, 1]."""
    return preprocess(read_image(path), size, color)


def load_mask(sample: TestSample, image_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray | None:
    """Boolean HxW mask at the model size (all False for good samples, None for a defect without a mask);
    image_shape is the stored image's."""
    if not sample.is_defect:
        return np.zeros(size, dtype=bool)
    if sample.mask_path is None:
        return None
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


def load_test_item(sample: TestSample, size: tuple[int, int], color: ColorMode) -> tuple[np.ndarray, np.ndarray | None]:
    """(model input CxHxW, boolean mask HxW or None where the defect has no mask) for one test sample."""
    stored = read_image(sample.path)
    return preprocess(stored, size, color), load_mask(sample, stored.shape[:2], size)


def spread_subset(items: list[T], count: int | None, seed: int) -> list[T]:
    """Up to `count` items drawn at random (seeded), kept in their original order. Not the first `count`: file
    names often follow the acquisition order, and the first ones would all come from one shift or batch."""
    if count is None or count >= len(items):
        return list(items)
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), count, replace=False))
    return [items[int(i)] for i in chosen]


def split_holdout(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split of train/good into (fit, held-out calibration) lists."""
    if len(paths) < 4:
        raise DatasetError(f"need at least 4 good training images, found {len(paths)}")
    order = np.random.default_rng(seed).permutation(len(paths))
    held_count = min(max(2, round(fraction * len(paths))), len(paths) - 2)
    held = sorted(paths[i] for i in order[:held_count])
    fit = sorted(paths[i] for i in order[held_count:])
    return fit, held
