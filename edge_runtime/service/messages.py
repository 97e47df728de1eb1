"""Payloads of the outgoing messages: results as JSON (boxes in source-frame pixels) and heatmap JPEGs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

from edge_runtime.overlay import heatmap_overlay
from edge_runtime.results import DefectRegion, InspectionResult


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scaled_box(region: DefectRegion, scale_x: float, scale_y: float) -> dict[str, Any]:
    """A region found at model size, in the pixels of the frame the camera delivered."""
    box = region.scaled(scale_x, scale_y)
    return {"x": box.x, "y": box.y, "w": box.width, "h": box.height, "area": box.area, "peak": round(box.peak, 4)}


def result_payload(
    part_id: str,
    result: InspectionResult,
    frame_shape: tuple[int, ...],
    model_size: tuple[int, int],
    threshold: float,
    model_version: str,
    latency_ms: float,
    pts_s: float | None,
) -> dict[str, Any]:
    """The JSON published on `result` for one inspected part."""
    frame_height, frame_width = frame_shape[:2]
    scale_x, scale_y = frame_width / model_size[1], frame_height / model_size[0]
    return {
        "part_id": part_id,
        "time": utc_now(),
        "verdict": "defect" if result.is_defect else "good",
        "score": round(float(result.score), 6),
        "threshold": round(float(threshold), 6),
        "severity_bin": result.severity_bin,
        "timestep": result.timestep,
        "steps": result.steps,
        "model_version": model_version,
        "latency_ms": round(latency_ms, 2),
        "inspect_ms": round(result.timings_ms.get("total", 0.0), 2),
        "frame": {"width": frame_width, "height": frame_height, "pts_s": pts_s},
        "defects": [scaled_box(region, scale_x, scale_y) for region in result.regions],
    }


def encode_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def heatmap_jpeg(model_image: np.ndarray, result: InspectionResult, pixel_threshold: float, quality: int) -> bytes:
    """The overlay at model resolution (where the map and boxes live), as JPEG bytes."""
    overlay = heatmap_overlay(model_image, result.anomaly_map, pixel_threshold, result.regions)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding of the heatmap failed")
    return data.tobytes()
