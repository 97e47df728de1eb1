"""Push a model update to a device over MQTT: send `cmd/install` (or `cmd/rollback`), then follow the device's
progress on its retained `model` topic until its final reply says how it ended."""

from __future__ import annotations

import json
import secrets
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.bundle import BundleError, sha256_of_file
from edge_runtime.manifest import MANIFEST_NAME, Manifest
from edge_runtime.service.signed_commands import signed_command
from export.signing import sign


class PushError(RuntimeError):
    """The update could not be delivered or its outcome did not arrive; the message says which."""


@dataclass(frozen=True)
class Broker:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class Device:
    device_id: str
    prefix: str = "d3ad"

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{self.device_id}/{suffix}"


@dataclass(frozen=True)
class PushOutcome:
    ok: bool
    version: str | None
    outcome: str | None  # installed, rolled_back, already_active
    reason: str | None  # the refusal code when not ok
    detail: str | None
    stages: list[str] = field(default_factory=list)  # as the device reported them


def bundle_version(bundle: Path) -> str:
    """The model_version written in a bundle's manifest (the device checks the signature, not this tool)."""
    data = b""
    try:
        with tarfile.open(bundle) as tar:
            for member in tar:  # stops at the manifest, which comes first; the device reads the rest
                if member.name == MANIFEST_NAME and member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    break
    except (tarfile.TarError, OSError) as error:
        raise PushError(f"{bundle} is not a readable bundle: {error}") from error
    try:
        return Manifest.parse(data).model_version
    except BundleError as error:
        raise PushError(f"{bundle}: {error}") from error


def install_request(bundle: Path, url: str) -> dict[str, Any]:
    """The `cmd/install` body for a bundle that the device will fetch from `url`."""
    digest = sha256_of_file(bundle)
    return {"url": url, "version": bundle_version(bundle), "sha256": digest, "request_id": new_request_id()}


def new_request_id() -> str:
    return f"push-{int(time.time())}-{secrets.token_hex(3)}"


class _Exchange:
    """One MQTT session: subscribe to the device's reply and model topics, send the command, collect answers."""

    def __init__(self, broker: Broker, device: Device, request_id: str, on_stage: Callable[[str], None]) -> None:
        self.device = device
        self.request_id = request_id
        self.on_stage = on_stage
        self.stages: list[str] = []
        self.final: dict[str, Any] | None = None
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"d3ad-push-{request_id}")
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.ca_file is not None:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            self.final = {"ok": False, "reason": "broker_refused", "error": str(reason_code)}
            self.done.set()
            return
        client.subscribe([(self.device.topic("reply"), 1), (self.device.topic("model"), 1)])

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if message.topic.endswith("/model"):
            self._note_stage(body.get("update_in_progress"))
        elif body.get("request_id") == self.request_id and not body.get("accepted"):
            self.final = body
            self.done.set()

    def _note_stage(self, progress: dict[str, Any] | None) -> None:
        if not progress or progress.get("request_id") != self.request_id:
            return
        stage = str(progress.get("stage"))
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)
            self.on_stage(stage)


def send_command(
    broker: Broker,
    device: Device,
    command: str,
    body: dict[str, Any],
    timeout_s: float = 900.0,
    on_stage: Callable[[str], None] = lambda stage: None,
    sign_key: Ed25519PrivateKey | None = None,
) -> PushOutcome:
    """Send `cmd/<command>` with a request id and wait for the device's final answer to it; with `sign_key`,
    signed for this device as a device with updates.signed_commands requires."""
    request_id = body.setdefault("request_id", new_request_id())
    if sign_key is not None:
        body = signed_command(command, device.device_id, body, lambda data: sign(sign_key, data))
    exchange = _Exchange(broker, device, request_id, on_stage)
    try:
        exchange.client.connect(broker.host, broker.port, keepalive=30)
    except OSError as error:
        raise PushError(f"cannot reach the broker at {broker.host}:{broker.port}: {error}") from error
    exchange.client.loop_start()
    try:
        if not exchange.subscribed.wait(15):
            raise PushError(f"the broker at {broker.host}:{broker.port} did not accept the subscription")
        payload = json.dumps(body).encode("utf-8")
        exchange.client.publish(device.topic(f"cmd/{command}"), payload, qos=1).wait_for_publish(15)
        if not exchange.done.wait(timeout_s):
            raise PushError(
                f"no outcome from {device.device_id} within {timeout_s:g} s (is it online? see its status topic)"
            )
    finally:
        exchange.client.disconnect()
        exchange.client.loop_stop()
    final = exchange.final or {}
    return PushOutcome(
        ok=bool(final.get("ok")),
        version=final.get("version"),
        outcome=final.get("outcome"),
        reason=final.get("reason"),
        detail=final.get("error"),
        stages=exchange.stages,
    )
