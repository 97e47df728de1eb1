"""The soak's options refuse settings that could not measure what they promise."""

from pathlib import Path

import pytest

from demo_line.__main__ import build_parser
from demo_line.soak import SoakOptions


def options(tmp_path: Path, **changes: object) -> SoakOptions:
    return SoakOptions(tmp_path / "bundle.tar", tmp_path / "key.pem", tmp_path, tmp_path, **changes)


def test_a_camera_without_frames_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="camera_fps must be positive, got 0"):
        options(tmp_path, camera_fps=0.0, steady=True)


def test_outages_need_room_in_the_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duration_s 100.0 must be at least 4 x outage_s"):
        options(tmp_path, duration_s=100.0, outage_s=60.0)
    assert options(tmp_path, duration_s=100.0, outage_s=60.0, steady=True).timeline() == []


def test_the_command_line_runs_the_soak_with_its_own_defaults(tmp_path: Path) -> None:
    args = build_parser().parse_args(["soak"])
    given = options(tmp_path, duration_s=args.duration, outage_s=args.outage, camera_fps=args.camera_fps)
    assert given == options(tmp_path)
