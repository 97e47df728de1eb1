from pathlib import Path

import pytest

from train_host.config import BackboneConfig, ConfigError, load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["magnetic_tile", "kolektor_sdd", "smoke"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO_ROOT / "configs" / "train" / f"{name}.yaml")
    assert config.data.root.name in ("magnetic_tile", "kolektor_sdd")


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"unet\.iteratons: Extra inputs are not permitted"):
        parse_config({"data": {"root": "x"}, "unet": {"iteratons": 5}}, "cfg.yaml")


def test_bad_value_names_file_key_and_value():
    with pytest.raises(ConfigError) as error:
        parse_config({"data": {"root": "x", "image_size": [250, 256]}}, "site.yaml")
    text = str(error.value)
    assert "site.yaml" in text and "data.image_size" in text and "multiples of 32" in text


def test_missing_required_section():
    with pytest.raises(ConfigError, match=r"data: Field required"):
        parse_config({}, "empty.yaml")


def test_knn_map_needs_patch_memory():
    with pytest.raises(ConfigError, match="memory.mode 'patch'"):
        parse_config({"data": {"root": "x"}, "memory": {"mode": "image"}}, "c.yaml")
    config = parse_config(
        {"data": {"root": "x"}, "memory": {"mode": "image"}, "inspection": {"map_weights": {"knn": 0}}}, "c.yaml"
    )
    assert config.memory.k == 20


def test_overrides_apply_yaml_values():
    config = parse_config({"data": {"root": "x"}}, "c.yaml", ["inspection.denoise_steps=4", "data.image_size=[64, 96]"])
    assert config.inspection.denoise_steps == 4
    assert config.data.image_size == (64, 96)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_config({"data": {"root": "x"}}, "c.yaml", ["inspection.denoise_steps"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)


def test_coarse_stages_follow_the_image_size_and_come_after_the_fine_ones():
    backbone = BackboneConfig()
    assert backbone.all_knn_stages((256, 256)) == [2, 3, 4, 5] and backbone.fine_stage_count((256, 256)) == 3
    assert backbone.all_knn_stages((448, 192)) == [2, 3, 4, 5]  # 6 cells on the short side
    assert backbone.all_knn_stages((128, 128)) == [2, 3, 4] and backbone.fine_stage_count((128, 128)) is None
    with pytest.raises(ValueError, match="must all come after knn_stages"):
        BackboneConfig(knn_stages=[2, 3, 4, 5], knn_coarse_stages=[5])
