"""The demo conveyor: labelled test parts written as a numbered PNG sequence with a truth file, the GStreamer
source that plays them at a fixed frame rate, and the way back from a frame's timestamp to its part."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from train_host.dataset import GOOD, TestSample, read_image

TRUTH_FILE = "truth.json"
FRAME_PATTERN = "part_%05d.png"
Label = Literal["good", "defect"]


@dataclass(frozen=True)
class ConveyorPart:
    index: int  # position on the conveyor, also the frame number within one pass
    frame: str  # file name in the conveyor folder
    source: str  # the dataset image it was made from
    truth: Label
    defect_type: str  # "good" for good parts

    @property
    def truth_text(self) -> str:
        return "good" if self.truth == "good" else f"defect ({self.defect_type})"


@dataclass(frozen=True)
class Conveyor:
    folder: Path
    parts: list[ConveyorPart]
    fps: Fraction
    frame_size: tuple[int, int]  # (width, height) of every frame

    def source_pipeline(self) -> str:
        """A GStreamer source playing the parts in a loop at `fps` (the service adds conversion and sink).
        Looping keeps the stream alive like a running conveyor; timestamps keep counting across passes."""
        location = (self.folder / FRAME_PATTERN).resolve()
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        return f'multifilesrc location="{location}" index=0 loop=true caps="image/png,framerate={rate}" ! pngdec'

    def part_at(self, pts_s: float | None) -> ConveyorPart | None:
        """The part shown at a presentation time: frame k of a pass has pts k/fps (from 0 at each start)."""
        if pts_s is None or pts_s < 0:
            return None
        return self.parts[round(pts_s * self.fps) % len(self.parts)]


def frame_rate(fps: float) -> Fraction:
    if not 0 < fps <= 60:
        raise ValueError(f"conveyor frame rate must be in (0, 60] frames/s, got {fps}")
    return Fraction(fps).limit_denominator(1000)


def choose_parts(samples: list[TestSample], count: int, seed: int) -> list[TestSample]:
    """About half good and half defective parts, defect types taken in turn, in a fixed shuffled order."""
    if count < 2:
        raise ValueError(f"the conveyor needs at least 2 parts (one good, one defective), got {count}")
    rng = random.Random(seed)
    pools: dict[str, list[TestSample]] = {}
    for sample in samples:
        pools.setdefault(sample.defect_type, []).append(sample)
    for pool in pools.values():
        rng.shuffle(pool)
    good = pools.pop(GOOD, [])
    if not good or not pools:
        raise ValueError("the test set needs both good and defective images to fill a conveyor")
    wanted_good = min(len(good), count // 2)
    chosen = good[:wanted_good]
    defect_types = sorted(pools)
    turn = 0
    while len(chosen) < count and any(pools.values()):
        pool = pools[defect_types[turn % len(defect_types)]]
        if pool:
            chosen.append(pool.pop())
        turn += 1
    rng.shuffle(chosen)
    return chosen


def _frame_of(sample: TestSample, frame_size: tuple[int, int]) -> np.ndarray:
    """The image at the conveyor's frame size, as BGR or grey for cv2.imwrite; PNG keeps the pixels exact."""
    image = cv2.resize(read_image(sample.path), frame_size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image


def write_conveyor(samples: list[TestSample], folder: Path, fps: float, frame_size: tuple[int, int]) -> Conveyor:
    """Frames part_00000.png... and truth.json in `folder` (emptied of old frames first)."""
    rate = frame_rate(fps)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part_*.png"):
        old.unlink()
    parts = []
    for index, sample in enumerate(samples):
        name = FRAME_PATTERN % index
        if not cv2.imwrite(str(folder / name), _frame_of(sample, frame_size)):
            raise OSError(f"cannot write conveyor frame {folder / name}")
        truth: Label = "defect" if sample.is_defect else "good"
        parts.append(ConveyorPart(index, name, str(sample.path), truth, sample.defect_type))
    conveyor = Conveyor(folder, parts, rate, frame_size)
    save_truth(conveyor)
    return conveyor


def save_truth(conveyor: Conveyor) -> Path:
    path = conveyor.folder / TRUTH_FILE
    body = {
        "fps": str(conveyor.fps),
        "frame_size": list(conveyor.frame_size),
        "parts": [asdict(part) for part in conveyor.parts],
    }
    path.write_text(json.dumps(body, indent=2))
    return path


def load_truth(folder: Path) -> Conveyor:
    """The conveyor described by folder/truth.json; its frames must be there."""
    path = folder / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"conveyor truth file not found: {path}")
    try:
        body = json.loads(path.read_text())
        parts = [ConveyorPart(**fields) for fields in body["parts"]]
        conveyor = Conveyor(folder, parts, Fraction(body["fps"]), tuple(body["frame_size"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a conveyor truth file: {error}") from None
    missing = [part.frame for part in parts if not (folder / part.frame).is_file()]
    if missing:
        raise FileNotFoundError(f"conveyor frames missing in {folder}: {', '.join(missing[:5])}")
    return conveyor
