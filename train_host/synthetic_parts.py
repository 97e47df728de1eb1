"""A small set of synthetic parts for trying the product without a real dataset.

Each part is a grey textured surface (uneven lighting, coarse mottling, fine grain, a brushing direction);
defective parts get a drawn scratch or spot. Written in the MVTec layout with a pixel mask per defect, so
`train_host.dataset` reads it like a real set. Deterministic for a given seed. These are not photographs:
a model trained on them shows how the product works, not how well it inspects real parts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from train_host.dataset import GOOD

DEFECT_TYPES = ("scratch", "spot")
_STREAMS = {"train": 0, "test": 1}  # separate random streams, so train and test never share a surface


@dataclass(frozen=True)
class SyntheticSetSpec:
    train_good: int = 120
    test_good: int = 20
    test_per_defect: int = 10
    size: tuple[int, int] = (192, 192)  # (height, width)
    seed: int = 0

    def __post_init__(self) -> None:
        height, width = self.size
        if height < 32 or width < 32:
            raise ValueError(f"synthetic parts must be at least 32x32 pixels, got {width}x{height}")
        if self.train_good < 4:
            raise ValueError(f"synthetic set needs at least 4 good training parts, got {self.train_good}")
        if self.test_good < 1 or self.test_per_defect < 1:
            raise ValueError("synthetic set needs at least one good and one defective test part of each type")


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean noise blurred to a feature size of about `sigma` pixels, scaled to unit deviation."""
    noise = cv2.GaussianBlur(rng.standard_normal(size).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def render_surface(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A defect-free surface as float32 grey levels around 128."""
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    # Lighting falls off across the part in a random direction, as under one lamp.
    lighting = 18 * ((np.cos(angle) * cols / width + np.sin(angle) * rows / height) - 0.5)
    brushing = cv2.GaussianBlur(rng.standard_normal(size).astype(np.float32), (0, 0), sigmaX=9.0, sigmaY=0.6)
    brushing /= brushing.std() + 1e-6
    surface = 128 + rng.uniform(-12, 12) + lighting
    surface += 7 * _smooth_noise(rng, size, 8.0) + 3 * brushing + 3 * rng.standard_normal(size)
    return surface.astype(np.float32)


def _scratch_shape(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A thin, slightly curved line crossing a good part of the surface, as float coverage in [0, 1]."""
    height, width = size
    length = rng.uniform(0.3, 0.6) * min(height, width)
    angle = rng.uniform(0, np.pi)
    centre = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bend = rng.uniform(-0.08, 0.08) * length
    steps = np.linspace(-0.5, 0.5, 16)
    points = [centre + s * length * direction + (1 - 4 * s * s) * bend * normal for s in steps]
    shape = np.zeros(size, np.float32)
    thickness = int(rng.integers(2, 4))
    cv2.polylines(shape, [np.round(points).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA)
    return shape


def _spot_shape(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A small soft-edged elliptic blot, as float coverage in [0, 1]."""
    height, width = size
    scale = min(height, width)
    centre = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
    axes = (int(rng.uniform(0.04, 0.08) * scale) + 2, int(rng.uniform(0.03, 0.06) * scale) + 2)
    shape = np.zeros(size, np.float32)
    cv2.ellipse(shape, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(shape, (0, 0), 1.0)


def add_defect(surface: np.ndarray, defect_type: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(surface with the defect drawn in, boolean mask of the pixels the defect visibly changed)."""
    if defect_type == "scratch":
        shape, contrast = _scratch_shape(rng, surface.shape), rng.choice([-1, 1]) * rng.uniform(45, 65)
    elif defect_type == "spot":
        shape, contrast = _spot_shape(rng, surface.shape), -rng.uniform(45, 70)
    else:
        raise ValueError(f"unknown synthetic defect type {defect_type!r}; known: {', '.join(DEFECT_TYPES)}")
    # Half coverage is where the drawn defect changes a pixel by at least ~22 grey levels.
    return surface + contrast * shape, shape >= 0.5


def to_pixels(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def part_rng(spec: SyntheticSetSpec, split: str, kind: str, index: int) -> np.random.Generator:
    """The random stream of one part; the same part comes out whatever else is generated."""
    kinds = (GOOD, *DEFECT_TYPES)
    return np.random.default_rng([spec.seed, _STREAMS[split], kinds.index(kind), index])


def render_part(spec: SyntheticSetSpec, split: str, kind: str, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 image, boolean mask or None for a good part) of one part of the set."""
    rng = part_rng(spec, split, kind, index)
    surface = render_surface(rng, spec.size)
    if kind == GOOD:
        return to_pixels(surface), None
    image, mask = add_defect(surface, kind, rng)
    return to_pixels(image), mask


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def write_synthetic_set(root: Path, spec: SyntheticSetSpec = SyntheticSetSpec()) -> Path:
    """Write the set under `root` (train/good, test/<type>, ground_truth/<type>/<stem>_mask.png)."""
    for index in range(spec.train_good):
        image, _ = render_part(spec, "train", GOOD, index)
        _write_png(root / "train" / GOOD / f"{index:04d}.png", image)
    for kind, count in [(GOOD, spec.test_good)] + [(t, spec.test_per_defect) for t in DEFECT_TYPES]:
        for index in range(count):
            image, mask = render_part(spec, "test", kind, index)
            _write_png(root / "test" / kind / f"{index:04d}.png", image)
            if mask is not None:
                _write_png(root / "ground_truth" / kind / f"{index:04d}_mask.png", mask.astype(np.uint8) * 255)
    return root
