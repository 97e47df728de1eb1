"""The systemd unit, checked offline with systemd-analyze, and the install script, run into a temporary root."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "systemd" / "d3ad-inspector.service"
TEMPLATE = REPO_ROOT / "systemd" / "d3ad-inspector@.service"
D3AD = "/opt/d3ad-inspector/venv/bin/d3ad"
INSTALL_SCRIPT = REPO_ROOT / "systemd" / "install-service.sh"
SITE_CONFIG = REPO_ROOT / "configs" / "runtime" / "site.yaml"
VENV_PYTHON = "/opt/d3ad-inspector/venv/bin/python"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows a key more than once; an empty value resets it)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verifiable_copy(folder: Path, text: str) -> Path:
    """The unit with its interpreter swapped for one that exists here (verify checks that ExecStart's binary
    exists; /opt/d3ad-inspector is only there on an installed device). Everything else stays as written."""
    assert VENV_PYTHON in text
    path = folder / UNIT.name  # verify derives the unit's name (and type) from the file name
    path.write_text(text.replace(VENV_PYTHON, sys.executable))
    return path


def verify(unit: Path) -> subprocess.CompletedProcess:
    command = [SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(unit)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path):
    result = verify(verifiable_copy(tmp_path, UNIT.read_text()))
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], ours


@needs_systemd_analyze
def test_verify_reports_a_broken_directive(tmp_path):
    """The check above can fail: a misspelt key and a bad value are reported for our unit."""
    broken = (
        UNIT.read_text()
        .replace("ProtectSystem=strict", "ProtectSytem=strict")
        .replace("WatchdogSec=30s", "WatchdogSec=soon")
    )
    result = verify(verifiable_copy(tmp_path, broken))
    messages = result.stdout + result.stderr
    assert "Unknown key 'ProtectSytem'" in messages
    assert "Failed to parse sec value" in messages


@needs_systemd_analyze
def test_unit_exposure_is_low(tmp_path):
    command = [
        SYSTEMD_ANALYZE,
        "security",
        "--offline=yes",
        "--no-pager",
        str(verifiable_copy(tmp_path, UNIT.read_text())),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) <= 2.5, result.stdout


def test_unit_is_a_hardened_notify_service():
    service = unit_settings(UNIT.read_text())["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key}: {service.get(key)}"
        return service[key][0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec") == "30s"
    assert one("Restart") == "on-failure"
    assert one("ExecStart") == f"{VENV_PYTHON} -m edge_runtime run --config /etc/d3ad-inspector/inspector.yaml"
    assert (one("User"), one("Group"), one("SupplementaryGroups")) == ("d3ad", "d3ad", "video")
    assert one("StateDirectory") == one("CacheDirectory") == one("ConfigurationDirectory") == "d3ad-inspector"
    assert one("ConfigurationDirectoryMode") == "0750", "as install-service.sh makes it; systemd warns otherwise"
    assert one("LoadCredential") == "mqtt-password:/etc/d3ad-inspector/mqtt-password"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == one("PrivateTmp") == one("NoNewPrivileges") == "yes"
    assert one("DevicePolicy") == "closed"
    assert one("DeviceAllow") == "char-video4linux rw"
    assert one("CapabilityBoundingSet") == ""
    assert one("StandardError") == "journal"
    assert "MemoryDenyWriteExecute" not in service, "OpenVINO's CPU plugin needs writable+executable memory"
    assert "PrivateDevices" not in service, "it would hide the cameras"
    assert unit_settings(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


def test_site_config_matches_the_unit():
    """The installed config is a valid schema and writes only where the unit lets it."""
    from edge_runtime.service.service_config import parse_config

    service = unit_settings(UNIT.read_text())["Service"]
    config = parse_config(yaml.safe_load(SITE_CONFIG.read_text()), str(SITE_CONFIG))
    state_dir = Path("/var/lib") / service["StateDirectory"][0]
    cache_dir = Path("/var/cache") / service["CacheDirectory"][0]
    assert config.state_dir == state_dir
    assert Path(service["WorkingDirectory"][0]) == state_dir
    assert config.openvino.cache_dir is not None and config.openvino.cache_dir.is_relative_to(cache_dir)
    assert config.mqtt.password_credential == service["LoadCredential"][0].split(":")[0]
    assert config.camera.pipeline.startswith("v4l2src device=/dev/video")
    assert config.bundle.archive is not None and config.bundle.archive.is_relative_to("/etc/d3ad-inspector")
    assert all(key.is_relative_to("/etc/d3ad-inspector") for key in config.bundle.trusted_keys)


def test_site_config_talks_tls_to_the_broker_and_validates_like_any_config():
    import yaml

    from edge_runtime.service.service_config import file_problems, parse_config

    config = parse_config(yaml.safe_load(SITE_CONFIG.read_text()), str(SITE_CONFIG))
    assert config.mqtt.port == 8883 and config.mqtt.tls is not None, "TLS is the site default"
    assert config.mqtt.tls.ca_file == Path("/etc/d3ad-inspector/ca.pem")
    assert config.mqtt.password_file is None, "the password comes as a systemd credential, not a file"
    assert config.updates.signed_commands is False, "offered, and named in the file so a site sees it"
    # On a machine that is not an installed device, the files the site places in /etc are the only problems.
    problems = file_problems(config)
    assert all("/etc/d3ad-inspector/" in problem for problem in problems), problems
    if not Path("/etc/d3ad-inspector/ca.pem").is_file():
        assert "mqtt.tls.ca_file: file /etc/d3ad-inspector/ca.pem does not exist" in problems


def run_install(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL_SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=None if env is None else {**os.environ, **env},
    )


def test_install_script_places_unit_code_and_config_and_keeps_a_sites_config(tmp_path):
    root = tmp_path / "root"
    result = run_install("--root", str(root), "--no-venv")
    assert result.returncode == 0, result.stderr

    unit = root / "etc/systemd/system/d3ad-inspector.service"
    config = root / "etc/d3ad-inspector/inspector.yaml"
    code = root / "opt/d3ad-inspector/src"
    assert unit.read_text() == UNIT.read_text()
    assert config.read_text() == SITE_CONFIG.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o750
    configuration_mode = unit_settings(UNIT.read_text())["Service"]["ConfigurationDirectoryMode"]
    assert configuration_mode == [f"{stat.S_IMODE(config.parent.stat().st_mode):04o}"], "what systemd expects"
    assert (code / "pyproject.toml").is_file() and (code / "edge_runtime/service/systemd_notify.py").is_file()
    host_packages = ("train_host", "export", "demo_line")
    assert not any((code / name).exists() for name in host_packages), "host code stays off the device"
    assert not list(code.rglob("__pycache__"))
    assert not (root / "opt/d3ad-inspector/venv").exists()
    for expected in ("model.tar", "signer.pub.pem", "mqtt-password", "0600", "journalctl -u d3ad-inspector"):
        assert expected in result.stdout, expected

    config.write_text("# edited on site\n")
    again = run_install("--root", str(root), "--no-venv")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "# edited on site\n", "a site's config is never overwritten"
    assert "kept the existing" in again.stdout


def test_install_script_refuses_an_interpreter_the_service_cannot_see(tmp_path):
    """A venv made from a Python below /root or /home (pyenv, say) links to it, and ProtectHome=yes hides it:
    under a real systemd every start then failed with status=203/EXEC (systemd/README.md, "Under a real systemd")."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho /root/.pyenv/versions/3.11.7/bin/python3.11\n")
    fake.chmod(0o755)
    root = tmp_path / "root"
    result = run_install("--root", str(root), env={"PYTHON": str(fake)})
    assert result.returncode != 0
    assert "ProtectHome=yes" in result.stderr and "/root/.pyenv/versions/3.11.7/bin/python3.11" in result.stderr
    assert not (root / "opt/d3ad-inspector/venv").exists()


def test_install_script_refuses_to_run_without_root():
    command = ["bash", str(INSTALL_SCRIPT)]
    if os.geteuid() == 0:  # drop to nobody; as root without --root the script would install for real
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv is needed to run the script unprivileged")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode != 0
    assert "must run as root" in result.stderr
    assert result.stdout == "", "nothing was done"


def test_make_target_calls_the_install_script(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "-n", "install-service", f"INSTALL_ARGS=--root {tmp_path} --no-venv"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert f"systemd/install-service.sh --root {tmp_path} --no-venv" in result.stdout


# --- the template unit: one instance per camera ----------------------------------------------------------------

# What differs per instance, each naming the instance; every other line is as in the plain unit.
PER_INSTANCE = {"ExecStart", "WorkingDirectory", "StateDirectory", "CacheDirectory", "Environment", "SyslogIdentifier"}


def verifiable_instance(folder: Path, text: str, instance: str = "cam1") -> Path:
    """The template as an instance's unit file (verify checks templates only through an instance name), with the
    d3ad command swapped for an executable that exists here."""
    assert D3AD in text
    path = folder / TEMPLATE.name.replace("@.", f"@{instance}.")
    path.write_text(text.replace(D3AD, sys.executable))
    return path


@needs_systemd_analyze
def test_template_passes_systemd_analyze_verify_without_warnings(tmp_path):
    unit = verifiable_instance(tmp_path, TEMPLATE.read_text())
    result = verify(unit)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], ours
    broken = verify(verifiable_instance(tmp_path, TEMPLATE.read_text().replace("ProtectSystem=", "ProtectSytem=")))
    assert "Unknown key 'ProtectSytem'" in broken.stdout + broken.stderr, "verify reads the instance's file"


@needs_systemd_analyze
def test_template_exposure_is_as_low_as_the_plain_units(tmp_path):
    unit = verifiable_instance(tmp_path, TEMPLATE.read_text())
    command = [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) <= 2.5, result.stdout


def test_template_runs_d3ad_with_the_instances_config_and_state():
    service = unit_settings(TEMPLATE.read_text())["Service"]
    assert service["ExecStart"] == [f"{D3AD} run --config /etc/d3ad-inspector/%i.yaml"]
    assert service["StateDirectory"] == ["d3ad-inspector-%i"]
    assert service["CacheDirectory"] == ["d3ad-inspector-%i"]
    assert service["WorkingDirectory"] == ["/var/lib/d3ad-inspector-%i"]
    assert service["Environment"] == [
        "HOME=/var/lib/d3ad-inspector-%i",
        "XDG_CACHE_HOME=/var/cache/d3ad-inspector-%i",
        "PYTHONUNBUFFERED=1",
    ]
    assert service["ConfigurationDirectory"] == ["d3ad-inspector"], "config, bundles and keys: one folder, read-only"


def test_template_keeps_every_setting_and_hardening_directive_of_the_plain_unit():
    plain, template = unit_settings(UNIT.read_text()), unit_settings(TEMPLATE.read_text())
    assert set(template) == set(plain)
    assert template["Install"] == plain["Install"]
    assert {k: v for k, v in template["Unit"].items() if k != "Description"} == {
        k: v for k, v in plain["Unit"].items() if k != "Description"
    }
    assert "%i" in template["Unit"]["Description"][0]
    assert set(template["Service"]) == set(plain["Service"]), "no directive added or left out"
    for key, values in plain["Service"].items():
        if key in PER_INSTANCE:
            assert any("%i" in value for value in template["Service"][key]), key
        else:
            assert template["Service"][key] == values, key


def test_install_script_places_the_template_beside_the_unit(tmp_path):
    root = tmp_path / "root"
    result = run_install("--root", str(root), "--no-venv")
    assert result.returncode == 0, result.stderr
    assert (root / "etc/systemd/system" / TEMPLATE.name).read_text() == TEMPLATE.read_text()
    assert f"{D3AD} validate-config" in result.stdout
