"""Pictures for people: the anomaly map as a heatmap over the part, with defect outlines."""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.results import DefectRegion


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float, regions: list[DefectRegion]
) -> np.ndarray:
    """HxWx3 uint8 RGB: the part, a heatmap scaled so the pixel threshold sits mid-scale, boxes around regions."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    scale = 2.0 * pixel_threshold if pixel_threshold > 0 else max(float(anomaly_map.max()), 1e-6)
    heat = np.clip(anomaly_map / scale, 0.0, 1.0)
    colored = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    alpha = (0.25 + 0.5 * heat)[:, :, None]
    blended = (image * (1.0 - alpha) + colored * alpha).astype(np.uint8)
    for region in regions:
        top_left = (region.x, region.y)
        bottom_right = (region.x + region.width - 1, region.y + region.height - 1)
        cv2.rectangle(blended, top_left, bottom_right, (255, 255, 255), 1)
    return blended
