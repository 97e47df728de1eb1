"""Loading a run's stored config: runs made before a setting existed keep the behaviour they were calibrated for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from train_host.config import ConfigError, config_to_yaml, parse_config
from train_host.run_store import load_run_config

CONFIG = {"data": {"root": "parts", "image_size": [64, 64]}}


def test_a_run_stored_before_the_top_fraction_scores_by_the_maximum(tmp_path: Path) -> None:
    stored = yaml.safe_load(config_to_yaml(parse_config(CONFIG, "test")))
    del stored["inspection"]["score_top_fraction"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stored))
    assert load_run_config(path).inspection.score_top_fraction == 0.0


def test_a_run_stored_before_the_capped_fusion_keeps_summing_its_maps(tmp_path: Path) -> None:
    stored = yaml.safe_load(config_to_yaml(parse_config(CONFIG, "test")))
    del stored["inspection"]["fusion"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stored))
    assert load_run_config(path).inspection.fusion == "sum"
    assert parse_config(CONFIG, "test").inspection.fusion == "capped"


def test_a_run_stored_with_the_top_fraction_keeps_it(tmp_path: Path) -> None:
    config = parse_config(CONFIG, "test")
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_run_config(path) == config
    assert config.inspection.score_top_fraction > 0.0


def test_a_damaged_run_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="config.yaml: not valid YAML"):
        load_run_config(path)


def test_a_run_stored_before_the_coarse_memory_keeps_one_scale(tmp_path: Path) -> None:
    stored = yaml.safe_load(config_to_yaml(parse_config(CONFIG, "test")))
    del stored["backbone"]["knn_coarse_stages"]
    stored["backbone"]["knn_stages"] = [2, 3, 4, 5]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stored))
    backbone = load_run_config(path).backbone
    assert backbone.knn_coarse_stages == [] and backbone.all_knn_stages((256, 256)) == [2, 3, 4, 5]
