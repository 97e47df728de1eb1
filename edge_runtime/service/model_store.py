"""Installed models on the device: one slot folder per bundle, and which one is active, kept on disk.

Layout under `<state_dir>/models/`: `state.json` (active and previous model, last update), one folder per
installed bundle named `<version>-<sha12>`, and `downloads/` for bundles being fetched. `state.json` is
replaced atomically, so a power cut leaves either the old or the new choice, never half of one."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge_runtime.bundle import (
    DEFAULT_MAX_UNPACKED_BYTES,
    BundleError,
    install_bundle,
    load_installed,
)
from edge_runtime.durable_files import sync_directory, write_atomically
from edge_runtime.manifest import Manifest
from edge_runtime.service.messages import utc_now
from edge_runtime.settings import StrictModel

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_SCHEMA_VERSION = 1
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class InstalledModel(StrictModel):
    version: str
    slot: str  # a folder name under models/, or an absolute path for a slot the config names
    sha256: str | None = None  # of the archive it was installed from
    source: str  # "config", or the URL/path of the update
    installed_at: str


class UpdateRecord(StrictModel):
    """How the last install or rollback ended; `reason` is a machine-readable code when it did not succeed."""

    action: Literal["install", "rollback", "startup"]
    # repaired: a damaged slot was extracted again from its intact archive
    outcome: Literal["installed", "rolled_back", "repaired", "refused", "failed"]
    version: str | None = None
    request_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    time: str


class ModelState(StrictModel):
    schema_version: Literal[1] = STATE_SCHEMA_VERSION
    active: InstalledModel | None = None
    previous: InstalledModel | None = None
    configured: str | None = None  # identity of the configured bundle when it was last adopted
    last_update: UpdateRecord | None = None

    def switched_to(self, model: InstalledModel) -> ModelState:
        """`model` becomes active and the one it replaces becomes previous."""
        return self.model_copy(update={"active": model, "previous": self.active})

    def rolled_back_to(self, previous: InstalledModel) -> ModelState:
        """`previous` (the kept previous model) becomes active again; the one it replaces is kept as previous."""
        return self.model_copy(update={"active": previous, "previous": self.active})

    def recorded(self, record: UpdateRecord) -> ModelState:
        return self.model_copy(update={"last_update": record})


class StateFileError(ValueError):
    """state.json exists but cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class UnpackedSlot:
    """A verified slot of the store; `repaired` says what was wrong with the slot it replaced, if anything."""

    path: Path
    manifest: Manifest
    repaired: str | None = None


def slot_name(version: str, sha256: str) -> str:
    """A folder name that says which model it holds; the hash keeps two builds of one version apart."""
    return f"{_UNSAFE_NAME.sub('_', version)[:64]}-{sha256[:12]}"


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.downloads = self.root / "downloads"
        self.state_path = self.root / STATE_FILE

    def read(self) -> ModelState:
        """The state on disk; an empty state on first start."""
        if not self.state_path.exists():
            return ModelState()
        try:
            return ModelState.model_validate_json(self.state_path.read_bytes())
        except (OSError, ValidationError) as error:
            raise StateFileError(f"{self.state_path} cannot be used: {error}") from error

    def write(self, state: ModelState) -> None:
        """Replace state.json atomically and durably."""
        write_atomically(self.state_path, json.dumps(state.model_dump(mode="json"), indent=2).encode("utf-8"))

    def path_of(self, model: InstalledModel) -> Path:
        slot = Path(model.slot)
        return slot if slot.is_absolute() else self.root / slot

    def install(
        self,
        archive: Path,
        sha256: str,
        trusted_keys: Sequence[Ed25519PublicKey],
        max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
        keep_free_bytes: int = 0,
    ) -> UnpackedSlot:
        """Verify and unpack `archive` into a new slot, leaving `keep_free_bytes` free (else `no_space`). An
        existing slot of the same archive is reused when it still verifies; a damaged one (a changed, missing or
        extra byte on disk) is replaced by the fresh copy."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=self.root))
        try:
            manifest = install_bundle(archive, trusted_keys, staging / "slot", max_unpacked_bytes, keep_free_bytes)
            slot = self.root / slot_name(manifest.model_version, sha256)
            damage = self._damage_of(slot, trusted_keys) if slot.is_dir() else None
            if slot.is_dir() and damage is None:
                return UnpackedSlot(slot, manifest)
            if damage is not None:
                log.warning("slot %s is damaged (%s); it is replaced by a fresh copy of %s", slot, damage, archive)
                # Moved into the staging folder, which goes in `finally` (or at the next start after a power cut).
                os.rename(slot, staging / "damaged")
            os.rename(staging / "slot", slot)
            sync_directory(self.root)
            return UnpackedSlot(slot, manifest, damage)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _damage_of(slot: Path, trusted_keys: Sequence[Ed25519PublicKey]) -> str | None:
        """Why an installed slot no longer verifies; None when it is intact."""
        try:
            load_installed(slot, trusted_keys)
        except BundleError as error:
            return str(error)
        except OSError as error:
            return f"slot {slot} cannot be read: {error}"
        return None

    def holds(self, slot: Path) -> bool:
        """Whether `slot` is one of the store's folders (not a slot the config names elsewhere)."""
        return slot.resolve().parent == self.root.resolve()

    def remove(self, slot: Path) -> None:
        """Delete a slot of the store; slots the config names (outside the store) are never touched."""
        if self.holds(slot):
            shutil.rmtree(slot, ignore_errors=True)

    def prune(self, state: ModelState) -> None:
        """Keep the active and previous slots; delete other slots and leftovers of interrupted work."""
        keep = {self.path_of(model).resolve() for model in (state.active, state.previous) if model is not None}
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.is_dir() and entry != self.downloads and entry.resolve() not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def clean_leftovers(self) -> list[str]:
        """At start, before any update runs: remove what an interrupted update left behind (a power cut mid-way):
        partial downloads, unpacking folders and unfinished state files. Returns the names removed."""
        if not self.root.is_dir():
            return []
        leftovers = list(self.root.glob(".unpacking-*")) + list(self.root.glob(".*.tmp"))  # unfinished atomic writes
        if self.downloads.is_dir():
            leftovers += list(self.downloads.iterdir())
        for entry in leftovers:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        return [entry.name for entry in leftovers]

    def installed_versions(self, state: ModelState) -> list[str]:
        return [model.version for model in (state.active, state.previous) if model is not None]


def new_model(version: str, slot: Path, store: ModelStore, sha256: str | None, source: str) -> InstalledModel:
    """A record for a slot; slots inside the store are kept by name so the state dir can move."""
    return InstalledModel(
        version=version,
        slot=slot.name if store.holds(slot) else str(slot.resolve()),
        sha256=sha256,
        source=source,
        installed_at=utc_now(),
    )
