"""Sparkplug B edge node against a real mosquitto, read by a host-side decoder that does not use the product's
schema: it parses the protobuf wire format itself with the field numbers of the Sparkplug B specification."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge_runtime.service.service_config import ConfigError, parse_config

REPO_ROOT = Path(__file__).resolve().parents[3]

# --- the host side: the specification's field numbers and datatype codes, written here on their own -----------

PAYLOAD_FIELDS = {1: "timestamp", 2: "metrics", 3: "seq", 4: "uuid", 5: "body"}
METRIC_FIELDS = {
    1: "name",
    2: "alias",
    3: "timestamp",
    4: "datatype",
    5: "is_historical",
    6: "is_transient",
    7: "is_null",
    10: "int_value",
    11: "long_value",
    12: "float_value",
    13: "double_value",
    14: "boolean_value",
    15: "string_value",
}
TYPES = {"Int32": 3, "Int64": 4, "UInt32": 7, "UInt64": 8, "Double": 10, "Boolean": 11, "String": 12, "DateTime": 13}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def wire_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, raw value) of one protobuf message."""
    fields, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise AssertionError(f"wire type {wire} of field {number} is not used by Sparkplug B")
        fields.append((number, wire, value))
    return fields


def decode_metric(data: bytes) -> dict:
    metric: dict = {"is_historical": False, "is_null": False}
    for number, wire, raw in wire_fields(data):
        name = METRIC_FIELDS.get(number)
        assert name is not None, f"metric field {number} is not in the specification's Metric"
        if name in ("name", "string_value"):
            metric[name] = raw.decode("utf-8")
        elif name == "double_value":
            assert wire == 1
            metric[name] = struct.unpack("<d", raw)[0]
        elif name == "float_value":
            metric[name] = struct.unpack("<f", raw)[0]
        elif name in ("is_historical", "is_transient", "is_null", "boolean_value"):
            metric[name] = bool(raw)
        else:
            assert wire == 0, f"{name} must be a varint"
            metric[name] = raw
    values = [key for key in metric if key.endswith("_value")]
    assert len(values) <= 1, f"one value at most (oneof): {values}"
    if values:
        value = metric[values[0]]
        if metric["datatype"] == TYPES["Int32"] and value >= 2**31:
            value -= 2**32
        metric["value"] = value
    else:
        metric["value"] = None
        assert metric["is_null"], f"metric {metric.get('name')} has neither a value nor is_null"
    return metric


def decode_payload(data: bytes) -> dict:
    payload: dict = {"metrics": []}
    for number, _, raw in wire_fields(data):
        name = PAYLOAD_FIELDS.get(number)
        assert name is not None, f"payload field {number} is not in the specification's Payload"
        payload["metrics"].append(decode_metric(raw)) if name == "metrics" else payload.__setitem__(name, raw)
    payload["values"] = {m["name"]: m["value"] for m in payload["metrics"]}
    payload["types"] = {m["name"]: m["datatype"] for m in payload["metrics"]}
    return payload


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _length_delimited(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _encode_varint(len(data)) + data


def command(name: str, value: bool | str) -> bytes:
    """An NCMD/DCMD payload as a host would write it: one metric, Boolean or String."""
    metric = _length_delimited(1, name.encode())
    if isinstance(value, bool):
        metric += _key(4, 0) + _encode_varint(TYPES["Boolean"]) + _key(14, 0) + _encode_varint(int(value))
    else:
        metric += _key(4, 0) + _encode_varint(TYPES["String"]) + _length_delimited(15, value.encode())
    return _key(1, 0) + _encode_varint(int(time.time() * 1000)) + _length_delimited(2, metric)


# --- helpers over a listener subscribed to spBv1.0/# --------------------------------------------------------

GROUP, NODE, DEVICE = "Plant1", "cam1", "inspector"
NODE_TOPIC = f"spBv1.0/{GROUP}/{{}}/{NODE}"
DEVICE_TOPIC = f"spBv1.0/{GROUP}/{{}}/{NODE}/{DEVICE}"


def sparkplug_messages(listener) -> list[tuple[str, dict]]:  # noqa: ANN001
    """(message type, decoded payload) of the node's messages, in arrival order."""
    out = []
    for topic, payload in listener.raw(f"spBv1.0/{GROUP}/"):
        parts = topic.split("/")
        if parts[3] == NODE and not topic.endswith("/confirm"):
            out.append((parts[2], decode_payload(payload)))
    return out


def of_type(listener, kind: str) -> list[dict]:  # noqa: ANN001
    return [payload for message_kind, payload in sparkplug_messages(listener) if message_kind == kind]


def part_data(listener) -> list[dict]:  # noqa: ANN001
    return [p for p in of_type(listener, "DDATA") if "Inspection/Part ID" in p["values"]]


def assert_sequence_rules(messages: list[tuple[str, dict]]) -> None:
    """NBIRTH starts at seq 0; every later message of the node (not NDEATH) counts on by one, modulo 256."""
    expected = None
    for kind, payload in messages:
        if kind in ("NCMD", "DCMD"):  # the host's, not the node's
            continue
        if kind == "NDEATH":
            assert "seq" not in payload
            expected = None
            continue
        if kind == "NBIRTH":
            assert payload["seq"] == 0
        elif expected is not None:
            assert payload["seq"] == expected, f"{kind} has seq {payload['seq']}, expected {expected}"
        expected = (payload["seq"] + 1) % 256


def sparkplug_config(make_config, port: int, **overrides) -> dict:  # noqa: ANN001
    sparkplug = {"enabled": True, "group_id": GROUP, "edge_node_id": NODE, "device_id": DEVICE}
    return make_config(port, sparkplug=sparkplug, **overrides)


# --- tests ---------------------------------------------------------------------------------------------------


def test_host_decoder_reads_the_specification_field_numbers():
    """The decoder above is independent of sparkplug_b.proto; this pins the numbers it relies on to the
    specification's Payload and Metric definitions, and checks the product's schema against the same table."""
    from edge_runtime.service.sparkplug_b_pb2 import Payload

    assert {f.number: f.name for f in Payload.DESCRIPTOR.fields} == PAYLOAD_FIELDS
    metric_fields = {f.number: f.name for f in Payload.Metric.DESCRIPTOR.fields}
    assert {n: metric_fields[n] for n in METRIC_FIELDS} == METRIC_FIELDS
    assert metric_fields[16] == "bytes_value" and metric_fields[8] == "metadata" and metric_fields[9] == "properties"


def test_births_ddata_per_part_rebirth_and_commands(broker, listen, make_config, run_service):
    host = listen(broker.port, "spBv1.0")
    results = listen(broker.port, "test", client_id="json")
    service = run_service(sparkplug_config(make_config, broker.port))
    host.wait_for(lambda: len(part_data(host)) >= 3, 30, "three DDATA with parts")

    nbirth, dbirth = of_type(host, "NBIRTH")[0], of_type(host, "DBIRTH")[0]
    assert nbirth["types"] == {"bdSeq": TYPES["Int64"], "Node Control/Rebirth": TYPES["Boolean"]}
    assert nbirth["values"]["Node Control/Rebirth"] is False and 0 <= nbirth["values"]["bdSeq"] <= 255
    expected_types = {
        "Inspection/Part ID": "String",
        "Inspection/Verdict": "String",
        "Inspection/Defect": "Boolean",
        "Inspection/Score": "Double",
        "Inspection/Threshold": "Double",
        "Inspection/Severity": "Int32",
        "Inspection/Defect Regions": "UInt32",
        "Inspection/Latency ms": "Double",
        "Inspection/Time": "DateTime",
        "Model/Version": "String",
        "Status/State": "String",
        "Counters/Inspected": "UInt64",
        "Counters/Defects": "UInt64",
        "Counters/Errors": "UInt64",
        "Counters/Dropped Frames": "UInt64",
        "Command/Trigger": "String",
        "Command/Last Error": "String",
    }
    assert dbirth["types"] == {name: TYPES[kind] for name, kind in expected_types.items()}
    assert dbirth["values"]["Model/Version"] == "1.0.0" and dbirth["values"]["Status/State"] in ("starting", "running")

    # Every DDATA part is the part published as JSON on `result`, value for value.
    host.wait_for(lambda: len(results.payloads("/result")) >= 3, 10, "JSON results")
    by_id = {r["part_id"]: r for r in results.payloads("/result")}
    parts = part_data(host)
    matched = [p for p in parts if p["values"]["Inspection/Part ID"] in by_id]
    assert len(matched) >= 3
    for part in matched:
        values, result = part["values"], by_id[part["values"]["Inspection/Part ID"]]
        assert values["Inspection/Verdict"] == result["verdict"]
        assert values["Inspection/Defect"] == (result["verdict"] == "defect")
        assert values["Inspection/Score"] == pytest.approx(result["score"], abs=1e-6)
        assert values["Inspection/Threshold"] == pytest.approx(result["threshold"], abs=1e-6)
        assert values["Inspection/Severity"] == result["severity_bin"]
        assert values["Inspection/Defect Regions"] == len(result["defects"])
        assert values["Model/Version"] == result["model_version"]
        assert not any(m["is_historical"] for m in part["metrics"]), "live parts are not historical"
    counters = [p["values"]["Counters/Inspected"] for p in parts]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)

    # Rebirth on request: NBIRTH (seq 0, same bdSeq: same MQTT session) and DBIRTH again, then DDATA goes on.
    host.publish(NODE_TOPIC.format("NCMD"), command("Node Control/Rebirth", True))
    host.wait_for(lambda: len(of_type(host, "NBIRTH")) == 2 and len(of_type(host, "DBIRTH")) == 2, 10, "rebirth")
    assert of_type(host, "NBIRTH")[1]["values"]["bdSeq"] == nbirth["values"]["bdSeq"]
    reborn = len(part_data(host))
    host.wait_for(lambda: len(part_data(host)) >= reborn + 2, 15, "DDATA after the rebirth")

    # A DCMD trigger in continuous mode is refused, and the reason shows up as a metric.
    host.publish(DEVICE_TOPIC.format("DCMD"), command("Command/Trigger", "A-1"))
    refusals = lambda: [p for p in of_type(host, "DDATA") if p["values"].get("Command/Last Error")]  # noqa: E731
    host.wait_for(lambda: refusals(), 10, "the refusal")
    assert "triggered" in refusals()[0]["values"]["Command/Last Error"]
    host.publish(DEVICE_TOPIC.format("DCMD"), command("Model/Version", "9"))
    host.wait_for(lambda: len(refusals()) >= 2, 10, "the second refusal")
    assert "not a writable metric" in refusals()[1]["values"]["Command/Last Error"]

    service.stop()
    host.wait_for(lambda: of_type(host, "NDEATH"), 15, "the NDEATH of a clean stop")
    assert of_type(host, "NDEATH")[0]["values"] == {"bdSeq": nbirth["values"]["bdSeq"]}
    assert_sequence_rules(sparkplug_messages(host))


def test_dcmd_trigger_inspects_the_next_frame_under_its_part_id(broker, listen, make_config, run_service):
    host = listen(broker.port, "spBv1.0")
    run_service(sparkplug_config(make_config, broker.port, mode={"kind": "triggered"}))
    host.wait_for(lambda: of_type(host, "DBIRTH"), 20, "DBIRTH")
    host.publish(DEVICE_TOPIC.format("DCMD"), command("Command/Trigger", "A-1042"))
    host.wait_for(lambda: part_data(host), 20, "the triggered part")
    values = part_data(host)[0]["values"]
    assert values["Inspection/Part ID"] == "A-1042" and values["Inspection/Verdict"] in ("good", "defect")
    assert values["Counters/Inspected"] == 1
    assert_sequence_rules(sparkplug_messages(host))


def test_broker_outage_rebirth_with_new_bdseq_and_historical_parts(new_broker, listen, make_config, run_service):
    # QoS 0 DDATA would not wait for an offline subscriber otherwise; the host must see everything.
    broker = new_broker(persistent=True, extra_config=["queue_qos0_messages true"])
    broker.start()
    host = listen(broker.port, "spBv1.0", client_id="host", persistent=True)
    service = run_service(sparkplug_config(make_config, broker.port, mode={"max_fps": 8}))
    host.wait_for(lambda: len(part_data(host)) >= 2, 30, "parts before the outage")
    first_bd_seq = of_type(host, "NBIRTH")[0]["values"]["bdSeq"]

    broker.stop()
    time.sleep(3.0)
    node = service.plc_links.sparkplug
    assert node is not None and node.outbox.depth() > 0, "parts made during the outage wait in the outbox"
    broker.start()
    host.wait_for(lambda: len(of_type(host, "NBIRTH")) >= 2, 30, "the rebirth after reconnecting")
    second_bd_seq = of_type(host, "NBIRTH")[1]["values"]["bdSeq"]
    assert second_bd_seq == (first_bd_seq + 1) % 256, "a new session, a new bdSeq"
    # The broker published the first session's will when it went down: the host knows that session died.
    deaths = lambda: [d["values"]["bdSeq"] for d in of_type(host, "NDEATH")]  # noqa: E731
    host.wait_for(lambda: first_bd_seq in deaths(), 10, "the first session's NDEATH (its will)")
    host.wait_for(lambda: node.outbox.depth() == 0, 20, "the Sparkplug outbox drained")
    service.stop()
    # Only the second session's NDEATH says the stop is complete (parts drained, `produced` final). Waiting for
    # any NDEATH would return at once with the will above and compare the parts while the service still runs.
    host.wait_for(lambda: second_bd_seq in deaths(), 15, "the NDEATH of the clean stop")

    produced = {service.part_id(n) for n in range(1, service.produced + 1)}
    seen = {p["values"]["Inspection/Part ID"] for p in part_data(host)}
    assert seen == produced, f"missing in DDATA: {sorted(produced - seen)[:5]}"
    historical = [p for p in part_data(host) if all(m["is_historical"] for m in p["metrics"])]
    assert historical, "parts judged before the rebirth come as historical values"
    for part in historical:
        assert all(m["timestamp"] == part["values"]["Inspection/Time"] for m in part["metrics"])
    assert_sequence_rules(sparkplug_messages(host))


class RecordingClient:
    """Stands in for the node's paho client: records what would go out, in order, and always succeeds."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # message types, and UNSUBSCRIBE for confirmation requests
        self.mids = iter(range(1, 10_000))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False):  # noqa: ANN201
        import paho.mqtt.client as mqtt

        self.sent.append(topic.split("/")[2])
        info = mqtt.MQTTMessageInfo(next(self.mids))
        info.rc = mqtt.MQTT_ERR_SUCCESS
        return info

    def unsubscribe(self, topic: str) -> tuple[int, int]:
        self.sent.append("UNSUBSCRIBE")
        return 0, next(self.mids)

    def will_set(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        pass


def test_no_ddata_goes_out_on_a_new_connection_before_its_births(tmp_path):
    """The node thread may still be sending rows of a connection when paho has already dropped it and sent the
    next CONNECT; nothing of that turn may go out on the new connection before its NBIRTH and DBIRTH."""
    from edge_runtime.service.plc_config import SparkplugConfig
    from edge_runtime.service.service_config import MqttConfig, OutboxConfig
    from edge_runtime.service.sparkplug import DeviceState, SparkplugNode
    from edge_runtime.service.sparkplug_payloads import PartRecord

    config = SparkplugConfig(enabled=True, group_id=GROUP, edge_node_id=NODE, device_id=DEVICE)
    state = lambda: DeviceState("running", "1.0.0")  # noqa: E731
    node = SparkplugNode(config, MqttConfig(), NODE, tmp_path, OutboxConfig(), state, lambda part_id: None)
    client = RecordingClient()
    node.client = client  # type: ignore[assignment]

    def connect() -> int:
        """What paho does for a connection: the pre-connect callback, then CONNACK; returns its number."""
        node._on_pre_connect(client, None)  # type: ignore[arg-type]
        node.connected.set()
        return node._session

    def part(number: int) -> PartRecord:
        return PartRecord(int(time.time() * 1000), f"p{number}", "good", 0.1, 0.5, 0, 0, 1.0, "1.0.0", number, 0, 0, 0)

    node._birth(connect())
    node.on_part(part(1))
    node._store_parts()
    node._send_rows()
    assert client.sent == ["NBIRTH", "DBIRTH", "DDATA", "UNSUBSCRIBE"]

    client.sent.clear()
    second = connect()  # the connection dropped and paho connected again; the node has not handled it yet
    node.on_part(part(2))
    node._store_parts()
    node._send_rows()  # the rest of a turn that began on the first connection
    node._refuse("a refusal of a command that came on the first connection")
    assert client.sent == [], "DDATA (or a confirmation request) before the new connection's births"

    node._forget_connection()
    node._birth(second)
    node._send_rows()
    assert client.sent == ["NBIRTH", "DBIRTH", "DDATA", "DDATA", "UNSUBSCRIBE"], "both rows, after the births"
    node.outbox.close()


def run_cli(config_path: Path, log: Path) -> subprocess.Popen:
    with log.open("a") as stream:
        command = [sys.executable, "-m", "edge_runtime", "run", "--config", str(config_path)]
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=stream, stderr=stream)


def parts_since_last_birth(listener) -> int:  # noqa: ANN001
    messages = sparkplug_messages(listener)
    births = [i for i, (kind, _) in enumerate(messages) if kind == "NBIRTH"]
    if not births:
        return 0
    return sum(1 for kind, p in messages[births[-1] :] if kind == "DDATA" and "Inspection/Part ID" in p["values"])


def test_ndeath_on_kill_9_carries_the_bdseq_of_the_birth(broker, listen, make_config, tmp_path):
    host = listen(broker.port, "spBv1.0")
    raw = sparkplug_config(make_config, broker.port)
    config_path = tmp_path / "site.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "service.log"
    births = []
    for attempt in range(2):
        process = run_cli(config_path, log)
        try:
            host.wait_for(lambda n=attempt + 1: len(of_type(host, "NBIRTH")) == n, 90, "NBIRTH of the process")
            host.wait_for(lambda: parts_since_last_birth(host) >= 2, 30, "DDATA from the process")
            births.append(of_type(host, "NBIRTH")[-1]["values"]["bdSeq"])
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        host.wait_for(lambda n=attempt + 1: len(of_type(host, "NDEATH")) == n, 15, "the NDEATH will")
        assert of_type(host, "NDEATH")[-1]["values"] == {"bdSeq": births[-1]}, log.read_text()[-2000:]
    assert births[1] == (births[0] + 1) % 256, "the restarted process does not reuse the dead session's bdSeq"
    assert (Path(raw["state_dir"]) / "sparkplug-bdseq").read_text().strip() == str(births[1])
    assert_sequence_rules(sparkplug_messages(host))


def test_sparkplug_config_is_strict_and_off_by_default():
    base = {"bundle": {"slot": "slot-a"}}
    assert parse_config(base, "site.yaml").sparkplug.enabled is False
    with pytest.raises(ConfigError) as error:
        parse_config({**base, "sparkplug": {"enabled": True, "group_id": "a/b", "edge": 1}}, "site.yaml")
    assert any(p.startswith("sparkplug.group_id: must be 1-64 characters") for p in error.value.problems)
    assert any(p.startswith("sparkplug.edge: Extra inputs") for p in error.value.problems)
