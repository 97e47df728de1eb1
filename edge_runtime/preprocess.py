"""Frames in, model input out: validation, resizing and scaling to [-1, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

ColorMode = Literal["gray", "rgb"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class FrameError(ValueError):
    """A frame that cannot be inspected; the message says why."""


def channels_of(color: ColorMode) -> int:
    return 1 if color == "gray" else 3


def validate_frame(frame: object) -> np.ndarray:
    """Reject frames that would otherwise yield a meaningless verdict."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise FrameError(f"frame is empty (shape {frame.shape})")
    if frame.ndim not in (2, 3):
        raise FrameError(f"frame must be HxW or HxWxC, got shape {frame.shape}")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        raise FrameError(f"frame must have 1, 3 or 4 channels, got {frame.shape[2]}")
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(frame)):
            raise FrameError("frame holds NaN or infinite values")
        if frame.min() < 0.0 or frame.max() > 1.0:
            raise FrameError("float frames must hold values in [0, 1]")
        return np.round(frame * 255.0).astype(np.uint8)
    raise FrameError(f"frame dtype must be uint8 or float in [0, 1], got {frame.dtype}")


def to_color(frame: np.ndarray, color: ColorMode) -> np.ndarray:
    """Convert an HxW / HxWxC frame (RGB order for colour) to the model's colour mode, HxWxC."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if color == "gray" and frame.shape[2] == 3:
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[:, :, None]
    elif color == "rgb" and frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    return frame


def preprocess(frame: np.ndarray, size: tuple[int, int], color: ColorMode) -> np.ndarray:
    """uint8 (or [0,1] float) frame -> float32 CxHxW in [-1, 1] at size (height, width)."""
    frame = to_color(validate_frame(frame), color)
    height, width = size
    if frame.shape[:2] != (height, width):
        interpolation = cv2.INTER_AREA if frame.shape[0] > height else cv2.INTER_LINEAR
        resized = cv2.resize(frame, (width, height), interpolation=interpolation)
        frame = resized.reshape(height, width, -1)
    return (frame.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def read_image_file(path: Path) -> np.ndarray:
    """HxW (gray) or HxWx3 (RGB) uint8, as stored; 16-bit images are scaled to 8 bits."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError(f"cannot read image {path} (missing, corrupt or not an image)")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """Model-space CxHxW in [-1, 1] -> HxWxC uint8, for pictures."""
    return np.clip((image.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
