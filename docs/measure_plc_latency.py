"""Frame -> value latency of the Sparkplug DDATA and the OPC UA variables, seen by real clients on this machine."""

import asyncio
import sys
import time
from datetime import timezone
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from asyncua import Client

from demo_line.local_line import LocalBroker, ServiceProcess
from edge_runtime.local_ports import free_port

SLOT, WORK, SECONDS = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 40
WORK.mkdir(parents=True, exist_ok=True)


broker = LocalBroker(WORK / "broker")
broker.start()
MQTT_PORT, UA_PORT = broker.port, free_port()
(WORK / "pw").write_text("secret\n")
config = {
    "bundle": {"slot": str(SLOT)},
    "state_dir": str(WORK / "state"),
    "camera": {"pipeline": "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1"},
    "mode": {"kind": "continuous", "max_fps": 5},
    "mqtt": {"host": "127.0.0.1", "port": MQTT_PORT, "device_id": "bench"},
    "heatmaps": {"publish": "off"},
    "openvino": {"threads": 2},
    "sparkplug": {"enabled": True, "group_id": "Bench", "edge_node_id": "bench", "device_id": "inspector"},
    "opcua": {"enabled": True, "port": UA_PORT, "users": [{"username": "plc", "password_file": str(WORK / "pw")}]},
}
(WORK / "bench.yaml").write_text(yaml.safe_dump(config))
svc = ServiceProcess(WORK / "bench.yaml", WORK / "service.log")
svc.start()
sys.path.insert(0, str(Path.cwd() / "tests/edge_runtime/service"))
from test_sparkplug import decode_payload  # noqa: E402 - the tests' independent Sparkplug decoder

spb, ua_lat = [], []


def on_message(c, u, m):
    received = time.time() * 1000
    values = decode_payload(m.payload)["values"]
    if "Inspection/Time" in values:  # the part was judged at Inspection/Time, Latency ms after its frame
        spb.append(received - (values["Inspection/Time"] - values["Inspection/Latency ms"]))


sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
sub.on_message = on_message
sub.on_connect = lambda c, *a: c.subscribe("spBv1.0/Bench/DDATA/#")
sub.connect("127.0.0.1", MQTT_PORT)
sub.loop_start()


async def opcua():
    from asyncua.crypto import cert_gen
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = WORK / "c.der", WORK / "c.pem"
    await cert_gen.setup_self_signed_certificate(
        key, cert, "urn:bench", "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "bench"}
    )
    client = Client(f"opc.tcp://127.0.0.1:{UA_PORT}/d3ad", timeout=10)
    client.application_uri = "urn:bench"
    client.set_user("plc")
    client.set_password("secret")
    for _ in range(120):
        try:
            await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
            await client.connect()
            break
        except Exception:
            await asyncio.sleep(1)
    index = await client.get_namespace_index("urn:d3ad:inspector")
    inspector = await client.nodes.objects.get_child(f"{index}:Inspector")
    at, lat, part = [await inspector.get_child(f"{index}:{n}") for n in ("InspectedAt", "LatencyMs", "PartId")]

    class Handler:
        def datachange_notification(self, node, val, data):
            received = time.time() * 1000
            pending.append(received)

    pending = []
    subscription = await client.create_subscription(10, Handler())  # 10 ms publishing interval
    await subscription.subscribe_data_change(part, sampling_interval=0)
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        await asyncio.sleep(0.02)
        while pending:
            received = pending.pop(0)
            inspected, latency = await at.read_value(), await lat.read_value()
            inspected = inspected if inspected.tzinfo else inspected.replace(tzinfo=timezone.utc)
            ua_lat.append(received - (inspected.timestamp() * 1000 - latency))
    await client.disconnect()


asyncio.run(opcua())
print(f"done: {len(spb)} DDATA, {len(ua_lat)} OPC UA", file=sys.stderr, flush=True)
svc.stop()
sub.loop_stop()
broker.stop()
for name, values in (("Sparkplug DDATA", spb[5:]), ("OPC UA PartId", ua_lat[5:])):
    v = np.array(values)
    print(
        f"{name}: n={v.size} p50={np.percentile(v, 50):.1f} ms p90={np.percentile(v, 90):.1f} ms max={v.max():.1f} ms"
    )
