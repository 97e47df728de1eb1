"""A new model that takes the whole process down (here a kill -9 while it inspects) is rolled back at the start
after updates.fallback.max_crashes such ends; stops the service was asked for do not count."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
DETAIL = "model 2.0.0 ended the service 2 times within 600 s while on probation; rolled back to 1.0.0"


def boot_of(result: dict) -> str:
    return result["part_id"].rsplit("-", 2)[1]


def results_of_new_boots(listener, known_boots: set[str]) -> list[dict]:  # noqa: ANN001
    return [r for r in listener.payloads("/result") if boot_of(r) not in known_boots]


def run_until_inspecting(
    config: Path,
    log: Path,
    listener,  # noqa: ANN001
    known_boots: set[str],
    version: str,
    end: signal.Signals,
    meanwhile: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Start the service's command line, let `meanwhile` act on it, wait until it inspects with `version`, end it
    with `end`; its results (and its boot id joins `known_boots`)."""
    with log.open("a") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "run", "--config", str(config)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=output,
            stderr=output,
        )
    try:
        meanwhile()
        listener.wait_for(
            lambda: [r for r in results_of_new_boots(listener, known_boots) if r["model_version"] == version],
            60,
            f"a result of model {version}",
        )
        process.send_signal(end)
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == (0 if end == signal.SIGTERM else -end), log.read_text()[-3000:]
    results = results_of_new_boots(listener, known_boots)
    known_boots.update(boot_of(r) for r in results)
    return results


def test_a_new_model_that_keeps_ending_the_service_is_rolled_back_at_the_next_start(
    broker, listen, make_config, bundle, keys, slot, repack, bundle_server, tmp_path
):
    raw = make_config(broker.port, updates={"fallback": {"max_crashes": 2}})
    raw["bundle"] = {"archive": str(bundle[0]), "trusted_keys": [str(keys[1])]}
    config = tmp_path / "inspector.yaml"
    config.write_text(yaml.safe_dump(raw))
    models = Path(raw["state_dir"]) / "models"
    log = tmp_path / "service.log"
    listener = listen(broker.port, "test")
    boots: set[str] = set()

    update = repack(slot, bundle_server.folder / "v2.tar", keys[0], "2.0.0")
    install = {"url": bundle_server.url("v2.tar"), "version": "2.0.0", "sha256": sha256(update), "request_id": "up"}

    def install_when_running() -> None:
        listener.wait_for(lambda: results_of_new_boots(listener, boots), 60, "results of model 1.0.0")
        listener.publish("test/cam1/cmd/install", json.dumps(install))
        listener.wait_for(lambda: replies(listener, "up"), 60, "the install")
        assert replies(listener, "up")[0]["outcome"] == "installed"

    # 2.0.0 is installed and on probation; the process is killed while it inspects with it: one crash.
    run_until_inspecting(config, log, listener, boots, "2.0.0", signal.SIGKILL, install_when_running)
    # Restarted, it runs 2.0.0 again; a SIGTERM (a stop it was asked for) is no crash ...
    results = run_until_inspecting(config, log, listener, boots, "2.0.0", signal.SIGTERM)
    assert {r["model_version"] for r in results} == {"2.0.0"}
    # ... so the next start still runs it (it would not with 2 crashes counted), and a second kill is the second.
    results = run_until_inspecting(config, log, listener, boots, "2.0.0", signal.SIGKILL)
    assert {r["model_version"] for r in results} == {"2.0.0"}, "a stop it was asked for counted as a crash"

    listener.messages.clear()
    results = run_until_inspecting(config, log, listener, boots, "1.0.0", signal.SIGTERM)
    assert {r["model_version"] for r in results} == {"1.0.0"}, "2.0.0 did not run again"
    model = listener.payloads("/model")[-1]
    assert (model["active"], model["previous"]) == ("1.0.0", "2.0.0")
    expected = {"action": "rollback", "outcome": "rolled_back", "version": "1.0.0", "reason": "crashes"}
    assert model["last_update"] == {**model["last_update"], **expected, "detail": DETAIL}, "as the fallback reports"
    assert any(DETAIL in (s["last_error"] or "") for s in listener.payloads("/status")), "on the status topic too"
    state = json.loads((models / "state.json").read_text())
    assert (state["active"]["version"], state["last_update"]["reason"]) == ("1.0.0", "crashes")
    assert not (models / "crash_record.json").exists(), "the model rolled back to is not on probation"
    assert DETAIL in log.read_text()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def replies(listener, request_id: str) -> list[dict]:  # noqa: ANN001
    """The reply that ends a job, not the one that accepted it."""
    return [r for r in listener.payloads("/reply") if r.get("request_id") == request_id and not r.get("accepted")]
