"""Frames in: a GStreamer source description ending in our appsink, pulled in its own thread, reconnected
with bounded exponential backoff when the camera stops delivering."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_runtime.preprocess import ColorMode
from edge_runtime.service.video_layout import FrameLayoutError, sample_to_array

log = logging.getLogger(__name__)

CameraState = Literal["connecting", "streaming", "lost", "stopped"]
_PULL_TIMEOUT_NS = 100_000_000  # how often the pull loop looks at the bus and the stop flag
_BAD_FRAME_LOG_EVERY = 100  # a camera sending only bad frames must not flood the log


def _unwind_with_libgcc() -> None:
    """Make libgcc's unwinder the one C++ libraries loaded later bind to. PyGObject opens libgstreamer (linked
    to libunwind) with global symbols, so without this, C++ exceptions in OpenVINO or torch loaded afterwards
    go through libunwind and abort the process (seen: OpenCV, then GStreamer, then an OpenVINO inference)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)


def _gst():  # noqa: ANN202 - gi modules have no static types
    _unwind_with_libgcc()
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    from gi.repository import Gst, GstApp  # noqa: F401 - GstApp registers the appsink actions

    if not Gst.is_initialized():
        Gst.init(None)
    return Gst


def full_description(source: str, color: ColorMode) -> str:
    """The configured source plus what the service adds: conversion to the model's pixel format and a
    one-buffer appsink that drops old frames, so a slow inspection never builds latency."""
    pixel_format = "GRAY8" if color == "gray" else "RGB"
    return (
        f"{source} ! videoconvert ! video/x-raw,format={pixel_format} "
        "! appsink name=frames max-buffers=1 drop=true emit-signals=false"
    )


def pipeline_problem(source: str, color: ColorMode = "gray") -> str | None:
    """Why a source description cannot be built (unknown element, syntax), or None; nothing is started."""
    Gst = _gst()
    try:
        pipeline = Gst.parse_launch(full_description(source, color))
    except Exception as error:  # GLib.Error: the message names the element or syntax problem
        return str(getattr(error, "message", error))
    pipeline.set_state(Gst.State.NULL)
    return None


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    number: int  # frames delivered by the camera since the service started
    received: float  # time.monotonic() when the frame left the pipeline
    pts_s: float | None  # the source's presentation time stamp


@dataclass(frozen=True)
class CameraEvent:
    state: CameraState
    reason: str = ""


class FrameSource:
    """Keeps the newest frame in a one-slot mailbox; a frame replaced before anyone took it counts as dropped."""

    def __init__(
        self,
        source: str,
        color: ColorMode,
        frame_timeout_s: float,
        backoff: tuple[float, float],
        on_event: Callable[[CameraEvent], None],
    ) -> None:
        self.description = full_description(source, color)
        self.channels = 1 if color == "gray" else 3
        self.frame_timeout_s = frame_timeout_s
        self.backoff_min, self.backoff_max = backoff
        self.on_event = on_event
        self.count_drops = True
        self.frames_in = 0
        self.dropped = 0
        self.bad_frames = 0  # buffers that do not hold the frame their caps describe; skipped
        self.last_bad_frame: str | None = None
        self.reconnects = 0
        self.state: CameraState = "stopped"
        self._latest: Frame | None = None
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="frames", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._set_state(CameraEvent("stopped"))

    def take(self, after: float | None = None, timeout: float = 1.0) -> Frame | None:
        """The newest frame not taken yet (received after `after`, when given); None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while True:
                frame = self._latest
                if frame is not None and (after is None or frame.received > after):
                    self._latest = None
                    return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._ready.wait(remaining)

    def _deliver(self, image: np.ndarray, pts_s: float | None) -> None:
        with self._ready:
            self.frames_in += 1
            if self._latest is not None and self.count_drops:
                self.dropped += 1
            self._latest = Frame(image, self.frames_in, time.monotonic(), pts_s)
            self._ready.notify_all()

    def _set_state(self, event: CameraEvent) -> None:
        if event.state == self.state and event.state != "lost":
            return
        self.state = event.state
        try:
            self.on_event(event)
        except Exception:  # a failing listener must not stop the camera thread
            log.exception("camera event listener failed")

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._set_state(CameraEvent("connecting"))
            try:
                delivered, reason = self._stream_once()
            except Exception as error:  # the camera thread must outlive any one broken pipeline
                log.exception("camera pipeline failed")
                delivered, reason = False, f"pipeline failed: {error}"
            if self._stop.is_set():
                return
            failures = 0 if delivered else failures + 1
            delay = min(self.backoff_max, self.backoff_min * (2 ** min(failures, 30)))
            log.warning("camera lost: %s; reconnecting in %.1f s", reason, delay)
            self._set_state(CameraEvent("lost", reason))
            self.reconnects += 1
            self._stop.wait(delay)

    def _stream_once(self) -> tuple[bool, str]:
        """Run the pipeline until it fails or stops delivering; returns (any frame delivered, why it ended)."""
        Gst = _gst()
        try:
            pipeline = Gst.parse_launch(self.description)
        except Exception as error:
            return False, f"pipeline cannot be built: {getattr(error, 'message', error)}"
        sink = pipeline.get_by_name("frames")
        bus = pipeline.get_bus()
        delivered = False
        try:
            if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                return False, self._bus_error(bus) or "pipeline refused to start"
            last_frame = time.monotonic()
            while not self._stop.is_set():
                sample = sink.emit("try-pull-sample", _PULL_TIMEOUT_NS)
                if sample is not None:
                    if not self._take(sample):
                        continue
                    last_frame = time.monotonic()
                    if not delivered:
                        delivered = True
                        self._set_state(CameraEvent("streaming"))
                    continue
                problem = self._bus_error(bus)
                if problem:
                    return delivered, problem
                if time.monotonic() - last_frame > self.frame_timeout_s:
                    return delivered, self._no_frame_reason()
            return delivered, "stopped"
        finally:
            pipeline.set_state(Gst.State.NULL)

    def _take(self, sample) -> bool:  # noqa: ANN001 - Gst.Sample
        """Deliver a sample's frame; a buffer that does not hold its frame is counted and skipped, so one bad
        buffer costs one frame, not the pipeline."""
        Gst = _gst()
        buffer = sample.get_buffer()
        pts = buffer.pts / Gst.SECOND if buffer.pts != Gst.CLOCK_TIME_NONE else None
        try:
            image = sample_to_array(sample, self.channels)
        except FrameLayoutError as error:
            self.bad_frames += 1
            self.last_bad_frame = str(error)
            if self.bad_frames % _BAD_FRAME_LOG_EVERY == 1:
                log.warning("bad frame skipped (%d so far): %s", self.bad_frames, error)
            return False
        self.last_bad_frame = None
        self._deliver(image, pts)
        return True

    def _no_frame_reason(self) -> str:
        reason = f"no frame for {self.frame_timeout_s:g} s"
        return f"{reason} (last bad frame: {self.last_bad_frame})" if self.last_bad_frame else reason

    @staticmethod
    def _bus_error(bus) -> str | None:  # noqa: ANN001 - Gst.Bus
        Gst = _gst()
        message = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if message is None:
            return None
        if message.type == Gst.MessageType.EOS:
            return "end of stream"
        error, debug = message.parse_error()
        return f"{message.src.get_name()}: {error.message}"
