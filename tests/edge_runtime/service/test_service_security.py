"""TLS with a client certificate and a username whose password comes from a systemd credential, against a
real mosquitto that requires all three; and a signed archive installed into the state dir."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool = False) -> x509.Certificate:  # noqa: ANN001
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    files = {}
    for name, cert, key in [
        ("ca", _certificate("test-ca", ca_key, "test-ca", ca_key, ca=True), ca_key),
        *[(n, None, ec.generate_private_key(ec.SECP256R1())) for n in ("server", "client")],
    ]:
        cert = cert or _certificate(name, key, "test-ca", ca_key)
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = folder / f"{name}.key"
        files[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def test_tls_client_certificate_and_credential_password(tmp_path, new_broker, make_config, run_service, monkeypatch):
    pki = make_pki(tmp_path)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "inspector", "s3cret"], check=True)
    tls = [f"cafile {pki['ca']}", f"certfile {pki['server']}", f"keyfile {pki['server_key']}"]
    broker = new_broker(
        allow_anonymous=False, extra_config=[f"password_file {passwords}", *tls, "require_certificate true"]
    )
    broker.start()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    received: list[bytes] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-listener")
    listener.tls_set(ca_certs=str(pki["ca"]), certfile=str(pki["client"]), keyfile=str(pki["client_key"]))
    listener.username_pw_set("inspector", "s3cret")
    listener.on_message = lambda client, userdata, message: received.append(message.payload)
    listener.connect("127.0.0.1", broker.port)
    listener.subscribe("test/cam1/result", 1)
    listener.loop_start()
    try:
        tls = {"ca_file": str(pki["ca"]), "cert_file": str(pki["client"]), "key_file": str(pki["client_key"])}
        mqtt_config = {"tls": tls, "username": "inspector", "password_credential": "mqtt-password"}
        service = run_service(make_config(broker.port, mqtt=mqtt_config))
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert received, "no result over TLS"
        assert service.publisher.connected.is_set()
    finally:
        listener.loop_stop()
        listener.disconnect()
