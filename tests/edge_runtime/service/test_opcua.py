"""The OPC UA server of a running service, used by a real asyncua client: encrypted login with a password,
variables, Trigger(PartId), defect events, and the refusals (wrong password, no encryption, anonymous)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_runtime.local_ports import free_port
from edge_runtime.service.plc_links import PlcLinkError

NAMESPACE = "urn:d3ad:inspector"
PASSWORD = "line-1 secret"


@pytest.fixture
def client_certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "client-cert.der", tmp_path / "client-key.pem"
    uses = [ExtendedKeyUsageOID.CLIENT_AUTH]
    asyncio.run(
        cert_gen.setup_self_signed_certificate(key, cert, "urn:test:plc", "localhost", uses, {"commonName": "plc"})
    )
    return cert, key


def opcua_config(make_config, broker_port: int, tmp_path: Path, **overrides) -> tuple[dict, str]:  # noqa: ANN001
    (tmp_path / "opcua-password").write_text(PASSWORD + "\n")
    port = free_port()
    opcua = {
        "enabled": True,
        "port": port,
        "users": [{"username": "plc", "password_file": str(tmp_path / "opcua-password")}],
        **overrides,
    }
    raw = make_config(broker_port, mode={"kind": "triggered"}, opcua=opcua)
    return raw, f"opc.tcp://127.0.0.1:{port}/d3ad"


def client_for(url: str, certificate: tuple[Path, Path] | None, user: str | None, password: str | None) -> Client:
    client = Client(url, timeout=10)
    client.application_uri = "urn:test:plc"
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


async def secure(client: Client, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")


async def inspector_nodes(client: Client) -> dict:
    index = await client.get_namespace_index(NAMESPACE)
    inspector = await client.nodes.objects.get_child(f"{index}:Inspector")
    names = ["PartId", "Verdict", "IsDefect", "Score", "Threshold", "Inspected", "Defects", "State", "ModelVersion"]
    nodes = {name: await inspector.get_child(f"{index}:{name}") for name in names}
    return {"inspector": inspector, "index": index, **nodes}


def test_encrypted_password_login_reads_variables_and_trigger_returns_the_verdict(
    broker, make_config, run_service, tmp_path, client_certificate
):
    raw, url = opcua_config(make_config, broker.port, tmp_path)
    service = run_service(raw)
    events: list = []

    class Handler:
        def event_notification(self, event) -> None:  # noqa: ANN001
            events.append(event)

    async def session() -> dict:
        client = client_for(url, client_certificate, "plc", PASSWORD)
        await secure(client, client_certificate)
        async with client:
            nodes = await inspector_nodes(client)
            assert await nodes["ModelVersion"].read_value() == "1.0.0"
            types = {name: await nodes[name].read_data_type_as_variant_type() for name in ("Score", "Inspected")}
            assert types == {"Score": ua.VariantType.Double, "Inspected": ua.VariantType.UInt64}
            subscription = await client.create_subscription(50, Handler())
            base_event = client.get_node(ua.ObjectIds.BaseEventType)
            defect_event = await base_event.get_child(f"{nodes['index']}:DefectEvent")
            await subscription.subscribe_events(nodes["inspector"], defect_event)
            answers = []
            for part_id in ("A-1", "A-2", "A-3"):
                verdict, score = await nodes["inspector"].call_method(f"{nodes['index']}:Trigger", part_id)
                answers.append((part_id, verdict, score))
            read = {name: await nodes[name].read_value() for name in ("PartId", "Verdict", "Score", "Inspected")}
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await nodes["inspector"].call_method(f"{nodes['index']}:Trigger", "bad id!")
            await asyncio.sleep(0.5)  # event notifications arrive with the next publish cycle
            state = await nodes["State"].read_value()
            return {"answers": answers, "read": read, "refused": refused.value, "state": state}

    outcome = asyncio.run(session())
    threshold = service.inspector.calibration.image_threshold
    for part_id, verdict, score in outcome["answers"]:
        assert verdict in ("good", "defect") and (verdict == "defect") == (score >= threshold - 1e-6), part_id
    last_id, last_verdict, last_score = outcome["answers"][-1]
    assert outcome["read"] == {"PartId": last_id, "Verdict": last_verdict, "Score": last_score, "Inspected": 3}
    assert outcome["refused"].code == ua.StatusCodes.BadInvalidArgument
    assert outcome["state"] == "running"
    defects = [a for a in outcome["answers"] if a[1] == "defect"]
    assert len(events) == len(defects)
    assert [e.PartId for e in events] == [a[0] for a in defects]


def test_wrong_password_no_encryption_and_anonymous_are_refused(
    broker, make_config, run_service, tmp_path, client_certificate
):
    raw, url = opcua_config(make_config, broker.port, tmp_path)
    run_service(raw)

    async def attempt(user: str | None, password: str | None, encrypted: bool) -> str:
        client = client_for(url, client_certificate, user, password)
        if encrypted:
            await secure(client, client_certificate)
        try:
            async with client:
                await client.nodes.objects.read_browse_name()
        except Exception as error:  # the refusal, whatever form the client gives it
            return f"{type(error).__name__}: {error}"
        return "connected"

    assert asyncio.run(attempt("plc", PASSWORD, True)) == "connected"
    wrong = asyncio.run(attempt("plc", "guess", True))
    assert "BadUserAccessDenied" in wrong, wrong
    plain = asyncio.run(attempt("plc", PASSWORD, False))
    assert plain != "connected", "only Basic256Sha256 SignAndEncrypt is offered"
    anonymous = asyncio.run(attempt(None, None, True))
    assert "BadIdentityTokenRejected" in anonymous or "BadUserAccessDenied" in anonymous, anonymous


def test_a_port_that_is_taken_stops_the_service_at_start(make_config, shared_inspector, broker, tmp_path):
    from edge_runtime.service.service import Service
    from edge_runtime.service.service_config import parse_config

    raw, _ = opcua_config(make_config, broker.port, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", raw["opcua"]["port"]))
        taken.listen()
        service = Service(parse_config(raw, "site.yaml"), inspector=shared_inspector)
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                service.run()
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                outcome.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
    assert outcome and isinstance(outcome[0], PlcLinkError)
    assert f"127.0.0.1:{raw['opcua']['port']}" in str(outcome[0])
    assert not service.started.is_set(), "the camera never ran"


def test_opcua_config_names_the_problem():
    from edge_runtime.service.service_config import ConfigError, parse_config

    base = {"bundle": {"slot": "slot-a"}}
    assert parse_config(base, "site.yaml").opcua.enabled is False
    with pytest.raises(ConfigError) as error:
        parse_config({**base, "opcua": {"enabled": True, "security_policies": ["Basic128"]}}, "site.yaml")
    problems = error.value.problems
    assert any(p.startswith("opcua.security_policies.0:") for p in problems), problems
    with pytest.raises(ConfigError, match="nobody could log in"):
        parse_config({**base, "opcua": {"enabled": True}}, "site.yaml")
