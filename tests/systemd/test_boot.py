"""The unit under a real systemd: systemd/boot_check.sh boots systemd as PID 1 of its own namespaces, installs the
service with install-service.sh and runs it on the tiny bundle. It takes about a minute and a half (the watchdog
alone waits 30 s), so it runs only with D3AD_SYSTEMD_BOOT=1, as `make systemd-check` sets; it needs root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOT_CHECK = REPO_ROOT / "systemd" / "boot_check.sh"
SYSTEMD = Path("/lib/systemd/systemd")
CANNOT_RUN_HERE = 77  # boot_check.sh: this machine cannot boot systemd that way


def machine_problem() -> str | None:
    """Why the boot check cannot run here, or None."""
    if os.environ.get("D3AD_SYSTEMD_BOOT") != "1":
        return "boots a real systemd (over a minute, after training the tiny model): `make systemd-check`"
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, the service user)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed"
    for tool in ("unshare", "nsenter", "pivot_root", "setpriv", "mosquitto", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


pytestmark = pytest.mark.skipif(machine_problem() is not None, reason=str(machine_problem()))


def read_summary(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, _, value in pairs}


def run_to_the_end(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run the script; past the timeout it gets SIGTERM, not SIGKILL, so that it still powers its box off."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            stdout, stderr = process.communicate(timeout=120)
            pytest.fail(f"boot_check.sh took over {timeout_s} s:\n{stdout[-4000:]}{stderr[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def booted(bundle, keys, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    out = tmp_path_factory.mktemp("boot-check")
    command = ["bash", str(BOOT_CHECK), "--bundle", str(bundle[0]), "--key", str(keys[1])]
    command += ["--out", str(out), "--python", sys.executable]
    result = run_to_the_end(command, timeout_s=900)
    if result.returncode == CANNOT_RUN_HERE:
        pytest.skip(result.stderr.strip())
    return result, read_summary(out / "summary.txt")


def test_every_check_of_the_script_passes(booted):
    result, summary = booted
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "failed" not in summary


def test_systemd_is_pid_1_of_a_container_and_the_unit_reaches_ready(booted):
    _, summary = booted
    assert summary["pid1"] == "systemd"
    assert summary["virtualization"].startswith("container")
    assert summary["system_state"] == "running"
    assert summary["unit_enabled"] == "enabled", "install-service.sh enabled it"
    assert summary["ready_state"] == "active/running"
    assert "Started d3ad-inspector.service" in summary["ready_journal"]
    assert summary["status_text"].startswith("inspecting, "), "the service's own STATUS= line"
    assert summary["watchdog_usec"] == "30s"


def test_the_password_arrives_as_a_credential_only(booted):
    _, summary = booted
    assert summary["credentials_directory"] == "/run/credentials/d3ad-inspector.service"
    assert summary["credential_matches"] == "yes"
    assert summary["user_reads_password_file"] == "no", "the service user cannot read the file itself"
    assert summary["password_in_environment"] == "no"
    assert "connected to 127.0.0.1:1883" in summary["service_connected"]
    assert "u'line1-cam1'" in summary["broker_login"], "the broker accepted the password"
    assert int(summary["results_in_10s"]) > 0


def test_the_hardening_is_in_force(booted):
    _, summary = booted
    assert summary["process_user"] == "d3ad"
    assert summary["cap_eff"] == summary["cap_bnd"] == "0000000000000000"
    assert summary["no_new_privs"] == "1"
    assert summary["seccomp"] == "2", "SystemCallFilter= is loaded"
    assert summary["root_read_only"] == "1", "ProtectSystem=strict"
    assert summary["unit_warnings"] == "0", "systemd accepted every setting without a warning"
    # DevicePolicy=closed: in the service's cgroup a device without a DeviceAllow= rule is refused, and a camera's
    # node is let through wherever the kernel has the video4linux driver to resolve DeviceAllow=char-video4linux.
    assert summary["device_other"] == "Operation not permitted"
    assert summary["device_camera"] == "allowed" or summary["device_camera"].startswith("untestable: ")
    assert float(summary["security_exposure"].split()[0]) <= 2.5


def test_a_stalled_service_is_killed_by_the_watchdog_and_restarted(booted):
    _, summary = booted
    assert summary["running_after_40s"] == f"0 active/running {summary['main_pid']}", "the frame loop feeds it"
    assert summary["restarts_before"] == "0"
    assert summary["watchdog_journal"].endswith("Watchdog timeout (limit 30s)!")
    assert "with signal SIGABRT" in summary["watchdog_kill_journal"]
    assert summary["restarts_after"] == "1"
    assert summary["restart_state"] == "active/running"
    assert summary["new_main_pid"] != summary["main_pid"]
    assert summary["stop_result"] == "success/inactive", "a normal stop after the restart is clean"
