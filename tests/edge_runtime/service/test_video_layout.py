"""Frame layout from the caps and the video meta, with real GStreamer pipelines and raw frames on disk."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_runtime.service.frames import CameraEvent, FrameSource, _gst

WIDTH, HEIGHT = 64, 48


def raw_frames_source(folder: Path, frames: list[bytes], caps: str) -> str:
    """One file per buffer: multifilesrc turns each file into one buffer, whatever its size; identity paces
    them (5 a second) so the one-buffer appsink takes each."""
    for index, data in enumerate(frames):
        (folder / f"frame_{index:03d}.raw").write_bytes(data)
    location = folder / "frame_%03d.raw"
    return f'multifilesrc location={location} caps="{caps}" ! identity sleep-time=200000'


def take_all(source: FrameSource, events: list[CameraEvent], timeout: float = 15.0) -> list[np.ndarray]:
    """Every frame the source delivers until its stream ends."""
    taken = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(event.state == "lost" for event in events):
        frame = source.take(timeout=0.05)
        if frame is not None:
            taken.append(frame.image)
    return taken


def test_a_short_buffer_is_a_bad_frame_and_a_longer_one_is_not_sheared(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8) for _ in range(4)]
    extra = bytes(range(200))  # a camera whose buffers are larger than the frame
    frames = [images[0].tobytes(), images[1].tobytes()[:1000], images[2].tobytes() + extra, images[3].tobytes()]
    caps = f"video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate=5/1"
    events: list[CameraEvent] = []
    source = FrameSource(raw_frames_source(tmp_path, frames, caps), "gray", 5.0, (30.0, 30.0), events.append)
    source.start()
    try:
        taken = take_all(source, events)
    finally:
        source.stop()
    assert [event.state for event in events][:3] == ["connecting", "streaming", "lost"]
    assert events[2].reason == "end of stream", "the short buffer did not tear the pipeline down"
    assert source.frames_in == 3 and len(taken) == 3
    for image, expected in zip(taken, [images[0], images[2], images[3]], strict=True):
        assert np.array_equal(image, expected)
    assert source.bad_frames == 1


def test_padded_rgb_rows_are_read_with_the_stride_of_the_caps(tmp_path: Path) -> None:
    width, height = 161, 20  # 483 bytes a row, padded to 484 by GStreamer's default RGB layout
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    padded = np.full((height, 484), 255, dtype=np.uint8)
    padded[:, : width * 3] = image.reshape(height, width * 3)
    caps = f"video/x-raw,format=RGB,width={width},height={height},framerate=5/1"
    events: list[CameraEvent] = []
    source = FrameSource(raw_frames_source(tmp_path, [padded.tobytes()], caps), "rgb", 5.0, (30.0, 30.0), events.append)
    source.start()
    try:
        taken = take_all(source, events)
    finally:
        source.stop()
    assert len(taken) == 1 and source.bad_frames == 0
    assert np.array_equal(taken[0], image)


def test_stride_and_offset_of_the_video_meta_are_honoured() -> None:
    """A source whose memory has its own row pitch and plane offset says so in a VideoMeta on the buffer."""
    from edge_runtime.service.video_layout import sample_to_array

    Gst = _gst()
    import gi

    gi.require_version("GstVideo", "1.0")
    from gi.repository import GstVideo

    stride, offset = 80, 160
    image = np.random.default_rng(5).integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    memory = np.full(offset + stride * HEIGHT, 7, dtype=np.uint8)
    memory[offset:].reshape(HEIGHT, stride)[:, :WIDTH] = image
    caps = f"video/x-raw,format=GRAY8,width={WIDTH},height={HEIGHT},framerate=10/1"
    pipeline = Gst.parse_launch(
        f'appsrc name=camera caps="{caps}" format=time ! videoconvert ! video/x-raw,format=GRAY8 ! appsink name=out'
    )
    pipeline.set_state(Gst.State.PLAYING)
    try:
        buffer = Gst.Buffer.new_wrapped(memory.tobytes())
        GstVideo.buffer_add_video_meta_full(
            buffer, GstVideo.VideoFrameFlags.NONE, GstVideo.VideoFormat.GRAY8, WIDTH, HEIGHT, 1,
            [offset, 0, 0, 0], [stride, 0, 0, 0],
        )  # fmt: skip
        buffer.pts, buffer.duration = 0, Gst.SECOND // 10
        assert pipeline.get_by_name("camera").emit("push-buffer", buffer) == Gst.FlowReturn.OK
        sample = pipeline.get_by_name("out").emit("try-pull-sample", 5 * Gst.SECOND)
        assert sample is not None
        assert np.array_equal(sample_to_array(sample, 1), image)
    finally:
        pipeline.set_state(Gst.State.NULL)
