"""`d3ad`: one command over the packages' command lines; device commands never need torch."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from edge_runtime import cli

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = REPO_ROOT / "pyproject.toml"

# Runs `d3ad` with the named top-level modules unimportable, as on a device without the host extra.
WITHOUT = """
import sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Blocked())
from edge_runtime.cli import main
code = main({argv!r})
assert not {blocked!r} & set(sys.modules), "a blocked module was imported"
sys.exit(code)
"""


def d3ad_without(blocked: set[str], argv: list[str]) -> subprocess.CompletedProcess:
    """`python -c` puts the working directory, the repository, first on the import path."""
    command = [sys.executable, "-c", WITHOUT.format(blocked=blocked, argv=argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def pyproject_text() -> str:
    return PYPROJECT.read_text()


def test_console_script_names_the_dispatcher():
    table = re.search(r"^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)", pyproject_text(), re.MULTILINE | re.DOTALL)
    assert table, "pyproject.toml has no [project.scripts]"
    entry = re.search(r'^d3ad\s*=\s*"([\w.]+):(\w+)"', table.group(1), re.MULTILINE)
    assert entry, table.group(1)
    target = getattr(importlib.import_module(entry.group(1)), entry.group(2))
    assert target is cli.main


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    version = cli.pyproject_version(PYPROJECT)
    assert version != "unknown"
    assert capsys.readouterr().out.strip() == f"d3ad {cli.package_version()}"
    assert cli.package_version() == version


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cli.metadata, "version", not_installed)
    assert cli.package_version() == re.search(r'^version = "(.+)"', pyproject_text(), re.MULTILINE).group(1)
    assert cli.pyproject_version(Path("/nonexistent/pyproject.toml")) == "unknown"


def test_every_job_of_each_package_command_line_has_a_subcommand():
    for package in ("train_host", "export", "demo_line", "edge_runtime"):
        parser = importlib.import_module(f"{package}.__main__").build_parser()
        subcommands = next(a for a in parser._actions if a.dest == "command")
        names = {c.package_name for c in cli.COMMANDS if c.package == package}
        assert names == set(subcommands.choices), package


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(command.name in out for command in cli.COMMANDS)
    assert "d3ad-inspector[host]" in out


@pytest.mark.parametrize("name", [command.name for command in cli.COMMANDS])
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: d3ad {name} ")


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys):
    for argv in ([], ["calibrate-the-moon"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "configs/train/smoke.yaml", "--out", "runs/never"],
        ["bundle", "--run", "r", "--out", "o.tar", "--sign-key", "k", "--model-version", "1.0.0"],
        ["demo", "--out", "runs/never"],
    ],
)
def test_a_host_command_without_torch_names_the_extra(argv):
    result = d3ad_without({"torch"}, argv)
    assert result.returncode == 2, result.stderr
    assert f"`d3ad {argv[0]}` is a host command and needs torch" in result.stderr
    assert "pip install 'd3ad-inspector[host]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (REPO_ROOT / "runs" / "never").exists()


def test_a_host_command_on_a_device_without_the_host_packages_names_the_extra(tmp_path):
    result = d3ad_without({"torch", "train_host", "export", "demo_line"}, ["keygen", "--out", str(tmp_path / "k")])
    assert result.returncode == 2, result.stderr
    assert "needs the train_host package" in result.stderr or "needs the export package" in result.stderr
    assert "d3ad-inspector[host]" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_device_commands_run_without_torch_or_host_code(tmp_path):
    blocked = {"torch", "train_host", "export", "demo_line"}
    absent = str(tmp_path / "absent.yaml")
    for argv in (["validate-config", absent], ["run", "--config", absent]):
        result = d3ad_without(blocked, argv)
        assert result.returncode == 2, result.stderr
        assert "absent.yaml" in result.stderr and "Traceback" not in result.stderr
    assert d3ad_without(blocked, ["inspect", "--help"]).returncode == 0


def test_a_python_m_alias_keeps_its_own_name(capsys):
    from edge_runtime.__main__ import main

    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m edge_runtime inspect ")


def make_images(folder: Path) -> list[Path]:
    (folder / "crack").mkdir(parents=True)
    (folder / "good").mkdir()
    images = [folder / "good" / "001.png", folder / "crack" / "002.JPG", folder / "crack" / "001.png"]
    for image in images:
        image.write_bytes(b"not decoded here")
    (folder / "good" / "notes.txt").write_text("not an image")
    return sorted(images)


def test_a_folder_expands_to_its_image_files_sorted(tmp_path):
    images = make_images(tmp_path / "parts")
    single = tmp_path / "single.png"
    assert cli.expand_image_folders([single, tmp_path / "parts"]) == [single, *images]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files under"):
        cli.expand_image_folders([tmp_path / "empty"])


def test_inspect_takes_folders_and_files(tmp_path, monkeypatch):
    import edge_runtime.__main__ as device_cli

    images = make_images(tmp_path / "parts")
    seen = []
    monkeypatch.setattr(device_cli, "dispatch", lambda args: seen.append(args) or 0)
    assert cli.main(["inspect", "--slot", str(tmp_path / "slot"), str(images[0]), str(tmp_path / "parts")]) == 0
    (args,) = seen
    assert args.command == "inspect" and args.slot == tmp_path / "slot"
    assert args.images == [images[0], *images]


def test_inspect_of_an_empty_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["inspect", "--slot", str(tmp_path), str(tmp_path / "empty")]) == 2
    assert "no image files under" in capsys.readouterr().err
