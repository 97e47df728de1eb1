"""The observers `run` attaches, and the line between them and the service: neither side imports the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_runtime.service.observers import standard_observers
from edge_runtime.service.operator_view import OperatorView
from edge_runtime.service.service_config import parse_config
from edge_runtime.service.systemd_notify import SystemdLink, SystemdNotifier

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_the_view_when_enabled_and_the_systemd_link_under_systemd_first(tmp_path):
    plain = parse_config({"bundle": {"slot": str(tmp_path)}}, "minimal")
    assert standard_observers(plain, SystemdNotifier.from_environment({})) == []
    with_view = parse_config({"bundle": {"slot": str(tmp_path)}, "operator_view": {"enabled": True}}, "view")
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        observers = standard_observers(with_view, notifier)
        assert [type(observer) for observer in observers] == [SystemdLink, OperatorView]
        assert observers[0].notifier is notifier
    finally:
        notifier.close()


def imported_after(module: str) -> set[str]:
    """The edge_runtime.service modules a fresh interpreter has loaded after importing `module`."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('edge_runtime.service.')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_the_service_and_its_observers_do_not_import_each_other():
    observers = {"edge_runtime.service.operator_view", "edge_runtime.service.systemd_notify"}
    assert not observers & imported_after("edge_runtime.service.service")
    for observer in observers:
        assert "edge_runtime.service.service" not in imported_after(observer), observer
