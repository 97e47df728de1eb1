"""Runtime configs: strict, every problem named by its key path; `validate-config` and `run` explain them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_runtime.__main__ import main
from edge_runtime.service.service_config import ConfigError, load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[3]


def write(path: Path, raw: object) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_configs_are_valid_apart_from_the_bundle_they_point_at():
    for path in sorted((REPO_ROOT / "configs" / "runtime").glob("*.yaml")):
        config = parse_config(yaml.safe_load(path.read_text()), str(path))
        assert (config.bundle.slot is None) != (config.bundle.archive is None)


def test_defaults_work_with_only_a_bundle(tmp_path):
    config = parse_config({"bundle": {"slot": str(tmp_path)}}, "minimal")
    assert config.mode.kind == "continuous" and config.mqtt.qos == 2 and config.heatmaps.publish == "defects"


def test_results_default_to_qos_2_one_at_a_time_and_qos_1_stays_selectable(tmp_path):
    bundle = {"slot": str(tmp_path)}
    mqtt = parse_config({"bundle": bundle}, "minimal").mqtt
    assert (mqtt.qos, mqtt.inflight) == (2, 1)
    assert parse_config({"bundle": bundle, "mqtt": {"qos": 1, "inflight": 20}}, "qos 1").mqtt.inflight == 20
    with pytest.raises(ConfigError) as refused:
        parse_config({"bundle": bundle, "mqtt": {"qos": 2, "inflight": 20}}, "site.yaml")
    assert "inflight must be 1 with qos 2" in " | ".join(refused.value.problems)
    with pytest.raises(ConfigError) as refused:
        parse_config({"bundle": bundle, "mqtt": {"session_expiry_s": 0}}, "site.yaml")
    assert "qos 2 needs a kept session" in " | ".join(refused.value.problems)
    assert parse_config({"bundle": bundle, "mqtt": {"qos": 1, "session_expiry_s": 0}}, "clean").mqtt.qos == 1


def test_validate_config_names_every_problem_by_key_path(tmp_path, capsys):
    raw = {
        "bundle": {"archive": str(tmp_path / "missing.tar")},
        "camera": {"pipeline": "videotestsrc", "frame_timeout_s": -1, "zoom": 2},
        "mode": {"kind": "sometimes"},
        "mqtt": {"port": 70000, "device_id": "line/1", "password": "hunter2"},
        "heatmaps": {"publish": "maybe"},
        "outbox": {"max_rows": "many"},
        "colour": "blue",
    }
    assert main(["validate-config", str(write(tmp_path / "bad.yaml", raw))]) == 2
    err = capsys.readouterr().err
    for expected in [
        "bundle: archive needs at least one trusted_keys entry",
        "camera.frame_timeout_s: Input should be greater than 0 (got -1)",
        "camera.zoom: Extra inputs are not permitted",
        "mode.kind: Input should be 'continuous' or 'triggered' (got 'sometimes')",
        "mqtt.port: Input should be less than or equal to 65535 (got 70000)",
        "mqtt.device_id: must not hold / + # or NUL (it is one topic level) (got 'line/1')",
        "mqtt.password: must not be written in the config; use password_file or password_credential",
        "heatmaps.publish: Input should be 'all', 'defects' or 'off' (got 'maybe')",
        "outbox.max_rows: Input should be a valid integer",
        "colour: Extra inputs are not permitted",
    ]:
        assert expected in err, f"{expected!r} missing from:\n{err}"
    assert "hunter2" not in err, "a password written in the config is never echoed"


def test_files_and_the_pipeline_are_checked_too(tmp_path, capsys):
    raw = {"bundle": {"slot": str(tmp_path / "nowhere")}, "mqtt": {"username": "u", "password_file": "/no/pw"}}
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path / "files.yaml", raw))
    assert error.value.problems == [
        f"bundle.slot: folder {tmp_path / 'nowhere'} does not exist",
        "mqtt.password_file: file /no/pw does not exist",
    ]
    raw = {"bundle": {"slot": str(tmp_path)}, "camera": {"pipeline": "videotestsrc ! nosuchfilter"}}
    assert main(["validate-config", str(write(tmp_path / "pipe.yaml", raw))]) == 2
    assert 'camera.pipeline: no element "nosuchfilter"' in capsys.readouterr().err


def test_run_refuses_a_bad_config_with_the_same_explanation(tmp_path, capsys):
    path = write(tmp_path / "bad.yaml", {"bundle": {"slot": str(tmp_path)}, "mode": {"max_fps": -3}})
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mode.max_fps: Input should be greater than or equal to 0 (got -3)" in err
    assert "refusing to start" in err


def test_unreadable_files_and_non_mappings_are_explained(tmp_path, capsys):
    assert main(["validate-config", str(tmp_path / "absent.yaml")]) == 2
    assert "(file): does not exist" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("bundle: [unclosed\n")
    assert main(["validate-config", str(tmp_path / "broken.yaml")]) == 2
    assert "(file): not valid YAML" in capsys.readouterr().err
    assert main(["validate-config", str(write(tmp_path / "list.yaml", [1, 2]))]) == 2
    assert "(top level): expected a mapping" in capsys.readouterr().err


def test_a_valid_config_gets_a_short_summary(tmp_path, capsys):
    raw = {"bundle": {"slot": str(tmp_path)}, "mode": {"kind": "triggered"}, "mqtt": {"device_id": "cam-7"}}
    assert main(["validate-config", str(write(tmp_path / "ok.yaml", raw))]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "triggered" in out and "d3ad/cam-7/" in out


SHIPPED = sorted((REPO_ROOT / "configs" / "runtime").glob("*.yaml"))


def commented_check(path: Path) -> list[str]:
    """The offline check a shipped config's header comment tells a reader to run, as d3ad arguments."""
    header = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    commands = [line for line in header if line.startswith(".venv/bin/d3ad validate-config --offline ")]
    assert len(commands) == 1, f"{path.name}: no single offline check in its comment: {header}"
    return commands[0].removeprefix(".venv/bin/d3ad ").split()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_configs_validate_offline_as_their_comment_says(path, monkeypatch, capsys):
    from edge_runtime.cli import main as d3ad

    argv = commented_check(path)
    assert argv[-1] == str(path.relative_to(REPO_ROOT)), "the comment names the config itself"
    monkeypatch.chdir(REPO_ROOT)  # the comment's paths are relative to the repository root
    assert d3ad(argv) == 0
    out = capsys.readouterr().out
    assert f"{argv[-1]}: schema valid" in out
    config = parse_config(yaml.safe_load(path.read_text()), str(path))
    bundle = config.bundle.slot or config.bundle.archive
    if not bundle.exists():  # as shipped: the bundle is missing, named as a notice
        assert f"notice: bundle.{'slot' if config.bundle.slot else 'archive'}: " in out and str(bundle) in out


def test_offline_check_still_refuses_an_unknown_key_and_names_it(tmp_path, capsys):
    raw = {"bundle": {"slot": str(tmp_path / "nowhere")}, "camera": {"zoom": 2}, "colour": "blue"}
    assert main(["validate-config", "--offline", str(write(tmp_path / "bad.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "colour: Extra inputs are not permitted" in err and "camera.zoom: Extra inputs are not permitted" in err
    assert "nowhere" not in err, "missing files are not problems offline"
    assert main(["validate-config", "--offline", str(tmp_path / "absent.yaml")]) == 2
    assert "(file): does not exist" in capsys.readouterr().err


def test_offline_check_lists_missing_files_as_notices_and_the_full_check_refuses_them(tmp_path, capsys):
    raw = {"bundle": {"slot": str(tmp_path / "nowhere")}, "mqtt": {"username": "u", "password_file": "/no/pw"}}
    path = write(tmp_path / "files.yaml", raw)
    assert main(["validate-config", "--offline", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"notice: bundle.slot: folder {tmp_path / 'nowhere'} does not exist" in out
    assert "notice: mqtt.password_file: file /no/pw does not exist" in out
    assert main(["validate-config", str(path)]) == 2
    assert "bundle.slot: folder" in capsys.readouterr().err


def test_the_fallback_of_a_failing_new_model_has_defaults_and_strict_keys(tmp_path):
    fallback = parse_config({"bundle": {"slot": str(tmp_path)}}, "minimal").updates.fallback
    assert (fallback.enabled, fallback.max_failures, fallback.window_s) == (True, 5, 60.0)
    assert (fallback.probation_s, fallback.max_crashes, fallback.crash_window_s) == (86400.0, 3, 600.0)
    wrong = {"max_fails": 3, "window_s": 0, "max_crashes": 0}
    raw = {"bundle": {"slot": str(tmp_path)}, "updates": {"fallback": wrong}}
    with pytest.raises(ConfigError) as refused:
        parse_config(raw, "site.yaml")
    problems = " | ".join(refused.value.problems)
    assert "updates.fallback.max_fails: Extra inputs are not permitted" in problems
    assert "updates.fallback.window_s: Input should be greater than 0" in problems
    assert "updates.fallback.max_crashes: Input should be greater than or equal to 1 (got 0)" in problems


def test_the_fallback_is_off_where_updates_are(tmp_path):
    on = parse_config({"bundle": {"slot": str(tmp_path)}}, "minimal").updates
    off = parse_config({"bundle": {"slot": str(tmp_path)}, "updates": {"enabled": False}}, "minimal").updates
    assert on.fallback_in_effect().enabled and not off.fallback_in_effect().enabled
    assert off.fallback.enabled, "the configured value itself is kept"
