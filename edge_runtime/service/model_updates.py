"""Remote model updates: install a signed bundle or roll back to the previous one while inspection goes on.

An update runs in its own thread: fetch, verify and unpack into a new slot, compile, run the bundle's
reference checks, and only then record the new choice on disk and hand the new inspector to the frame
loop, which adopts it between two frames. Any refusal leaves the running model untouched."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, ValidationError

from edge_runtime.bundle import BundleError, load_installed
from edge_runtime.config_errors import describe_problems
from edge_runtime.inspector import Inspector
from edge_runtime.manifest import Manifest
from edge_runtime.openvino_networks import RuntimeOptions
from edge_runtime.service.commands import CommandError
from edge_runtime.service.download import DownloadError, DownloadLimits, fetch
from edge_runtime.service.messages import utc_now
from edge_runtime.service.model_policy import BundleNotAccepted, BundlePolicy
from edge_runtime.service.model_store import (
    InstalledModel,
    ModelState,
    ModelStore,
    UpdateRecord,
    new_model,
)
from edge_runtime.settings import StrictModel

log = logging.getLogger(__name__)

Stage = Literal["downloading", "verifying", "compiling", "health_check", "switching"]
Action = Literal["install", "rollback"]
Outcome = Literal["installed", "rolled_back"]


class InstallRequest(StrictModel):
    """The body of `cmd/install`."""

    url: str = Field(min_length=1, description="http(s)://, file:// or an absolute path on the device")
    version: str = Field(min_length=1, max_length=128, description="must equal the bundle's model_version")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the archive, lowercase hex")
    request_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:@-]{1,128}$")


class RollbackRequest(StrictModel):
    request_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:@-]{1,128}$")


class UpdateRefused(Exception):
    """An update that stopped; `reason` is the code published, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UpdateProgress:
    action: Action
    version: str | None
    request_id: str | None
    stage: Stage
    since: str


class ModelUpdater:
    """Runs one install or rollback at a time; `adopt` hands a checked inspector to the frame loop,
    `announce` republishes the model state, `reply` answers the command when the job ends."""

    def __init__(
        self,
        store: ModelStore,
        state: ModelState,
        trusted_keys: Sequence[Ed25519PublicKey],
        options: RuntimeOptions,
        limits: DownloadLimits,
        adopt: Callable[[Inspector], None],
        announce: Callable[[], None],
        reply: Callable[[dict[str, Any]], None],
        policy: BundlePolicy | None = None,
    ) -> None:
        self.store = store
        self.policy = policy  # product binding and minimum version; None: any verified bundle
        self.state = state
        self.trusted_keys = list(trusted_keys)
        self.options = options
        self.progress: UpdateProgress | None = None
        self._adopt = adopt
        self._announce = announce
        self._reply = reply
        self._busy = threading.Lock()
        self._cancel = threading.Event()  # set by a rollback to end a download at its next read
        self.limits = dataclasses.replace(limits, cancel=self._cancel)
        self._worker: threading.Thread | None = None
        self._final_reply: dict[str, Any] | None = None  # sent once the job has let go of the updater

    # --- commands: checked at once, carried out in a worker thread -------------------------------------

    def command_install(self, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(InstallRequest, body)
        if not self.trusted_keys:
            raise CommandError("no bundle.trusted_keys are configured, so no bundle can be verified")
        active = self.state.active
        if active is not None and active.sha256 == request.sha256:
            return {"request_id": request.request_id, "version": active.version, "outcome": "already_active"}
        self._start(lambda: self._install(request), "install", request.version, request.request_id)
        return {"request_id": request.request_id, "version": request.version, "accepted": True}

    def command_rollback(self, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(RollbackRequest, body)
        previous = self.state.previous
        if previous is None:
            raise CommandError("there is no previous model to roll back to")
        self._preempt_download()
        self._start(
            lambda: self._rollback(previous, request.request_id), "rollback", previous.version, request.request_id
        )
        return {"request_id": request.request_id, "version": previous.version, "accepted": True}

    def fall_back(self, cause: UpdateRefused) -> bool:
        """Roll back on the device's own initiative (a new model that keeps failing), through the same job as
        `cmd/rollback`; `cause` is recorded in `model.last_update`. False when it cannot start now."""
        previous = self.state.previous
        if previous is None:
            return False
        self._preempt_download()
        try:
            self._start(lambda: self._rollback(previous, None, cause), "rollback", previous.version, None)
        except CommandError as busy:
            log.warning("cannot roll back to %s now: %s", previous.version, busy)
            return False
        return True

    def _preempt_download(self, wait_s: float = 5.0) -> None:
        """A rollback is the emergency exit: it cancels an install that is still downloading."""
        progress, worker = self.progress, self._worker
        if progress is None or progress.action != "install" or progress.stage != "downloading" or worker is None:
            return
        log.warning("rollback requested: cancelling the download of %s", progress.version)
        self._cancel.set()
        worker.join(wait_s)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running job (if any) has ended."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def state_payload(self) -> dict[str, Any]:
        """The retained `model` message: what is installed, what runs, what is happening, how it last went."""
        state, progress = self.state, self.progress
        return {
            "active": state.active.version if state.active else None,
            "previous": state.previous.version if state.previous else None,
            "installed": self.store.installed_versions(state),
            "active_model": state.active.model_dump() if state.active else None,
            "update_in_progress": progress.__dict__ if progress else None,
            "last_update": state.last_update.model_dump() if state.last_update else None,
            "minimum_version": self.policy.minimum_text() if self.policy else None,
            "time": utc_now(),
        }

    def _start(self, job: Callable[[], None], action: Action, version: str | None, request_id: str | None) -> None:
        if not self._busy.acquire(blocking=False):
            running = self.progress
            doing = f"{running.action} of {running.version}" if running else "another update"
            raise CommandError(f"busy: {doing} is still running; send the command again when it has ended")
        self.progress = UpdateProgress(action, version, request_id, "verifying", utc_now())
        self._cancel.clear()
        self._worker = threading.Thread(target=self._run_job, args=(job,), name=f"model-{action}", daemon=True)
        self._worker.start()

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
        finally:
            if self.progress is not None:  # the job ended without concluding (it cannot, but never stay busy)
                self.progress = None
                self._announce()
            reply, self._final_reply = self._final_reply, None
            self._busy.release()
            # Only now: a client may send its next command the moment it reads this, and must not find us busy.
            if reply is not None:
                self._reply(reply)

    def _conclude(self, state: ModelState, reply: dict[str, Any] | None) -> None:
        """Record the outcome on disk and publish the model state; the answer goes when the job has ended, so
        the state is current by then. A job the device started itself answers no command (reply None)."""
        self.store.write(state)
        self.state = state
        self.progress = None
        self._announce()
        self._final_reply = reply

    def _stage(self, stage: Stage) -> None:
        assert self.progress is not None
        self.progress = UpdateProgress(**{**self.progress.__dict__, "stage": stage, "since": utc_now()})
        log.info("model %s %s: %s", self.progress.action, self.progress.version, stage)
        self._announce()

    # --- install -------------------------------------------------------------------------------------

    def _install(self, request: InstallRequest) -> None:
        download = self.store.downloads / f"{request.sha256}.tar"
        try:
            self._allowed(lambda policy: policy.check_version(request.version))  # before a byte is fetched
            self._stage("downloading")
            self.store.downloads.mkdir(parents=True, exist_ok=True)
            archive = _fetch(request, download, self.limits)
            self._stage("verifying")
            slot, manifest = _unpack(self.store, archive, request.sha256, self.trusted_keys, self.limits)
            try:
                if manifest.model_version != request.version:
                    raise UpdateRefused(
                        "version_mismatch",
                        f"the bundle holds model_version {manifest.model_version!r}, the request says "
                        f"{request.version!r}",
                    )
                self._allowed(lambda policy: policy.check(manifest))
                inspector = self._checked_inspector(manifest, slot)
            except UpdateRefused:
                self._discard(slot)
                raise
            self._allowed(lambda policy: policy.accepted(manifest, f"install of {manifest.model_version}"))
            model = new_model(manifest.model_version, slot, self.store, request.sha256, request.url)
            self._switch(self.state.switched_to(model), inspector, "install", "installed", request.request_id)
        except UpdateRefused as refusal:
            self._refuse("install", request.version, request.request_id, refusal)
        except Exception as error:  # a bug or a full disk: reported, and the running model keeps running
            log.exception("install of %s failed", request.version)
            self._refuse("install", request.version, request.request_id, UpdateRefused("internal_error", str(error)))
        finally:
            download.unlink(missing_ok=True)

    def _rollback(self, previous: InstalledModel, request_id: str | None, cause: UpdateRefused | None = None) -> None:
        """Back to the kept previous model; `cause` is set when the device decided it (no command to answer)."""
        try:
            self._stage("verifying")
            slot = self.store.path_of(previous)
            try:
                manifest = load_installed(slot, self.trusted_keys or None)
            except BundleError as error:
                raise UpdateRefused(error.reason, error.detail) from error
            except OSError as error:
                raise UpdateRefused("missing_file", f"slot {slot} cannot be read: {error}") from error
            inspector = self._checked_inspector(manifest, slot)
            self._switch(self.state.rolled_back_to(previous), inspector, "rollback", "rolled_back", request_id, cause)
        except UpdateRefused as refusal:
            self._refuse("rollback", previous.version, request_id, refusal, answer=cause is None)
        except Exception as error:
            log.exception("rollback to %s failed", previous.version)
            refusal = UpdateRefused("internal_error", str(error))
            self._refuse("rollback", previous.version, request_id, refusal, answer=cause is None)

    def _allowed(self, step: Callable[[BundlePolicy], None]) -> None:
        """Run a policy step; a bundle the device must not run becomes a refusal with the policy's reason."""
        if self.policy is None:
            return
        try:
            step(self.policy)
        except BundleNotAccepted as refusal:
            raise UpdateRefused(refusal.reason, refusal.detail) from refusal

    def _checked_inspector(self, manifest: Manifest, slot: Path) -> Inspector:
        """Compile the verified slot and score its reference images; a model that fails here never runs."""
        self._stage("compiling")
        try:
            inspector = Inspector(manifest, slot, self.options)
        except (RuntimeError, OSError) as error:
            raise UpdateRefused("compile_failed", f"{manifest.model_version} cannot be compiled: {error}") from error
        self._stage("health_check")
        failed = [check for check in inspector.health_check() if not check.passed]
        if failed:
            worst = ", ".join(
                f"{c.file} scores {c.measured_score:.4f}, expected {c.expected_score:.4f} ± {c.tolerance:.4f}"
                for c in failed[:3]
            )
            raise UpdateRefused("health_check_failed", f"{len(failed)} reference image(s) off: {worst}")
        return inspector

    def _switch(
        self,
        state: ModelState,
        inspector: Inspector,
        action: Action,
        outcome: Outcome,
        request_id: str | None,
        cause: UpdateRefused | None = None,
    ) -> None:
        """Record the choice on disk first, so a restart comes back to the model that is about to run."""
        self._stage("switching")
        assert state.active is not None
        version = state.active.version
        state = state.recorded(switch_record(action, outcome, version, request_id, cause))
        self.store.write(state)
        self._adopt(inspector)
        self.store.prune(state)
        log.info("model %s %s; previous: %s", version, outcome, state.previous and state.previous.version)
        reply = {"command": action, "ok": True, "request_id": request_id, "version": version, "outcome": outcome}
        self._conclude(state, reply if cause is None else None)

    def _refuse(
        self,
        action: Action,
        version: str | None,
        request_id: str | None,
        refusal: UpdateRefused,
        answer: bool = True,
    ) -> None:
        log.error("model %s of %s refused: %s: %s", action, version, refusal.reason, refusal.detail)
        record = UpdateRecord(
            action=action,
            outcome="refused",
            version=version,
            request_id=request_id,
            reason=refusal.reason,
            detail=refusal.detail,
            time=utc_now(),
        )
        reply = {"command": action, "ok": False, "request_id": request_id, "version": version}
        answered = reply | {"reason": refusal.reason, "error": refusal.detail} if answer else None
        self._conclude(self.state.recorded(record), answered)

    def _discard(self, slot: Path) -> None:
        """Remove a slot that will not run, unless it is one the device already keeps."""
        kept = [self.store.path_of(m).resolve() for m in (self.state.active, self.state.previous) if m is not None]
        if slot.resolve() not in kept:
            self.store.remove(slot)


def switch_record(
    action: Action, outcome: Outcome, version: str, request_id: str | None, cause: UpdateRefused | None = None
) -> UpdateRecord:
    """`model.last_update` for a switch; `cause` says why the device switched on its own initiative."""
    return UpdateRecord(
        action=action,
        outcome=outcome,
        version=version,
        request_id=request_id,
        reason=cause.reason if cause else None,
        detail=cause.detail if cause else None,
        time=utc_now(),
    )


def _parse(model: type[StrictModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise CommandError("; ".join(describe_problems(error))) from error


def _fetch(request: InstallRequest, target: Path, limits: DownloadLimits) -> Path:
    try:
        return fetch(request.url, target, request.sha256, limits)
    except DownloadError as error:
        raise UpdateRefused(error.reason, error.detail) from error


def _unpack(
    store: ModelStore, archive: Path, sha256: str, keys: Sequence[Ed25519PublicKey], limits: DownloadLimits
) -> tuple[Path, Manifest]:
    try:
        unpacked = store.install(archive, sha256, keys, limits.max_unpacked_bytes, limits.keep_free_bytes)
    except BundleError as error:
        raise UpdateRefused(error.reason, error.detail) from error
    return unpacked.path, unpacked.manifest
