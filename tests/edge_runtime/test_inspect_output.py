"""`inspect --out`: overlays, results.jsonl and report.md for a folder of real images, with the tiny real bundle;
the scores are the inspector's own, and bad inputs are named before the model loads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import cli
from edge_runtime.__main__ import main
from edge_runtime.inspect_output import REPORT_FILE, RESULTS_FILE, overlay_names
from edge_runtime.inspector import Inspector
from edge_runtime.preprocess import read_image_file


@pytest.fixture
def parts(tmp_path: Path, tiny_dataset: Path) -> Path:
    """Real magnetic-tile test images in nested folders: parts/good, parts/crack and parts/crack/edge."""
    folder = tmp_path / "parts"
    test = tiny_dataset / "test"
    for source, target in [("good", "good"), ("crack", "crack"), ("blowhole", "crack/edge")]:
        (folder / target).mkdir(parents=True)
        for image in sorted((test / source).iterdir())[:2]:
            shutil.copy(image, folder / target / image.name)
    return folder


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def test_a_folder_gives_an_overlay_a_result_line_and_a_report_row_per_image(tmp_path, parts, slot, bundle, capsys):
    out = tmp_path / "out"
    assert main(["inspect", "--slot", str(slot), "--out", str(out), str(parts)]) == 0
    printed = capsys.readouterr().out
    images = images_under(parts)
    assert len(images) == 6

    for image in images:  # same relative path, a real picture at the input's size
        overlay = cv2.imread(str(out / image.relative_to(parts)), cv2.IMREAD_UNCHANGED)
        source = read_image_file(image)
        assert overlay is not None, f"no readable overlay for {image}"
        assert overlay.shape == (*source.shape[:2], 3)
        gray = source if source.ndim == 2 else cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
        assert np.abs(overlay.astype(float) - gray[:, :, None]).mean() > 5, "the heatmap is drawn over the image"

    results = read_results(out)
    assert [r["file"] for r in results] == [str(p) for p in images]
    inspector = Inspector.from_slot(slot)
    threshold = inspector.calibration.image_threshold
    for line, image in zip(results, images, strict=True):
        expected = inspector.inspect(read_image_file(image))
        assert line["score"] == pytest.approx(float(expected.score), abs=1e-6)
        assert line["is_defect"] == (line["score"] >= threshold) == expected.is_defect
        assert line["threshold"] == threshold and line["model_version"] == bundle[1].model_version
        assert line["overlay"] == image.relative_to(parts).as_posix()
        assert len(line["regions"]) == len(expected.regions) and line["timings_ms"]["total"] > 0
        for box in line["regions"]:  # in the input's pixels
            assert box["x"] >= 0 and box["x"] + box["width"] <= line["width"] + 1
            assert box["y"] >= 0 and box["y"] + box["height"] <= line["height"] + 1
        assert f"{image}: {'DEFECT' if line['is_defect'] else 'good'} score=" in printed

    report = (out / REPORT_FILE).read_text()
    flagged = sum(r["is_defect"] for r in results)
    assert f"model version: {bundle[1].model_version}" in report
    assert "- images: 6" in report and f"- defects flagged: {flagged}" in report
    assert f"score threshold: {threshold:.6g}" in report
    rows = [row for row in report.splitlines() if re.match(r"\| \d+ \|", row)]
    assert len(rows) == 6
    by_row = [float(row.split(" | ")[2]) for row in rows]
    assert by_row == sorted(by_row, reverse=True), "the table is sorted by score, highest first"
    for line in results:
        (row,) = [row for row in rows if f"| {line['file']} |" in row]
        assert f"({line['overlay']})" in row and ("**defect**" in row) == line["is_defect"]


def test_d3ad_takes_the_same_folders_and_files_and_keeps_the_common_layout(tmp_path, parts, bundle, keys):
    out = tmp_path / "out"
    single = images_under(parts / "good")[0]
    argv = ["inspect", "--bundle", str(bundle[0]), "--trusted-key", str(keys[1]), "--out", str(out)]
    assert cli.main([*argv, str(single), str(parts / "crack")]) == 0
    results = read_results(out)
    expected = [single, *images_under(parts / "crack")]
    assert [r["file"] for r in results] == [str(p) for p in expected]
    assert [r["overlay"] for r in results] == [p.relative_to(parts).as_posix() for p in expected]
    assert all((out / r["overlay"]).is_file() for r in results)


def test_without_out_only_verdicts_are_printed(tmp_path, parts, slot, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "--slot", str(slot), str(parts / "good")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


def test_a_run_that_stops_at_a_bad_image_keeps_the_lines_before_it(tmp_path, parts, slot, capsys):
    broken = parts / "good" / "zz-broken.png"  # sorted after the two good images
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["inspect", "--slot", str(slot), "--out", str(out), str(parts / "good")]) == 2
    assert f"cannot read image {broken}" in capsys.readouterr().err
    assert [r["file"] for r in read_results(out)] == [str(p) for p in images_under(parts / "good")[:2]]
    assert not (out / REPORT_FILE).exists(), "no report for a run that did not finish"


def test_bad_paths_are_named_before_anything_is_written(tmp_path, parts, slot, capsys):
    out = tmp_path / "out"
    missing = parts / "good" / "missing.png"
    assert main(["inspect", "--slot", str(slot), "--out", str(out), str(parts), str(missing)]) == 2
    assert f"no such image file or folder: {missing}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", "--slot", str(slot), "--out", str(out), str(tmp_path / "empty")]) == 2
    assert "no image files under" in capsys.readouterr().err
    assert main(["inspect", "--slot", str(slot), "--out", str(parts / "good"), str(parts)]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert not out.exists()
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    assert main(["inspect", "--slot", str(slot), "--out", str(taken), str(parts / "good")]) == 2
    assert f"error: [Errno 17] File exists: '{taken}'" in capsys.readouterr().err


def test_overlay_names_keep_the_layout_below_the_common_folder(tmp_path):
    files = [tmp_path / "a" / "x" / "1.png", tmp_path / "a" / "y" / "1.png", tmp_path / "b.png"]
    assert overlay_names(files) == [Path("a/x/1.png"), Path("a/y/1.png"), Path("b.png")]
    assert overlay_names([tmp_path / "a" / "x" / "1.png"]) == [Path("1.png")]
    with pytest.raises(ValueError, match="given more than once"):
        overlay_names([files[0], tmp_path / "a" / "x" / ".." / "x" / "1.png"])
