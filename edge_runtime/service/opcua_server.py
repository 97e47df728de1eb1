"""OPC UA server on the device (asyncua, in its own thread and event loop): an Inspector object with the last
verdict and the counters as variables, a method Trigger(PartId) -> (Verdict, Score), and a DefectEvent per
defective part. Endpoints, logins and anonymous access come from the `opcua` config section."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_runtime.service.commands import CommandError
from edge_runtime.service.plc_config import OpcUaConfig, OpcUaUser
from edge_runtime.service.plc_links import PlcLinkError
from edge_runtime.service.sparkplug import DeviceState
from edge_runtime.service.sparkplug_payloads import PartRecord

log = logging.getLogger(__name__)

_POLICIES = {
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "None": ua.SecurityPolicyType.NoSecurity,
}
_START_TIMEOUT_S = 60.0
_STATE_POLL_S = 0.5

# Variables of the Inspector object: browse name -> (type, initial value).
VARIABLES: dict[str, tuple[ua.VariantType, Any]] = {
    "PartId": (ua.VariantType.String, ""),
    "Verdict": (ua.VariantType.String, ""),
    "IsDefect": (ua.VariantType.Boolean, False),
    "Score": (ua.VariantType.Double, 0.0),
    "Threshold": (ua.VariantType.Double, 0.0),
    "Severity": (ua.VariantType.Int32, 0),
    "DefectRegions": (ua.VariantType.UInt32, 0),
    "LatencyMs": (ua.VariantType.Double, 0.0),
    "InspectedAt": (ua.VariantType.DateTime, datetime(1970, 1, 1, tzinfo=timezone.utc)),
    "ModelVersion": (ua.VariantType.String, ""),
    "State": (ua.VariantType.String, "starting"),
    "Inspected": (ua.VariantType.UInt64, 0),
    "Defects": (ua.VariantType.UInt64, 0),
    "Errors": (ua.VariantType.UInt64, 0),
    "DroppedFrames": (ua.VariantType.UInt64, 0),
}


class OpcUaStartError(PlcLinkError):
    """The server cannot start; the message names the key or address at fault."""


def read_secret(user: OpcUaUser) -> str:
    if user.password_credential is not None:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise OpcUaStartError(
                f"opcua.users: {user.username}'s password_credential needs $CREDENTIALS_DIRECTORY (systemd)"
            )
        path = Path(folder) / user.password_credential
    else:
        assert user.password_file is not None
        path = user.password_file
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise OpcUaStartError(f"opcua.users: password of {user.username} ({path}) cannot be read: {error}") from error
    if not lines or not lines[0]:
        raise OpcUaStartError(f"opcua.users: password file {path} of {user.username} is empty")
    return lines[0]


class Logins(UserManager):
    """Username/password from files, X.509 identity tokens against the listed certificates, anonymous if allowed."""

    def __init__(self, passwords: dict[str, str], certificates: list[bytes], anonymous: bool) -> None:
        self.passwords = passwords
        self.certificates = certificates
        self.anonymous = anonymous

    def get_user(  # noqa: ANN201
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ):
        if username is not None:
            expected = self.passwords.get(username)
            given = password if isinstance(password, str) else (password or b"").decode("utf-8", "replace")
            if expected is not None and hmac.compare_digest(expected.encode(), given.encode()):
                return User(role=UserRole.User, name=username)
            log.warning("OPC UA login refused for user %r", username)
            return None
        if certificate is not None and certificate in self.certificates:
            return User(role=UserRole.User, name="certificate")
        return User(role=UserRole.User, name="anonymous") if self.anonymous else None


def _certificate_der(path: Path, key: str) -> bytes:
    data = path.read_bytes()
    try:
        certificate = (
            x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        )
    except ValueError as error:
        raise OpcUaStartError(f"{key}: {path} is not an X.509 certificate: {error}") from error
    return certificate.public_bytes(Encoding.DER)


class OpcUaServer:
    """`start()` blocks until the server listens (or raises OpcUaStartError); `on_part()` is called in the frame
    thread and only schedules the update on the server's loop."""

    def __init__(
        self,
        config: OpcUaConfig,
        folder: Path,
        device_state: Callable[[], DeviceState],
        counters: Callable[[], dict[str, int]],
    ) -> None:
        self.config = config
        self.folder = folder
        self.device_state = device_state
        self.counters = counters
        self.trigger: Callable[[str], None] = lambda part_id: None
        self.endpoint = f"opc.tcp://{config.host}:{config.port}{config.path}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._nodes: dict[str, Any] = {}
        self._waiting: dict[str, asyncio.Future[PartRecord]] = {}
        self._events: Any = None

    # --- the service's side --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise OpcUaStartError(f"opcua: the server at {self.endpoint} did not start within {_START_TIMEOUT_S:g} s")
        if self._error is not None:
            error = self._error
            if isinstance(error, OpcUaStartError):
                raise error
            if isinstance(error, OSError):
                raise OpcUaStartError(f"opcua: cannot listen on {self.config.host}:{self.config.port}: {error}")
            raise OpcUaStartError(f"opcua: the server at {self.endpoint} cannot start: {error!r}")
        log.info("OPC UA server listening at %s", self.endpoint)

    def on_part(self, record: PartRecord, defects: list[dict[str, Any]]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._publish_part(record, defects)))

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the server's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start() when it happens before the server listens
            if not self._ready.is_set():
                self._error = error
                self._ready.set()
            else:
                log.exception("OPC UA server stopped with an error")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await self._build()
        async with server:
            self._ready.set()
            poll = asyncio.create_task(self._poll_state())
            await self._stopping.wait()
            poll.cancel()

    async def _build(self) -> Server:
        config = self.config
        passwords = {user.username: read_secret(user) for user in config.users}
        certificates = [
            _certificate_der(path, f"opcua.client_certificates.{i}")
            for i, path in enumerate(config.client_certificates)
        ]
        server = Server(user_manager=Logins(passwords, certificates, config.allow_anonymous))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(config.server_name)
        await server.set_application_uri(config.namespace_uri)
        server.set_security_policy([_POLICIES[name] for name in config.security_policies])
        tokens: list[type] = []
        if config.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if config.users:
            tokens.append(ua.UserNameIdentityToken)
        if certificates:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        await self._load_certificate(server)
        await self._address_space(server)
        return server

    async def _load_certificate(self, server: Server) -> None:
        config = self.config
        if config.certificate_file is None:
            # No certificate given: a self-signed one, made once and kept, so clients can trust it for good.
            self.folder.mkdir(parents=True, exist_ok=True)
            cert, key = self.folder / "server-cert.der", self.folder / "server-key.pem"
            await cert_gen.setup_self_signed_certificate(
                key,
                cert,
                config.namespace_uri,
                socket.gethostname(),
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": config.server_name},
            )
            names = (("certificate", cert), ("private key", key))
        else:
            assert config.private_key_file is not None
            cert, key = config.certificate_file, config.private_key_file
            names = (("opcua.certificate_file", cert), ("opcua.private_key_file", key))
        try:
            await server.load_certificate(str(cert))
        except Exception as error:
            raise OpcUaStartError(f"{names[0][0]}: {cert} cannot be loaded as a certificate: {error}") from error
        try:
            await server.load_private_key(str(key))
        except Exception as error:
            raise OpcUaStartError(f"{names[1][0]}: {key} cannot be loaded as a private key: {error}") from error

    async def _address_space(self, server: Server) -> None:
        index = await server.register_namespace(self.config.namespace_uri)
        inspector = await server.nodes.objects.add_object(index, "Inspector")
        for name, (kind, initial) in VARIABLES.items():
            self._nodes[name] = await inspector.add_variable(index, name, ua.Variant(initial, kind))
        in_argument = ua.Argument(Name="PartId", DataType=ua.NodeId(ua.ObjectIds.String), ValueRank=-1)
        in_argument.Description = ua.LocalizedText("1-128 letters, digits or . _ : @ -")
        out_arguments = [
            ua.Argument(Name="Verdict", DataType=ua.NodeId(ua.ObjectIds.String), ValueRank=-1),
            ua.Argument(Name="Score", DataType=ua.NodeId(ua.ObjectIds.Double), ValueRank=-1),
        ]
        await inspector.add_method(index, "Trigger", self._trigger, [in_argument], out_arguments)
        if self.config.defect_events:
            fields = [
                ("PartId", ua.VariantType.String),
                ("Score", ua.VariantType.Double),
                ("Threshold", ua.VariantType.Double),
                ("DefectRegions", ua.VariantType.UInt32),
            ]
            event_type = await server.create_custom_event_type(index, "DefectEvent", ua.ObjectIds.BaseEventType, fields)
            self._events = await server.get_event_generator(event_type, inspector)

    async def _trigger(self, parent: ua.NodeId, part_id: ua.Variant | str) -> list[ua.Variant] | ua.StatusCode:
        """Refusals are answered with a status code (asyncua reports an exception as BadUnexpectedError)."""
        value = part_id.Value if isinstance(part_id, ua.Variant) else part_id
        if not isinstance(value, str):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[value] = waiter
        try:
            self.trigger(value)
        except CommandError as error:
            self._waiting.pop(value, None)
            log.warning("OPC UA Trigger(%r) refused: %s", value, error)
            bad_id = "part_id" in str(error)
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument if bad_id else ua.StatusCodes.BadInvalidState)
        try:
            record = await asyncio.wait_for(waiter, self.config.trigger_timeout_s)
        except asyncio.TimeoutError:
            return ua.StatusCode(ua.StatusCodes.BadTimeout)
        finally:
            self._waiting.pop(value, None)
        return [ua.Variant(record.verdict, ua.VariantType.String), ua.Variant(record.score, ua.VariantType.Double)]

    async def _write(self, name: str, value: Any) -> None:
        kind = VARIABLES[name][0]
        await self._nodes[name].write_value(ua.Variant(value, kind))

    async def _publish_part(self, record: PartRecord, defects: list[dict[str, Any]]) -> None:
        """Every variable first, so a client reacting to the verdict (or the Trigger answer) reads a whole part."""
        values = {
            "Verdict": record.verdict,
            "IsDefect": record.verdict == "defect",
            "Score": record.score,
            "Threshold": record.threshold,
            "Severity": record.severity,
            "DefectRegions": record.regions,
            "LatencyMs": record.latency_ms,
            "InspectedAt": datetime.fromtimestamp(record.time_ms / 1000, timezone.utc),
            "ModelVersion": record.model_version,
            "Inspected": record.inspected,
            "Defects": record.defects,
            "Errors": record.errors,
            "DroppedFrames": record.dropped,
            "PartId": record.part_id,  # last: a client watching PartId sees the rest already updated
        }
        for name, value in values.items():
            await self._write(name, value)
        waiter = self._waiting.get(record.part_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(record)
        if self._events is not None and record.verdict == "defect":
            event = self._events.event
            event.Message = ua.LocalizedText(f"defect on part {record.part_id}: score {record.score:.4f}")
            event.Severity = 700
            event.PartId, event.Score = record.part_id, record.score
            event.Threshold, event.DefectRegions = record.threshold, ua.Variant(len(defects), ua.VariantType.UInt32)
            await self._events.trigger()

    async def _poll_state(self) -> None:
        """State and model version change without a part (pause, camera lost, model switch)."""
        while True:
            try:
                state = self.device_state()
                await self._write("State", state.state)
                if state.model_version is not None:
                    await self._write("ModelVersion", state.model_version)
                counters = self.counters()
                await self._write("Errors", counters["errors"])
                await self._write("DroppedFrames", counters["dropped"])
            except Exception:  # a failed poll is retried on the next turn
                log.exception("OPC UA state update failed")
            await asyncio.sleep(_STATE_POLL_S)
