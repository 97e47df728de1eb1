"""The model to run at start: the store's choice, repaired from its archive or replaced by its predecessor when
its slot is damaged, or the configured bundle on first start and whenever the config names a different one.

Damage on the device (a changed byte in a slot, a lost file) is never a reason to stop for good: a slot whose
intact archive is at hand is extracted again, otherwise the previous model runs; so it does when the active model,
still on probation, kept ending the service (model_guard.CrashGuard). Only when no model at all can
be loaded does the start fail, with ModelUnavailable, which the command line turns into an exit status systemd
retries. A configured archive that cannot be verified is a configuration problem and stays a BundleError."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_runtime.bundle import BundleError, load_installed, sha256_of_file
from edge_runtime.inspector import Inspector
from edge_runtime.manifest import Manifest
from edge_runtime.openvino_networks import RuntimeOptions
from edge_runtime.service.messages import utc_now
from edge_runtime.service.model_guard import CrashGuard, CrashLoop
from edge_runtime.service.model_policy import BundleNotAccepted, BundlePolicy
from edge_runtime.service.model_store import (
    InstalledModel,
    ModelState,
    ModelStore,
    StateFileError,
    UnpackedSlot,
    UpdateRecord,
    new_model,
)
from edge_runtime.service.model_updates import UpdateRefused, switch_record
from edge_runtime.service.service_config import BundleConfig

log = logging.getLogger(__name__)

_LOAD_ERRORS = (BundleError, OSError, RuntimeError)


class ModelUnavailable(RuntimeError):
    """No installed or configured model can be loaded: damage a restart may outlive (a file put back, a disk
    remounted), so the service exits for systemd to try again rather than as a bad configuration."""


@dataclass(frozen=True)
class StartupModel:
    inspector: Inspector
    state: ModelState
    problem: str | None = None  # what this start had to work around, for the status topic's last_error


def configured_identity(bundle: BundleConfig) -> tuple[str, str | None]:
    """(identity, archive sha256) of the bundle the config names; a changed config bundle is adopted anew."""
    if bundle.archive is not None:
        sha256 = sha256_of_file(bundle.archive)
        return f"archive:{sha256}", sha256
    assert bundle.slot is not None
    return f"slot:{bundle.slot.resolve()}", None


def open_model(
    store: ModelStore, model: InstalledModel, keys: Sequence[Ed25519PublicKey], options: RuntimeOptions
) -> Inspector:
    """Compile an installed model after re-checking its files (and signature, when keys are configured)."""
    slot = store.path_of(model)
    return Inspector(load_installed(slot, keys or None), slot, options)


def load_startup_model(
    bundle: BundleConfig,
    store: ModelStore,
    keys: Sequence[Ed25519PublicKey],
    options: RuntimeOptions,
    policy: BundlePolicy | None = None,
    crashes: CrashGuard | None = None,
) -> StartupModel:
    """The active model on disk; when it no longer loads, the same model extracted again from the configured
    archive if that is its archive, else its predecessor; the configured bundle on first start and whenever
    the config names a different bundle than last time (and when nothing else loads). A newly configured
    bundle must be made for this device (`policy`'s product binding); it may be older than the minimum version,
    which guards cmd/install: the config is the site's own choice, and a start after state.json was set aside
    must not refuse the archive the device has always run. A model on probation that kept ending the service
    (`crashes`) is rolled back to its predecessor before it is loaded again."""
    state = _read_state(store)
    if policy is not None:
        policy.start(state)
    identity, archive_sha = configured_identity(bundle)
    if state.configured != identity:
        return _adopt_configured(bundle, store, keys, options, state, identity, archive_sha, policy)
    problem = None
    loop = crashes.starting(state) if crashes is not None else None
    if loop is not None:
        state, problem = _roll_back_crashing(store, state, loop)
    for model in (state.active, state.previous):
        if model is None:
            continue
        try:
            inspector = open_model(store, model, keys, options)
        except _LOAD_ERRORS as error:
            log.error("installed model %s cannot be loaded: %s", model.version, error)
            if model is state.active and archive_sha is not None and model.sha256 == archive_sha:
                return _adopt_configured(bundle, store, keys, options, state, identity, archive_sha)
            continue
        if model is state.active:
            return StartupModel(inspector, state, problem)
        return _fell_back(store, state, model, inspector, identity)
    log.error("no installed model loads; the configured bundle is installed again")
    return _adopt_configured(bundle, store, keys, options, state, identity, archive_sha)


def _roll_back_crashing(store: ModelStore, state: ModelState, loop: CrashLoop) -> tuple[ModelState, str]:
    """The rollback the device does on its own when a new model keeps failing, decided here because the failures
    ended the process: recorded on disk as that one is, before the crashing model is compiled again."""
    previous = state.previous
    assert previous is not None  # a model is on probation only while there is one to go back to
    detail = loop.detail(previous.version)
    log.error(detail)
    record = switch_record("rollback", "rolled_back", previous.version, None, UpdateRefused("crashes", detail))
    state = state.rolled_back_to(previous).recorded(record)
    store.write(state)
    return state, f"crashes: {detail}"


def _fell_back(
    store: ModelStore, state: ModelState, model: InstalledModel, inspector: Inspector, identity: str
) -> StartupModel:
    """The previous model runs because the active one does not load; recorded so the `model` topic says so."""
    detail = f"{state.active.version if state.active else 'the active model'} could not be loaded"
    record = UpdateRecord(
        action="startup",
        outcome="rolled_back",
        version=model.version,
        reason="active_unloadable",
        detail=detail,
        time=utc_now(),
    )
    state = ModelState(active=model, previous=None, configured=identity, last_update=record)
    store.write(state)
    return StartupModel(inspector, state, f"active_unloadable: {detail}; running {model.version}")


def _read_state(store: ModelStore) -> ModelState:
    try:
        return store.read()
    except StateFileError as error:
        # Written atomically, so this means a damaged disk or a hand edit: keep it for inspection, start clean.
        log.error("%s; it is set aside and the configured bundle is used", error)
        store.state_path.rename(store.state_path.with_suffix(".unusable"))
        return ModelState()


def _configured_slot(
    bundle: BundleConfig, store: ModelStore, keys: Sequence[Ed25519PublicKey], archive_sha: str | None
) -> UnpackedSlot:
    """The configured bundle, verified. An archive that fails verification is a configuration problem (a
    BundleError); a configured slot folder that fails is a damaged model (ModelUnavailable)."""
    if bundle.archive is not None:
        assert archive_sha is not None
        return store.install(bundle.archive, archive_sha, keys)
    assert bundle.slot is not None
    try:
        return UnpackedSlot(bundle.slot, load_installed(bundle.slot))
    except (BundleError, OSError) as error:
        raise ModelUnavailable(f"bundle.slot {bundle.slot} cannot be loaded and no other model is: {error}") from error


def _adopt_configured(
    bundle: BundleConfig,
    store: ModelStore,
    keys: Sequence[Ed25519PublicKey],
    options: RuntimeOptions,
    state: ModelState,
    identity: str,
    archive_sha: str | None,
    policy: BundlePolicy | None = None,
) -> StartupModel:
    unpacked = _configured_slot(bundle, store, keys, archive_sha)
    slot, manifest = unpacked.path, unpacked.manifest
    if policy is not None:
        _check_configured(policy, manifest, bundle, store, state, slot)
    try:
        inspector = Inspector(manifest, slot, options)
    except (RuntimeError, OSError) as error:
        raise ModelUnavailable(f"the configured bundle {manifest.model_version} cannot be compiled: {error}") from error
    if policy is not None:
        policy.accepted(manifest, f"configured bundle {bundle.archive or bundle.slot}")
    model = new_model(manifest.model_version, slot, store, archive_sha, "config")
    same_slot = state.active is not None and store.path_of(state.active).resolve() == slot.resolve()
    if not same_slot:
        state = state.switched_to(model)
    record = _adoption_record(model.version, unpacked.repaired)
    state = state.model_copy(update={"configured": identity}).recorded(record)
    store.write(state)
    store.prune(state)
    log.info("running the configured bundle %s from %s", model.version, slot)
    problem = f"slot_damaged: {unpacked.repaired}; extracted again from its archive" if unpacked.repaired else None
    return StartupModel(inspector, state, problem)


def _check_configured(
    policy: BundlePolicy, manifest: Manifest, bundle: BundleConfig, store: ModelStore, state: ModelState, slot: Path
) -> None:
    """A configured bundle made for another device is a configuration problem (exit status 2); its fresh slot
    goes, the kept ones stay."""
    try:
        policy.check_target(manifest)
    except BundleNotAccepted as refusal:
        kept = [store.path_of(m).resolve() for m in (state.active, state.previous) if m is not None]
        if slot.resolve() not in kept:
            store.remove(slot)
        key = "bundle.archive" if bundle.archive is not None else "bundle.slot"
        raise BundleNotAccepted(refusal.reason, f"{key} {bundle.archive or bundle.slot}: {refusal.detail}") from None


def _adoption_record(version: str, repaired: str | None) -> UpdateRecord:
    if repaired is None:
        return UpdateRecord(action="startup", outcome="installed", version=version, time=utc_now())
    return UpdateRecord(
        action="startup",
        outcome="repaired",
        version=version,
        reason="slot_damaged",
        detail=f"{repaired}; extracted again from the configured archive",
        time=utc_now(),
    )
