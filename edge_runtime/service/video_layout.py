"""Where a raw video frame's pixels lie in its buffer, and copying them out.

The layout comes from the buffer's GstVideo.VideoMeta when the source attached one (hardware decoders and
cameras whose memory has its own row pitch or plane offset), else from GstVideo.VideoInfo of the caps
(GStreamer pads GRAY8/RGB rows to 4 bytes). It is never guessed from the buffer size: a buffer with extra
bytes would be read sheared into a wrong image, and one too short would be read past its end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FrameLayout", "FrameLayoutError", "copy_pixels", "layout_of", "sample_to_array"]


class FrameLayoutError(ValueError):
    """A buffer that does not hold the frame its caps and meta describe; the frame is skipped."""


@dataclass(frozen=True)
class FrameLayout:
    width: int
    height: int
    channels: int
    offset: int  # of the first pixel row in the buffer
    stride: int  # bytes from the start of one row to the next

    @property
    def needed_bytes(self) -> int:
        """The buffer size the layout reads up to; the last row needs no padding after it."""
        return self.offset + self.stride * (self.height - 1) + self.width * self.channels


def _gst_video():  # noqa: ANN202 - gi modules have no static types
    # Only called with a sample in hand, so frames._gst() has initialised GStreamer already.
    import gi

    gi.require_version("GstVideo", "1.0")
    from gi.repository import GstVideo

    return GstVideo


def layout_of(sample, channels: int) -> FrameLayout:  # noqa: ANN001 - Gst.Sample
    """The first plane's layout of a GRAY8/RGB sample: from its VideoMeta, else from its caps."""
    GstVideo = _gst_video()
    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    if info is None:
        raise FrameLayoutError(f"caps {sample.get_caps().to_string()} do not describe raw video")
    meta = GstVideo.buffer_get_video_meta(sample.get_buffer())
    if meta is not None:
        return FrameLayout(meta.width, meta.height, channels, meta.offset[0], meta.stride[0])
    return FrameLayout(info.width, info.height, channels, info.offset[0], info.stride[0])


def copy_pixels(data: np.ndarray, layout: FrameLayout) -> np.ndarray:
    """An HxW (gray) or HxWx3 copy of the pixels of a flat uint8 buffer laid out as `layout`."""
    row_bytes = layout.width * layout.channels
    if layout.width <= 0 or layout.height <= 0 or layout.offset < 0 or layout.stride < row_bytes:
        raise FrameLayoutError(
            f"layout {layout.width}x{layout.height}, stride {layout.stride}, offset {layout.offset} is not a frame"
        )
    if data.size < layout.needed_bytes:
        raise FrameLayoutError(
            f"buffer of {data.size} bytes is too short for a {layout.width}x{layout.height} frame with stride "
            f"{layout.stride} and offset {layout.offset} ({layout.needed_bytes} bytes)"
        )
    start = data[layout.offset :]
    rows = np.lib.stride_tricks.as_strided(start, shape=(layout.height, row_bytes), strides=(layout.stride, 1))
    image = rows.reshape(layout.height, layout.width, layout.channels) if layout.channels > 1 else rows
    return image.copy()


def sample_to_array(sample, channels: int) -> np.ndarray:  # noqa: ANN001 - Gst.Sample
    """Copy a GRAY8/RGB sample's pixels, without the row padding; FrameLayoutError for a buffer that does not
    hold the frame."""
    layout = layout_of(sample, channels)
    buffer = sample.get_buffer()
    from gi.repository import Gst

    ok, mapped = buffer.map(Gst.MapFlags.READ)
    if not ok:
        raise FrameLayoutError("the video buffer cannot be mapped for reading")
    try:
        return copy_pixels(np.frombuffer(mapped.data, dtype=np.uint8), layout)
    finally:
        buffer.unmap(mapped)
