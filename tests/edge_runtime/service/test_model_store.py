"""The model store on disk and the choice of model at start: what survives restarts, config changes and damage."""

from __future__ import annotations

import pytest

from edge_runtime.bundle import load_trusted_keys
from edge_runtime.openvino_networks import RuntimeOptions
from edge_runtime.service.model_store import InstalledModel, ModelState, ModelStore, StateFileError, UpdateRecord
from edge_runtime.service.model_updates import load_startup_model
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

    # The active slot is damaged on disk: the start falls back to the previous model and says why.
    next((changed.inspector.slot / "models").glob("*.bin")).write_bytes(b"damaged")
    fallback = load_startup_model(v2, store, keys_loaded, OPTIONS)
    assert fallback.inspector.model_version == "1.0.0"
    assert fallback.state.last_update.reason == "active_unloadable"
    assert store.read().active.version == "1.0.0"


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
    (store.root / ".state.abc.json").write_text("{")
    kept = store.root / "1.0.0-0123456789ab"
    kept.mkdir()
    store.write(ModelState())

    removed = store.clean_leftovers()
    assert sorted(removed) == sorted([".unpacking-x1y2", ".state.abc.json", "ab" * 32 + ".tar"])
    assert list(store.downloads.iterdir()) == [] and not staging.exists()
    assert kept.is_dir() and store.state_path.is_file(), "installed slots and the state stay"
