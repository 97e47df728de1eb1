"""Signed `cmd/install` and `cmd/rollback` (updates.signed_commands): the broker's ACL alone no longer decides
who may change the model; the command must be signed (Ed25519) by a site key, for this device, recently, and
only once.

On the wire (what `python -m export push --key` sends):

    {"request_id": "push-...", "signed": "<base64 of the body's JSON bytes>", "signature": "<base64>"}

The signature covers exactly the bytes in `signed`, so nothing is re-serialised before it is checked. Those
bytes are the command's JSON object plus three fields: `command` and `device_id` (so a command signed for
one device or one command cannot be used for another) and `issued_at_ms` (Unix time in milliseconds). The
device refuses a command issued more than `updates.command_max_age_s` from its clock, and one not issued
after the last command it accepted (kept in `<state_dir>/commands.json`, so a restart does not reopen the
door to a replay)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_runtime.durable_files import write_atomically
from edge_runtime.service.commands import CommandError, parse_body

log = logging.getLogger(__name__)

SIGNED_FIELD, SIGNATURE_FIELD = "signed", "signature"
BOUND_FIELDS = ("command", "device_id", "issued_at_ms")
RECORD_FILE = "commands.json"


def signed_command(
    command: str, device_id: str, body: dict[str, Any], sign: Callable[[bytes], bytes], now_s: float | None = None
) -> dict[str, Any]:
    """The envelope for `body`, signed with `sign` (the host passes its private key's signing function)."""
    issued_at_ms = int((time.time() if now_s is None else now_s) * 1000)
    signed = {**body, "command": command, "device_id": device_id, "issued_at_ms": issued_at_ms}
    data = json.dumps(signed, separators=(",", ":"), sort_keys=True).encode("utf-8")
    envelope = {SIGNED_FIELD: _b64(data), SIGNATURE_FIELD: _b64(sign(data))}
    if "request_id" in body:  # outside as well, so the sender can match even a refusal to its request
        envelope = {"request_id": body["request_id"], **envelope}
    return envelope


class CommandVerifier:
    """Opens signed envelopes for one device; thread-safe, commands arrive on the MQTT network thread."""

    def __init__(
        self,
        keys: Sequence[Ed25519PublicKey],
        device_id: str,
        max_age_s: float,
        record: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = list(keys)
        self.device_id = device_id
        self.max_age_ms = int(max_age_s * 1000)
        self.record = Path(record)
        self.clock = clock
        self._lock = threading.Lock()
        self._last_ms = self._read_last()

    def open(self, command: str, envelope: dict[str, Any]) -> dict[str, Any]:
        """The verified command body without the bound fields; CommandError with a reason otherwise."""
        data, signature = _parts(envelope)
        self._check_signature(data, signature)
        body = parse_body(data)
        self._check_binding(command, body)
        issued = body["issued_at_ms"]
        with self._lock:
            self._check_fresh(issued)
            self._remember(issued)
        return {key: value for key, value in body.items() if key not in BOUND_FIELDS}

    def _check_signature(self, data: bytes, signature: bytes) -> None:
        if not self.keys:
            raise CommandError("no key is configured to verify signed commands", "bad_signature")
        for key in self.keys:
            try:
                key.verify(signature, data)
                return
            except InvalidSignature:
                continue
        raise CommandError("the command's signature does not verify with any trusted key", "bad_signature")

    def _check_binding(self, command: str, body: dict[str, Any]) -> None:
        if body.get("command") != command:
            raise CommandError(f"the command was signed as {body.get('command')!r}, not {command!r}", "wrong_command")
        if body.get("device_id") != self.device_id:
            raise CommandError(f"the command was signed for device {body.get('device_id')!r}", "wrong_device")
        issued = body.get("issued_at_ms")
        if type(issued) is not int:
            raise CommandError("issued_at_ms must be an integer (Unix time in milliseconds)", "malformed_command")

    def _check_fresh(self, issued_ms: int) -> None:
        age_ms = int(self.clock() * 1000) - issued_ms
        if abs(age_ms) > self.max_age_ms:
            when = "old" if age_ms > 0 else "ahead of this device's clock"
            raise CommandError(
                f"the command was issued {abs(age_ms) / 1000:.0f} s {when}; the limit is "
                f"{self.max_age_ms / 1000:g} s (updates.command_max_age_s; is the device clock right?)",
                "stale_command",
            )
        if issued_ms <= self._last_ms:
            raise CommandError(
                "the command was not issued after the last one accepted; a replay is refused", "replayed"
            )

    def _remember(self, issued_ms: int) -> None:
        # On disk before the command runs: a command that crashes the service cannot be replayed after it.
        write_atomically(self.record, json.dumps({"last_issued_at_ms": issued_ms}).encode("utf-8"))
        self._last_ms = issued_ms

    def _read_last(self) -> int:
        if not self.record.exists():
            return 0
        try:
            value = json.loads(self.record.read_bytes())["last_issued_at_ms"]
            if type(value) is not int:
                raise TypeError(f"last_issued_at_ms is {value!r}")
            return value
        except (OSError, ValueError, KeyError, TypeError) as error:
            # The age limit still bounds a replay; the next accepted command rewrites the file.
            log.warning(
                "%s cannot be used (%s); only updates.command_max_age_s guards against replays", self.record, error
            )
            return 0


def _parts(envelope: dict[str, Any]) -> tuple[bytes, bytes]:
    signed, signature = envelope.get(SIGNED_FIELD), envelope.get(SIGNATURE_FIELD)
    if not isinstance(signed, str) or not isinstance(signature, str):
        raise CommandError(
            "updates.signed_commands is on: the command must be signed (python -m export push --key)", "unsigned"
        )
    extra = sorted(set(envelope) - {SIGNED_FIELD, SIGNATURE_FIELD, "request_id"})
    if extra:
        raise CommandError(f"a signed command carries its fields inside `signed`, not {extra}", "malformed_command")
    try:
        return base64.b64decode(signed, validate=True), base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as error:
        raise CommandError(f"signed or signature is not base64: {error}", "malformed_command") from error


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
