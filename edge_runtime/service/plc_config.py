"""Config sections of the plant-floor protocols: `sparkplug` (Sparkplug B over MQTT) and `opcua` (OPC UA server).
Both are off by default; docs/PLC.md explains every key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_runtime.settings import StrictModel

# Sparkplug ids are single topic levels: no level separator, no wildcards.
_SPARKPLUG_ID = re.compile(r"^[^/+#\x00]{1,64}$")


def _sparkplug_id(value: str) -> str:
    if not _SPARKPLUG_ID.match(value):
        raise ValueError("must be 1-64 characters without / + # or NUL (it is one topic level)")
    return value


class SparkplugConfig(StrictModel):
    """An edge node on the broker of the `mqtt` section (same host, TLS and credentials, its own connection)."""

    enabled: bool = False
    group_id: str = Field("D3AD", description="Sparkplug group id (first topic level after spBv1.0)")
    edge_node_id: str | None = Field(None, description="edge node id; default: mqtt.device_id")
    device_id: str = Field("inspector", description="the device under the edge node that carries the results")
    inflight: int = Field(50, ge=1, le=1000, description="DDATA sent before the broker must confirm receipt")

    @field_validator("group_id", "edge_node_id", "device_id")
    @classmethod
    def _one_topic_level(cls, value: str | None) -> str | None:
        return None if value is None else _sparkplug_id(value)


SecurityPolicy = Literal["Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign", "None"]


class OpcUaUser(StrictModel):
    username: str = Field(min_length=1, max_length=64)
    password_file: Path | None = Field(None, description="file holding the password (first line)")
    password_credential: str | None = Field(None, description="systemd credential name ($CREDENTIALS_DIRECTORY)")

    @model_validator(mode="after")
    def _one_password(self) -> OpcUaUser:
        if (self.password_file is None) == (self.password_credential is None):
            raise ValueError("give exactly one of password_file or password_credential")
        return self


class OpcUaConfig(StrictModel):
    """An OPC UA server on the device with an Inspector object; encrypted and without anonymous access unless
    configured otherwise."""

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 opens it to the LAN")
    port: int = Field(4840, ge=1, le=65535)
    path: str = Field("/d3ad", pattern=r"^/[A-Za-z0-9._/-]*$", description="path of the endpoint URL")
    server_name: str = Field("D3AD inspector", min_length=1)
    namespace_uri: str = Field("urn:d3ad:inspector", min_length=1)
    security_policies: list[SecurityPolicy] = Field(
        default_factory=lambda: ["Basic256Sha256_SignAndEncrypt"], min_length=1
    )
    certificate_file: Path | None = Field(None, description="server certificate (DER or PEM); default: generated")
    private_key_file: Path | None = Field(None, description="its private key (PEM)")
    users: list[OpcUaUser] = Field(default_factory=list, description="username/password logins")
    client_certificates: list[Path] = Field(
        default_factory=list, description="client certificates that may log in with an X.509 identity token"
    )
    allow_anonymous: bool = False
    trigger_timeout_s: float = Field(10.0, gt=0.0, description="Trigger() fails when no verdict comes this soon")
    defect_events: bool = Field(True, description="one OPC UA event per defective part")

    @model_validator(mode="after")
    def _coherent(self) -> OpcUaConfig:
        if (self.certificate_file is None) != (self.private_key_file is None):
            raise ValueError("certificate_file and private_key_file go together")
        if self.enabled and not (self.users or self.client_certificates or self.allow_anonymous):
            raise ValueError("nobody could log in: give users or client_certificates (or allow_anonymous: true)")
        names = [user.username for user in self.users]
        if len(names) != len(set(names)):
            raise ValueError("users: a username appears twice")
        if len(set(self.security_policies)) != len(self.security_policies):
            raise ValueError("security_policies: a policy appears twice")
        return self

    def files(self) -> list[tuple[str, Path | None]]:
        """(key path, file) of every file this section names, for the start-up check."""
        named = [("opcua.certificate_file", self.certificate_file), ("opcua.private_key_file", self.private_key_file)]
        named += [(f"opcua.users.{i}.password_file", user.password_file) for i, user in enumerate(self.users)]
        named += [(f"opcua.client_certificates.{i}", path) for i, path in enumerate(self.client_certificates)]
        return named
