"""Evaluation of the tiny run on sets labelled per image only, partly per pixel, and at the stored threshold."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from train_host.dataset import DatasetError, list_test_samples, load_test_item
from train_host.evaluation import EvaluationReport, inspect_test_set
from train_host.report import metrics_table, write_report
from train_host.run_store import build_pipeline, load_run


def evaluate_on(run_dir: Path, root: Path) -> EvaluationReport:
    """The run's own pipeline and stored calibration, on the test images of another folder."""
    run = load_run(run_dir)
    pipeline = build_pipeline(run, run.config.inspection, torch.device("cpu"))
    data = run.config.data.model_copy(update={"root": root})
    return inspect_test_set(pipeline, run.calibration, list_test_samples(root), data, str(run_dir), root.name)


def image_figures(report: EvaluationReport) -> list[tuple]:
    return [
        (m.defect_type, m.image_auroc, m.recall, m.false_alarm_rate, m.defects_found, m.false_alarms, m.f1)
        for m in [*report.per_type, report.overall]
    ]


@pytest.fixture(scope="module")
def with_masks(tiny_run, tiny_dataset) -> EvaluationReport:
    return evaluate_on(tiny_run, tiny_dataset)


def test_a_set_without_masks_gives_image_metrics_and_no_pixel_metrics(
    tiny_run, tiny_dataset, without_masks, with_masks, tmp_path
):
    report = evaluate_on(tiny_run, without_masks(tiny_dataset, tmp_path / "bare"))
    assert with_masks.overall.pixel_auroc is not None and with_masks.overall.aupro is not None
    # The same images give the same image figures; the pixel figures are stated as not available.
    assert image_figures(report) == image_figures(with_masks)
    assert report.types_without_masks == ["blowhole", "crack"]
    for m in [*report.per_type, report.overall]:
        assert m.pixel_auroc is None and m.aupro is None and m.masked_defect_images == 0
    page = write_report(report, tmp_path / "eval").read_text()
    rows = [line for line in metrics_table(report).splitlines() if line.startswith("| ") and "images" not in line]
    assert len(rows) == 3 and all(row.split(" | ").count("n/a") == 2 for row in rows)
    assert "No pixel masks in this set" in page
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["overall"]["pixel_auroc"] is None and saved["overall"]["aupro"] is None
    assert saved["types_without_masks"] == ["blowhole", "crack"]
    assert len(list((tmp_path / "eval" / "samples").glob("*.png"))) == 6


def test_masks_for_some_types_give_pixel_metrics_for_those(tiny_run, tiny_dataset, without_masks, with_masks, tmp_path):
    report = evaluate_on(tiny_run, without_masks(tiny_dataset, tmp_path / "part", keep=("blowhole",)))
    assert image_figures(report) == image_figures(with_masks)
    blowhole, crack = report.per_type
    full_blowhole = with_masks.per_type[0]
    assert (blowhole.pixel_auroc, blowhole.aupro) == (full_blowhole.pixel_auroc, full_blowhole.aupro)
    assert crack.pixel_auroc is None and crack.aupro is None
    # Overall pixel figures cover the masked type and the good images: the blowhole figures.
    assert report.overall.masked_defect_images == blowhole.defect_images == 3
    assert (report.overall.pixel_auroc, report.overall.aupro) == (blowhole.pixel_auroc, blowhole.aupro)
    assert report.overall.pixel_auroc != with_masks.overall.pixel_auroc
    page = write_report(report, tmp_path / "eval").read_text()
    assert "No pixel masks for crack" in page and "cover blowhole" in page


def test_recall_and_false_alarms_at_the_stored_threshold(tiny_run, tiny_dataset, with_masks, tmp_path):
    run = load_run(tiny_run)
    pipeline = build_pipeline(run, run.config.inspection, torch.device("cpu"))
    threshold = run.calibration.image_threshold
    flagged: dict[str, list[bool]] = {}
    for sample in list_test_samples(tiny_dataset):
        image, _ = load_test_item(sample, run.config.data.image_size, run.config.data.color)
        flagged.setdefault(sample.defect_type, []).append(pipeline.inspect(image, run.calibration).score >= threshold)
    goods = flagged.pop("good")
    for m in with_masks.per_type:
        assert (m.defects_found, m.defect_images) == (sum(flagged[m.defect_type]), len(flagged[m.defect_type]))
        assert m.recall == pytest.approx(np.mean(flagged[m.defect_type]))
        assert (m.false_alarms, m.false_alarm_rate) == (sum(goods), pytest.approx(np.mean(goods)))
    overall = with_masks.overall
    assert overall.defects_found == sum(sum(v) for v in flagged.values())
    assert overall.false_alarm_rate == pytest.approx(np.mean(goods))
    assert overall.recall == pytest.approx(overall.f1.recall)
    write_report(with_masks, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["overall"]["recall"] == pytest.approx(overall.recall)
    assert saved["per_type"][1]["false_alarm_rate"] == pytest.approx(np.mean(goods))
    table = metrics_table(with_masks)
    assert "recall @ threshold" in table and f"({overall.defects_found}/{overall.defect_images})" in table
    assert f"({overall.false_alarms}/{overall.good_images})" in table


def test_a_set_without_good_test_images_is_named(tiny_run, tiny_dataset, tmp_path):
    root = tmp_path / "no_goods"
    shutil.copytree(tiny_dataset, root)
    shutil.rmtree(root / "test" / "good")
    with pytest.raises(DatasetError, match=r"no good test images in .*no_goods/test/good"):
        evaluate_on(tiny_run, root)
