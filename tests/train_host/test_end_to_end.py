import json

import numpy as np
import pytest

from train_host.calibrate import expected_false_alarm_rate
from train_host.config import ConfigError
from train_host.evaluation import evaluate
from train_host.report import write_report
from train_host.run_store import load_run
from train_host.training import train


def test_training_writes_every_artefact(tiny_run):
    for name in ("config.yaml", "split.json", "autoencoder.pt", "unet.pt", "backbone_adapted.pt", "calibration.json"):
        assert (tiny_run / name).is_file(), name
    log = json.loads((tiny_run / "training_log.json").read_text())
    assert {"autoencoder", "denoiser", "adaptation", "memory", "calibration"} <= set(log)
    run = load_run(tiny_run)
    assert run.memory.index.get_current_count() > 0
    assert np.isfinite(run.calibration.image_threshold) and np.isfinite(run.calibration.pixel_threshold)
    assert run.calibration.bins.low <= run.calibration.bins.high


def test_evaluation_is_finite_and_well_formed(tiny_run, tmp_path):
    report = evaluate(tiny_run, [], "test")
    assert [m.defect_type for m in report.per_type] == ["blowhole", "crack"]
    assert report.overall.defect_images == 6 and report.overall.good_images == 3
    for m in [report.overall, *report.per_type]:
        for value in (m.image_auroc, m.pixel_auroc, m.aupro, m.f1.f1):
            assert np.isfinite(value) and 0.0 <= value <= 1.0
    page = write_report(report, tmp_path / "eval")
    text = page.read_text()
    assert "image AUROC" in text and (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    held_out = len(load_run(tiny_run).holdout)
    assert report.expected_false_alarm_rate == expected_false_alarm_rate(held_out, 0.02) > 0.02
    assert (
        f"on new good parts, from the number of held-out goods that set it: {report.expected_false_alarm_rate:.1%}"
        in text
    )
    assert len(list((tmp_path / "eval" / "samples").glob("*.png"))) == 6
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["overall"]["image_auroc"] == pytest.approx(report.overall.image_auroc)


def test_report_pictures_show_the_healed_image_where_no_map_decodes_it(tiny_run):
    report = evaluate(tiny_run, ["inspection.map_weights.feature=0"], "latent")
    assert report.pictures
    assert all(p.healed_image is not None and p.healed_image.shape == p.input_image.shape for p in report.pictures)


def test_ablation_overrides_recalibrate(tiny_run):
    report = evaluate(tiny_run, ["inspection.map_weights.knn=0", "inspection.denoise_steps=1"], "recon")
    assert 0.0 <= report.overall.image_auroc <= 1.0
    with pytest.raises(ConfigError, match="'unet' changed"):
        evaluate(tiny_run, ["unet.iterations=5"], "bad")


def test_resume_skips_finished_steps(tiny_run, tiny_config, capsys):
    before = (tiny_run / "unet.pt").stat().st_mtime_ns
    train(tiny_config, tiny_run)
    assert "[denoiser] already done" in capsys.readouterr().out
    assert (tiny_run / "unet.pt").stat().st_mtime_ns == before
    changed = tiny_config.model_copy(update={"seed": 99})
    with pytest.raises(ConfigError, match="different config"):
        train(changed, tiny_run)
