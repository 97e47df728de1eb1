"""Synthetic defects pasted on good images, with their masks.

They stand in for the defects a site has not collected yet: the calibration uses them to weigh the maps and
to estimate recall at the stored threshold, the precision gate to judge heatmaps. Three kinds, each drawn
with random size, place and contrast, so no single look dominates:
- blob: a smooth random-field region (Perlin-like) filled with foreign texture or a brightness change;
- patch: a piece of the image cut out, transformed and pasted elsewhere (cut-paste);
- scratch: a thin polyline, brighter or darker than the surface.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("blob", "patch", "scratch")
MIN_AREA_FRACTION = 0.002
MAX_AREA_FRACTION = 0.12


def smooth_field(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Two octaves of upsampled Gaussian noise: a smooth field with blobs of several sizes."""
    height, width = size
    field = np.zeros(size, dtype=np.float32)
    for cells, weight in ((int(rng.integers(2, 6)), 1.0), (int(rng.integers(6, 14)), 0.5)):
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        field += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return field


def blob_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """One connected blob cut from a smooth field, its area within the allowed range."""
    height, width = size
    for _ in range(20):
        field = smooth_field(rng, size)
        fraction = rng.uniform(MIN_AREA_FRACTION * 2, MAX_AREA_FRACTION)
        mask = (field >= np.quantile(field, 1.0 - fraction)).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count > 1:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            blob = labels == largest
            if blob.mean() >= MIN_AREA_FRACTION:
                return blob
    # A plain ellipse when the field gave nothing usable (very small images).
    mask = np.zeros(size, dtype=np.uint8)
    centre = (int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 4, 3 * height // 4)))
    cv2.ellipse(mask, centre, (max(2, width // 10), max(2, height // 14)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def foreign_texture(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """What fills a blob: the donor image turned and shifted in brightness, or a flat brightness change."""
    if rng.random() < 0.5:
        texture = np.rot90(donor, k=int(rng.integers(1, 4)), axes=(1, 2))
        if texture.shape != image.shape:
            texture = np.flip(donor, axis=2)
        return np.clip(texture + rng.uniform(-0.5, 0.5), -1.0, 1.0)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.8)
    return np.clip(image + shift, -1.0, 1.0)


def paste_blob(rng: np.random.Generator, image: np.ndarray, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = blob_mask(rng, image.shape[1:])
    opacity = rng.uniform(0.6, 1.0)
    texture = foreign_texture(rng, image, donor)
    blended = np.where(mask[None], (1.0 - opacity) * image + opacity * texture, image)
    return blended.astype(np.float32), mask


def paste_patch(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut-paste: a rectangle of the image, rotated and re-lit, pasted at another place."""
    _, height, width = image.shape
    patch_h = int(rng.integers(max(4, height // 16), max(5, height // 4)))
    patch_w = int(rng.integers(max(4, width // 16), max(5, width // 4)))
    top, left = int(rng.integers(0, height - patch_h)), int(rng.integers(0, width - patch_w))
    patch = image[:, top : top + patch_h, left : left + patch_w]
    patch = np.flip(patch, axis=int(rng.integers(1, 3))) * rng.uniform(0.6, 1.4) + rng.uniform(-0.4, 0.4)
    patch = np.clip(patch, -1.0, 1.0)
    target_top, target_left = int(rng.integers(0, height - patch_h)), int(rng.integers(0, width - patch_w))
    defective = image.copy()
    defective[:, target_top : target_top + patch_h, target_left : target_left + patch_w] = patch
    mask = np.zeros((height, width), dtype=bool)
    mask[target_top : target_top + patch_h, target_left : target_left + patch_w] = True
    # Where the pasted piece happens to equal what was there, there is no defect to find.
    mask &= np.abs(defective - image).max(axis=0) > 0.02
    return np.where(mask[None], defective, image).astype(np.float32), mask


def draw_scratch(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin bent line a few pixels wide, lighter or darker than the surface."""
    _, height, width = image.shape
    points = [np.array([rng.uniform(0, width), rng.uniform(0, height)])]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(2, 5))):
        heading += rng.uniform(-0.6, 0.6)
        step = rng.uniform(0.08, 0.25) * max(height, width)
        points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    canvas = np.zeros((height, width), dtype=np.uint8)
    thickness = max(1, int(round(rng.uniform(0.006, 0.02) * max(height, width))))
    polyline = np.round(np.stack(points)).astype(np.int32)
    cv2.polylines(canvas, [polyline], isClosed=False, color=1, thickness=thickness)
    mask = canvas.astype(bool)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9)
    defective = np.where(mask[None], np.clip(image + shift, -1.0, 1.0), image)
    return defective.astype(np.float32), mask


def make_synthetic_defects(images: np.ndarray, seed: int, first_kind: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Defective copies of good images (N x C x H x W in [-1, 1]) and their masks (N x H x W bool). The kinds take
    turns from image to image, starting at KINDS[first_kind]: copies made with first kinds 0, 1 and 2 give every
    image each kind once."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty N x C x H x W batch, got shape {images.shape}")
    rng = np.random.default_rng(seed)
    defective = np.empty_like(images, dtype=np.float32)
    masks = np.zeros((len(images), *images.shape[2:]), dtype=bool)
    for i, image in enumerate(images):
        kind = KINDS[(i + first_kind) % len(KINDS)]
        if kind == "blob":
            donor = images[int(rng.integers(len(images)))]
            defective[i], masks[i] = paste_blob(rng, image, donor)
        elif kind == "patch":
            defective[i], masks[i] = paste_patch(rng, image)
        else:
            defective[i], masks[i] = draw_scratch(rng, image)
    return defective, masks
