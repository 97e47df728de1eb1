"""The model store on disk and the choice of model at start: what survives restarts, config changes and damage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_runtime.bundle import load_trusted_keys
from edge_runtime.openvino_networks import RuntimeOptions
from edge_runtime.service.model_startup import load_startup_model
from edge_runtime.service.model_store import (
    InstalledModel,
    ModelState,
    ModelStore,
    StateFileError,
    UpdateRecord,
    new_model,
)
from edge_runtime.service.service_config import BundleConfig

OPTIONS = RuntimeOptions(threads=1)


def model(version: str, slot: str) -> InstalledModel:
    return InstalledModel(version=version, slot=slot, source="test", installed_at="2026-01-01T00:00:00Z")


def test_state_round_trips_and_switching_keeps_one_previous(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.read() == ModelState()
    state = ModelState().switched_to(model("1", "a")).switched_to(model("2", "b"))
    record = UpdateRecord(action="install", outcome="installed", version="2", time="2026-01-01T00:00:00Z")
    store.write(state.recorded(record))
    again = store.read()
    assert (again.active.version, again.previous.version, again.last_update.outcome) == ("2", "1", "installed")
    assert [p.name for p in store.root.iterdir()] == ["state.json"], "no temporary file is left behind"


def test_prune_keeps_active_and_previous_only(tmp_path):
    store = ModelStore(tmp_path / "models")
    for name in ("a", "b", "c", ".unpacking-x", "downloads"):
        (store.root / name).mkdir(parents=True)
    store.prune(ModelState(active=model("2", "b"), previous=model("1", "a")))
    assert sorted(p.name for p in store.root.iterdir()) == ["a", "b", "downloads"]


def test_a_damaged_state_file_is_named(tmp_path):
    store = ModelStore(tmp_path / "models")
    store.root.mkdir()
    store.state_path.write_text('{"schema_version": 1, "active": 7}')
    with pytest.raises(StateFileError, match="state.json cannot be used"):
        store.read()


def test_startup_adopts_the_configured_archive_once_and_then_keeps_the_store_choice(
    bundle, keys, slot, repack, tmp_path
):
    keys_loaded = load_trusted_keys([keys[1]])
    store = ModelStore(tmp_path / "models")
    v1 = BundleConfig(archive=bundle[0], trusted_keys=[keys[1]])
    first = load_startup_model(v1, store, keys_loaded, OPTIONS)
    assert first.inspector.model_version == "1.0.0" and first.state.active.source == "config"
    again = load_startup_model(v1, store, keys_loaded, OPTIONS)
    assert again.inspector.slot == first.inspector.slot, "a restart reuses the installed slot"

    # The site points the config at a new archive: it becomes active, the old one stays as previous.
    v2 = BundleConfig(archive=repack(slot, tmp_path / "v2.tar", keys[0], "2.0.0"), trusted_keys=[keys[1]])
    changed = load_startup_model(v2, store, keys_loaded, OPTIONS)
    assert (changed.state.active.version, changed.state.previous.version) == ("2.0.0", "1.0.0")

    # The active slot is damaged on disk, and the configured archive is its own: it is extracted again.
    next((changed.inspector.slot / "models").glob("*.bin")).write_bytes(b"damaged")
    repaired = load_startup_model(v2, store, keys_loaded, OPTIONS)
    assert repaired.inspector.model_version == "2.0.0" and repaired.state.last_update.reason == "slot_damaged"
    assert (store.read().active.version, store.read().previous.version) == ("2.0.0", "1.0.0")


def test_a_damaged_slot_without_its_archive_falls_back_to_the_previous_model(bundle, keys, slot, repack, tmp_path):
    keys_loaded = load_trusted_keys([keys[1]])
    store = ModelStore(tmp_path / "models")
    configured = BundleConfig(archive=bundle[0], trusted_keys=[keys[1]])
    first = load_startup_model(configured, store, keys_loaded, OPTIONS)
    # 2.0.0 arrives as a remote update: its archive is not kept on the device.
    update = repack(slot, tmp_path / "v2.tar", keys[0], "2.0.0")
    unpacked = store.install(update, "ab" * 32, keys_loaded)
    installed = new_model("2.0.0", unpacked.path, store, "ab" * 32, "https://models.example/v2.tar")
    store.write(first.state.switched_to(installed))

    with (unpacked.path / "models" / "encoder.bin").open("ab") as out:
        out.write(b"\0")
    fallback = load_startup_model(configured, store, keys_loaded, OPTIONS)
    assert fallback.inspector.model_version == "1.0.0"
    assert fallback.state.last_update.reason == "active_unloadable" and "2.0.0" in fallback.problem
    assert store.read().active.version == "1.0.0"


def test_one_byte_appended_in_the_slot_of_a_never_updated_device_is_repaired_from_its_archive(bundle, keys, tmp_path):
    keys_loaded = load_trusted_keys([keys[1]])
    store = ModelStore(tmp_path / "models")
    configured = BundleConfig(archive=bundle[0], trusted_keys=[keys[1]])
    first = load_startup_model(configured, store, keys_loaded, OPTIONS)
    encoder = first.inspector.slot / "models" / "encoder.bin"
    intact = encoder.read_bytes()
    with encoder.open("ab") as out:
        out.write(b"\0")

    again = load_startup_model(configured, store, keys_loaded, OPTIONS)
    assert again.inspector.model_version == "1.0.0" and again.inspector.slot == first.inspector.slot
    assert encoder.read_bytes() == intact, "the slot holds the archive's bytes again"
    record = store.read().last_update
    assert (record.action, record.outcome, record.reason) == ("startup", "repaired", "slot_damaged")
    assert "models/encoder.bin" in record.detail and "hash_mismatch" in record.detail
    assert again.problem.startswith("slot_damaged")
    leftovers = [p.name for p in store.root.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "the damaged copy is not left behind"
    assert load_startup_model(configured, store, keys_loaded, OPTIONS).problem is None, "a later start is quiet"


def restart_prevented_statuses() -> list[str]:
    """The exit statuses the shipped unit does not restart after."""
    unit = Path(__file__).resolve().parents[3] / "systemd" / "d3ad-inspector.service"
    lines = [line for line in unit.read_text().splitlines() if line.startswith("RestartPreventExitStatus=")]
    return " ".join(line.partition("=")[2] for line in lines).split()


def run_device(config: dict, tmp_path) -> subprocess.CompletedProcess:
    """`python -m edge_runtime run` as systemd starts it."""
    path = tmp_path / "inspector.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "edge_runtime", "run", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_device_with_no_loadable_model_exits_with_a_status_systemd_retries(slot, make_config, tmp_path):
    damaged = tmp_path / "damaged-slot"
    shutil.copytree(slot, damaged)
    with (damaged / "models" / "encoder.bin").open("ab") as out:
        out.write(b"\0")
    config = make_config(1, bundle={"slot": str(damaged)})

    finished = run_device(config, tmp_path)
    prevented = restart_prevented_statuses()
    assert finished.returncode not in (0, 1), finished.stderr
    assert str(finished.returncode) not in prevented, "systemd must try this start again"
    assert "encoder.bin" in finished.stderr and "hash_mismatch" in finished.stderr

    config["mode"] = {"kind": "never"}  # a bad config still stops the device until an operator fixes it
    assert run_device(config, tmp_path).returncode == 2 and "2" in prevented


def test_startup_sets_a_damaged_state_file_aside(bundle, keys, tmp_path):
    store = ModelStore(tmp_path / "models")
    store.root.mkdir()
    store.state_path.write_text("not json")
    config = BundleConfig(archive=bundle[0], trusted_keys=[keys[1]])
    started = load_startup_model(config, store, load_trusted_keys([keys[1]]), OPTIONS)
    assert started.inspector.model_version == "1.0.0"
    assert (store.root / "state.unusable").read_text() == "not json"
    assert store.read().active.version == "1.0.0"


def test_leftovers_of_an_interrupted_update_are_removed_at_start(tmp_path):
    from edge_runtime.service.model_store import ModelState, ModelStore

    store = ModelStore(tmp_path / "models")
    store.downloads.mkdir(parents=True)
    (store.downloads / ("ab" * 32 + ".tar")).write_bytes(b"\0" * 100_000)  # a partial download
    staging = store.root / ".unpacking-x1y2"
    (staging / "slot").mkdir(parents=True)
    (staging / "slot" / "encoder.bin").write_bytes(b"\0" * 1000)
    (store.root / ".state.json.abc.tmp").write_text("{")
    kept = store.root / "1.0.0-0123456789ab"
    kept.mkdir()
    store.write(ModelState())

    removed = store.clean_leftovers()
    assert sorted(removed) == sorted([".unpacking-x1y2", ".state.json.abc.tmp", "ab" * 32 + ".tar"])
    assert list(store.downloads.iterdir()) == [] and not staging.exists()
    assert kept.is_dir() and store.state_path.is_file(), "installed slots and the state stay"


def test_a_configured_archive_made_for_no_or_another_product_is_a_configuration_error(bundle, keys, tmp_path):
    from edge_runtime.service.model_policy import BundleNotAccepted, BundlePolicy

    store = ModelStore(tmp_path / "models")
    config = BundleConfig(archive=bundle[0], trusted_keys=[keys[1]], product="tile-inspector", device_class="line-pc")
    with pytest.raises(BundleNotAccepted, match=r"^wrong_target: bundle.archive .* names no product") as refused:
        load_startup_model(config, store, load_trusted_keys([keys[1]]), OPTIONS, BundlePolicy(config, store.root))
    assert isinstance(refused.value, ValueError), "the command line turns it into exit status 2"
    assert not [p for p in store.root.iterdir() if p.is_dir()], "the refused slot is removed"


def test_the_configured_archive_may_be_older_than_the_minimum_which_stays(bundle, keys, slot, repack, tmp_path):
    from edge_runtime.service.model_policy import BundlePolicy

    keys_loaded = load_trusted_keys([keys[1]])
    store = ModelStore(tmp_path / "models")
    v2 = BundleConfig(archive=repack(slot, tmp_path / "v2.tar", keys[0], "2.0.0"), trusted_keys=[keys[1]])
    load_startup_model(v2, store, keys_loaded, OPTIONS, BundlePolicy(v2, store.root))
    v1 = BundleConfig(archive=bundle[0], trusted_keys=[keys[1]])  # the site goes back by hand (root only)
    policy = BundlePolicy(v1, store.root)
    assert load_startup_model(v1, store, keys_loaded, OPTIONS, policy).inspector.model_version == "1.0.0"
    assert policy.minimum_text() == "2.0.0", "cmd/install still cannot bring anything older than 2.0.0"


def test_unpacking_that_would_leave_too_little_free_space_is_refused_before_writing(bundle, keys, small_disk):
    from edge_runtime.bundle import BundleError, verify_bundle

    trusted = load_trusted_keys([keys[1]])
    unpacked = verify_bundle(bundle[0], trusted).unpacked_bytes
    store = ModelStore(small_disk.path / "models")
    free = shutil.disk_usage(small_disk.path).free
    keep = max(0, free - unpacked // 2)  # the files would fit on the disk, but not leave `keep` free
    with pytest.raises(BundleError) as refused:
        store.install(bundle[0], "a" * 64, trusted, keep_free_bytes=keep)
    assert refused.value.reason == "no_space" and f"must keep {keep}" in str(refused.value)
    assert [entry.name for entry in store.root.iterdir()] == [], "nothing was unpacked, no staging folder is left"
    assert shutil.disk_usage(small_disk.path).free >= free - 64 * 1024
    if unpacked + 512 * 1024 < free:  # the tiny bundle fits the 2 MiB disk: with room kept for it, it installs
        installed = store.install(bundle[0], "a" * 64, trusted, keep_free_bytes=64 * 1024)
        assert installed.path.is_dir() and installed.manifest.files
