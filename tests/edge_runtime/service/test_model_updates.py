"""Remote model updates end to end: a real broker, a local HTTP server, real bundles and a live camera stream."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.manifest import SIGNATURE_NAME
from edge_runtime.service.model_store import ModelStore

FPS = 4  # slow enough that the 2-core machine inspects every frame, so any lost frame shows as a gap
CAMERA = f"videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate={FPS}/1"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_archive(source: Path, out: Path, change) -> Path:  # noqa: ANN001
    """Copy a bundle tar member by member; `change(name, data)` returns new bytes, or None to leave it out."""
    with tarfile.open(source) as old, tarfile.open(out, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else b""
            data = change(member.name, data)
            if data is None:
                continue
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return out


@pytest.fixture(scope="session")
def update_bundles(slot, keys, repack, tmp_path_factory) -> dict[str, Path]:
    """Version 2.0.0 of the tiny model, and broken variants of it."""
    from export.signing import generate_keypair

    folder = tmp_path_factory.mktemp("updates")
    private = keys[0]
    good = repack(slot, folder / "v2.tar", private, "2.0.0")

    def off_references(fields: dict) -> None:
        for reference in fields["references"]:
            reference["expected_score"] += 10.0

    stranger = folder / "stranger"
    generate_keypair(stranger.with_suffix(".pem"), stranger.with_suffix(".pub.pem"))

    def flip_a_weight(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 0xFF]) if name.endswith(".bin") else data

    return {
        "good": good,
        "failing_health": repack(slot, folder / "health.tar", private, "2.0.0", off_references),
        "untrusted": repack(slot, folder / "stranger.tar", stranger.with_suffix(".pem"), "2.0.0"),
        "unsigned": rewrite_archive(good, folder / "unsigned.tar", lambda n, d: None if n == SIGNATURE_NAME else d),
        "tampered": rewrite_archive(good, folder / "tampered.tar", flip_a_weight),
    }


@pytest.fixture(scope="session")
def fails_on_real_frames(slot, keys, repack, tmp_path_factory) -> Path:
    """Version 2.0.0 whose noise schedule is shorter than the noise levels its inspection settings pick for frames
    far from the good parts: its networks compile and its good reference images score as it states (measured
    here, as the host would), but every frame of the camera's test pattern makes the pipeline raise."""
    from edge_runtime.inspector import Inspector
    from edge_runtime.openvino_networks import RuntimeOptions
    from edge_runtime.preprocess import read_image_file

    options = RuntimeOptions(threads=1)
    original = Inspector.from_slot(slot, options)
    manifest = original.manifest
    timestep = {r.file: original.inspect(read_image_file(slot / r.file)).timestep for r in manifest.references}
    highest = manifest.inspection.t_max  # where the most unusual frames (severity bin 10) land
    kept = [r for r in manifest.references if timestep[r.file] < highest]
    assert kept, f"every reference image is judged at the highest noise level: {timestep}"
    schedule = manifest.schedule.model_copy(update={"num_timesteps": max(timestep[r.file] for r in kept) + 1})
    short = Inspector(manifest.model_copy(update={"schedule": schedule, "references": kept}), slot, options)
    scores = {r.file: short.inspect(read_image_file(slot / r.file)).score for r in kept}

    def shorten(fields: dict) -> None:
        fields["schedule"]["num_timesteps"] = schedule.num_timesteps
        fields["references"] = [r.model_dump() | {"expected_score": scores[r.file]} for r in kept]

    return repack(slot, tmp_path_factory.mktemp("failing") / "v2.tar", keys[0], "2.0.0", shorten)


TARGET = {"product": "tile-inspector", "device_class": "line-pc"}


@pytest.fixture(scope="session")
def versioned_bundles(slot, keys, repack, tmp_path_factory) -> dict[str, Path]:
    """The tiny model signed with the site key as other versions, unbound or bound to a product."""
    folder = tmp_path_factory.mktemp("versions")

    def bound_to(target: dict):  # noqa: ANN202
        return lambda fields: fields.update(target=target)

    return {
        "1.5.0": repack(slot, folder / "v1.5.tar", keys[0], "1.5.0"),
        "1.0.0-bound": repack(slot, folder / "v1-bound.tar", keys[0], "1.0.0", bound_to(TARGET)),
        "2.0.0-bound": repack(slot, folder / "v2-bound.tar", keys[0], "2.0.0", bound_to(TARGET)),
        "3.0.0-other": repack(
            slot, folder / "v3-other.tar", keys[0], "3.0.0", bound_to({**TARGET, "product": "weld-inspector"})
        ),
        "3.0.0-unbound": repack(slot, folder / "v3-unbound.tar", keys[0], "3.0.0"),
    }


def install(listener, bundle_server, bundle: Path, version: str, request_id: str) -> dict:  # noqa: ANN001
    """Serve `bundle`, ask the device to install it and wait for the outcome."""
    shutil.copy(bundle, bundle_server.folder / f"{request_id}.tar")
    body = {"url": bundle_server.url(f"{request_id}.tar"), "version": version, "sha256": sha256(bundle)}
    send(listener, "install", body | {"request_id": request_id})
    return final_reply(listener, request_id)


@pytest.fixture
def start_service(service_threads):
    """A Service that loads its model itself (from the config and its model store), in a thread."""
    from edge_runtime.service.service_config import parse_config

    def start(raw: dict):  # noqa: ANN202
        return service_threads.start(parse_config(raw, "update test config"))

    start.stop = service_threads.stop
    return start


@pytest.fixture
def archive_config(make_config, bundle, keys):
    """Runtime config for the signed 1.0.0 archive, verified with the test key, on a steady test camera."""

    def build(port: int) -> dict:
        raw = make_config(port, camera={"pipeline": CAMERA}, mode={"kind": "continuous", "max_fps": 0})
        raw["bundle"] = {"archive": str(bundle[0]), "trusted_keys": [str(keys[1])]}
        return raw

    return build


def results_of(listener, version: str | None = None) -> list[dict]:
    results = listener.payloads("/result")
    return [r for r in results if version is None or r["model_version"] == version]


def model_state(listener) -> dict:
    return listener.payloads("/model")[-1]


def wait_until_subscribed(listener) -> None:
    """The device publishes `model` right after subscribing to its commands; the broker keeps that order."""
    listener.wait_for(lambda: listener.payloads("/model"), 30, "the model state")


def send(listener, command: str, body: dict) -> None:
    listener.publish(f"test/cam1/cmd/{command}", json.dumps(body))


def final_reply(listener, request_id: str, timeout: float = 60) -> dict:
    """The reply that ends a job (not the one that accepted it)."""

    def ended() -> list[dict]:
        replies = listener.payloads("/reply")
        return [r for r in replies if r.get("request_id") == request_id and not r.get("accepted")]

    listener.wait_for(lambda: ended(), timeout, f"the outcome of {request_id}")
    return ended()[0]


def scraped_model_versions(service) -> tuple[str, str]:  # noqa: ANN001 - a Service
    """The model version /metrics names: in d3ad_inspector_info and in d3ad_model_info."""
    with urllib.request.urlopen(service.metrics_endpoint.url, timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    (inspector,) = families["d3ad_inspector_info"].samples
    (model,) = families["d3ad_model_info"].samples
    return inspector.labels["model_version"], model.labels["version"]


def frame_gap_at_switch(results: list[dict], old: str, new: str) -> float:
    """Seconds of stream between the last part judged by `old` and the first judged by `new`."""
    ordered = sorted(results, key=lambda r: int(r["part_id"].rsplit("-", 1)[1]))
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before["model_version"] == old and after["model_version"] == new:
            return after["frame"]["pts_s"] - before["frame"]["pts_s"]
    raise AssertionError(f"no switch from {old} to {new} in the results")


def test_install_switches_between_frames_survives_a_restart_and_rolls_back(
    broker, listen, archive_config, start_service, bundle_server, update_bundles, tmp_path
):
    raw = archive_config(broker.port)
    listener = listen(broker.port, "test")
    service = start_service(raw)
    listener.wait_for(lambda: len(results_of(listener, "1.0.0")) >= 3, 30, "results of model 1.0.0")
    assert model_state(listener)["active"] == "1.0.0" and model_state(listener)["previous"] is None
    assert scraped_model_versions(service) == ("1.0.0", "1.0.0")

    shutil.copy(update_bundles["good"], bundle_server.folder / "v2.tar")
    request = {"url": bundle_server.url("v2.tar"), "version": "2.0.0", "sha256": sha256(update_bundles["good"])}
    send(listener, "install", request | {"request_id": "up-1"})
    outcome = final_reply(listener, "up-1")
    assert outcome == {**outcome, "ok": True, "outcome": "installed", "version": "2.0.0"}
    listener.wait_for(lambda: len(results_of(listener, "2.0.0")) >= 3, 30, "results of model 2.0.0")
    assert scraped_model_versions(service) == ("2.0.0", "2.0.0"), "the info metric follows the model"

    gap = frame_gap_at_switch(results_of(listener), "1.0.0", "2.0.0")
    assert gap == pytest.approx(1 / FPS, abs=0.01), "the frame after the last old result went to the new model"
    state = model_state(listener)
    assert (state["active"], state["previous"], state["installed"]) == ("2.0.0", "1.0.0", ["2.0.0", "1.0.0"])
    assert state["last_update"]["outcome"] == "installed" and state["update_in_progress"] is None
    stages = [m["update_in_progress"]["stage"] for m in listener.payloads("/model") if m["update_in_progress"]]
    assert stages[0] == "downloading" and "health_check" in stages and stages[-1] == "switching"

    start_service.stop(service)  # a restart comes back to the installed model, not the configured one
    listener.messages.clear()
    service = start_service(raw)
    listener.wait_for(lambda: len(results_of(listener)) >= 2, 30, "results after the restart")
    assert {r["model_version"] for r in results_of(listener)} == {"2.0.0"}
    assert service.updater.state.previous.version == "1.0.0"

    send(listener, "rollback", {"request_id": "back-1"})
    outcome = final_reply(listener, "back-1")
    assert outcome["ok"] and outcome["outcome"] == "rolled_back" and outcome["version"] == "1.0.0"
    listener.wait_for(lambda: len(results_of(listener, "1.0.0")) >= 2, 30, "results after the rollback")
    assert scraped_model_versions(service) == ("1.0.0", "1.0.0")
    assert frame_gap_at_switch(results_of(listener), "2.0.0", "1.0.0") == pytest.approx(1 / FPS, abs=0.01)
    state = model_state(listener)
    assert (state["active"], state["previous"]) == ("1.0.0", "2.0.0")
    on_disk = json.loads((Path(raw["state_dir"]) / "models" / "state.json").read_text())
    assert (on_disk["active"]["version"], on_disk["previous"]["version"]) == ("1.0.0", "2.0.0")


REFUSALS = [
    ("tampered", "tampered", "2.0.0", None, "hash_mismatch"),
    ("unsigned", "unsigned", "2.0.0", None, "unsigned"),
    ("untrusted", "untrusted", "2.0.0", None, "bad_signature"),
    ("wrong-sha", "good", "2.0.0", "ab" * 32, "sha256_mismatch"),
    ("wrong-version", "good", "3.0.0", None, "version_mismatch"),
    ("health", "failing_health", "2.0.0", None, "health_check_failed"),
    ("missing", None, "2.0.0", "cd" * 32, "download_failed"),
]


def test_refused_bundles_are_reported_with_their_reason_and_the_old_model_keeps_answering(
    broker, listen, archive_config, start_service, bundle_server, update_bundles
):
    raw = archive_config(broker.port)
    listener = listen(broker.port, "test")
    service = start_service(raw)
    listener.wait_for(lambda: len(results_of(listener)) >= 2, 30, "first results")

    for request_id, variant, version, sha, reason in REFUSALS:
        url = bundle_server.url(f"{request_id}.tar")
        if variant is not None:
            shutil.copy(update_bundles[variant], bundle_server.folder / f"{request_id}.tar")
            sha = sha or sha256(update_bundles[variant])
        send(listener, "install", {"url": url, "version": version, "sha256": sha, "request_id": request_id})
        outcome = final_reply(listener, request_id)
        assert (outcome["ok"], outcome["reason"]) == (False, reason), outcome
        state = model_state(listener)  # published before the reply
        assert state["last_update"]["reason"] == reason and state["last_update"]["request_id"] == request_id
        assert state["active"] == "1.0.0" and state["installed"] == ["1.0.0"]
        answered = len(results_of(listener))
        listener.wait_for(lambda n=answered: len(results_of(listener)) > n + 1, 20, "results after a refusal")

    assert {r["model_version"] for r in results_of(listener)} == {"1.0.0"}
    assert service.inspector.model_version == "1.0.0"
    slots = [p.name for p in ModelStore(service.store.root).root.iterdir() if p.is_dir() and p.name != "downloads"]
    assert len(slots) == 1, f"refused bundles leave nothing behind: {slots}"
    assert not any(service.store.downloads.iterdir())


def test_malformed_update_commands_are_answered_at_once(broker, listen, archive_config, start_service):
    listener = listen(broker.port, "test")
    start_service(archive_config(broker.port))
    wait_until_subscribed(listener)
    send(listener, "install", {"url": "http://x/b.tar", "version": "2.0.0"})
    send(listener, "install", {"url": "http://x/b.tar", "version": "2.0.0", "sha256": "XYZ", "extra": 1})
    send(listener, "rollback", {})
    listener.wait_for(lambda: len(listener.payloads("/reply")) >= 3, 15, "three replies")
    missing, malformed, rollback = listener.payloads("/reply")[:3]
    assert not missing["ok"] and "sha256: Field required" in missing["error"]
    assert "sha256: String should match pattern" in malformed["error"] and "extra: Extra inputs" in malformed["error"]
    assert not rollback["ok"] and "no previous model" in rollback["error"]


def test_updates_can_be_turned_off(broker, listen, archive_config, start_service):
    listener = listen(broker.port, "test")
    raw = archive_config(broker.port) | {"updates": {"enabled": False}}
    start_service(raw)
    wait_until_subscribed(listener)
    send(listener, "install", {"url": "http://x/b.tar", "version": "2.0.0", "sha256": "ab" * 32})
    listener.wait_for(lambda: listener.payloads("/reply"), 15, "a reply")
    assert "turned off" in listener.payloads("/reply")[0]["error"]


def test_a_new_model_that_fails_on_real_frames_is_rolled_back_to_the_previous_one(
    broker, listen, archive_config, start_service, bundle_server, fails_on_real_frames
):
    from edge_runtime.service.model_guard import on_probation

    listener = listen(broker.port, "test")
    service = start_service(archive_config(broker.port))  # updates.fallback left at its defaults
    listener.wait_for(lambda: len(results_of(listener, "1.0.0")) >= 2, 30, "results of model 1.0.0")

    shutil.copy(fails_on_real_frames, bundle_server.folder / "v2.tar")
    request = {"url": bundle_server.url("v2.tar"), "version": "2.0.0", "sha256": sha256(fails_on_real_frames)}
    send(listener, "install", request | {"request_id": "new-1"})
    assert final_reply(listener, "new-1")["outcome"] == "installed", "it passes its reference checks"

    def fallbacks() -> list[dict]:
        states = listener.payloads("/model")
        return [m for m in states if (m["last_update"] or {}).get("reason") == "inspection_failures"]

    listener.wait_for(fallbacks, 60, "the automatic rollback")
    state = fallbacks()[-1]
    assert (state["active"], state["previous"], state["update_in_progress"]) == ("1.0.0", "2.0.0", None)
    record = state["last_update"]
    assert (record["action"], record["outcome"], record["version"]) == ("rollback", "rolled_back", "1.0.0")
    assert "model 2.0.0 failed 5 inspections within 60 s" in record["detail"] and "timestep" in record["detail"]
    errors = [s["last_error"] or "" for s in listener.payloads("/status")]
    assert any("rolling back to 1.0.0" in error for error in errors), errors

    answered = len(results_of(listener, "1.0.0"))
    listener.wait_for(lambda: len(results_of(listener, "1.0.0")) > answered + 2, 30, "results of 1.0.0 again")
    assert not [r for r in listener.payloads("/reply") if r.get("command") == "rollback"], "no command to answer"
    assert service.inspector.model_version == "1.0.0"
    assert not on_probation(service.updater.state, 86400), "the model rolled back to is not watched: no swinging"
    on_disk = json.loads((service.store.state_path).read_text())
    assert on_disk["last_update"]["reason"] == "inspection_failures"


def test_an_older_signed_bundle_is_refused_while_rollback_to_the_kept_previous_still_works(
    broker, listen, archive_config, start_service, bundle_server, update_bundles, versioned_bundles
):
    raw = archive_config(broker.port)
    listener = listen(broker.port, "test")
    service = start_service(raw)
    wait_until_subscribed(listener)
    assert model_state(listener)["minimum_version"] == "1.0.0", "the configured bundle sets the first minimum"

    assert install(listener, bundle_server, update_bundles["good"], "2.0.0", "up")["outcome"] == "installed"
    assert model_state(listener)["minimum_version"] == "2.0.0"
    fetched = len(bundle_server.requests)
    refused = install(listener, bundle_server, versioned_bundles["1.5.0"], "1.5.0", "down")
    assert (refused["ok"], refused["reason"]) == (False, "downgrade"), refused
    assert "older than this device's minimum 2.0.0" in refused["error"]
    assert len(bundle_server.requests) == fetched, "nothing is downloaded for a version the device refuses"

    send(listener, "rollback", {"request_id": "back"})
    back = final_reply(listener, "back")
    assert (back["ok"], back["outcome"], back["version"]) == (True, "rolled_back", "1.0.0")
    state = model_state(listener)
    assert (state["active"], state["previous"], state["minimum_version"]) == ("1.0.0", "2.0.0", "2.0.0")
    again = install(listener, bundle_server, versioned_bundles["1.5.0"], "1.5.0", "down-again")
    assert again["reason"] == "downgrade", "a rollback does not lower the minimum"

    minimum = json.loads((Path(raw["state_dir"]) / "models" / "minimum_version.json").read_text())
    assert minimum["minimum_version"] == "2.0.0" and "2.0.0" in minimum["set_by"]
    start_service.stop(service)  # it survives a restart, and a state.json set aside
    (Path(raw["state_dir"]) / "models" / "state.json").write_text("damaged")
    listener.messages.clear()
    start_service(raw)
    wait_until_subscribed(listener)
    assert install(listener, bundle_server, versioned_bundles["1.5.0"], "1.5.0", "down-3")["reason"] == "downgrade"


def test_a_device_bound_to_a_product_refuses_bundles_made_for_another_or_for_none(
    broker, listen, make_config, keys, start_service, bundle_server, versioned_bundles
):
    raw = make_config(broker.port, camera={"pipeline": CAMERA}, mode={"kind": "continuous", "max_fps": 0})
    raw["bundle"] = {"archive": str(versioned_bundles["1.0.0-bound"]), "trusted_keys": [str(keys[1])], **TARGET}
    listener = listen(broker.port, "test")
    start_service(raw)
    wait_until_subscribed(listener)

    other = install(listener, bundle_server, versioned_bundles["3.0.0-other"], "3.0.0", "other")
    assert (other["ok"], other["reason"]) == (False, "wrong_target")
    assert "is for product 'weld-inspector'" in other["error"] and "'tile-inspector'" in other["error"]
    unbound = install(listener, bundle_server, versioned_bundles["3.0.0-unbound"], "3.0.0", "unbound")
    assert unbound["reason"] == "wrong_target" and "names no product" in unbound["error"]
    assert model_state(listener)["installed"] == ["1.0.0"], "nothing of a refused bundle stays"

    bound = install(listener, bundle_server, versioned_bundles["2.0.0-bound"], "2.0.0", "bound")
    assert (bound["ok"], bound["outcome"]) == (True, "installed")


def test_a_client_may_send_its_next_command_as_soon_as_it_reads_the_outcome(keys, tmp_path):
    """The outcome is answered only once the updater is free: a deploy tool that sends the next install the
    moment it reads the last one's outcome must not be told that the device is still busy."""
    from edge_runtime.bundle import load_trusted_keys
    from edge_runtime.openvino_networks import RuntimeOptions
    from edge_runtime.service.download import DownloadLimits
    from edge_runtime.service.model_store import ModelState
    from edge_runtime.service.model_updates import ModelUpdater

    replies: list[dict] = []
    request = {"url": "http://models.example/b.tar", "version": "2.0.0", "sha256": "ab" * 32}

    def on_reply(reply: dict) -> None:  # like a client that answers the outcome with its next command
        replies.append(reply)
        if len(replies) == 1:
            replies.append(updater.command_install(request | {"request_id": "second"}))

    store = ModelStore(tmp_path / "models")
    limits = DownloadLimits(1 << 20, 5.0, 1)  # no allowed hosts: the download is refused at once
    updater = ModelUpdater(
        store, ModelState(), load_trusted_keys([keys[1]]), RuntimeOptions(), limits, print, lambda: None, on_reply
    )
    updater.command_install(request | {"request_id": "first"})
    updater.wait(10)
    assert replies[0]["request_id"] == "first" and replies[0]["reason"] == "not_allowed", replies
    assert replies[1]["accepted"] is True, "the next command is taken, not refused as busy"
