"""Pushing updates to a running device: the host tool against a real broker and a real service."""

from __future__ import annotations

import time

import pytest

from export.__main__ import main
from export.push import Broker, Device, PushError, bundle_version, install_request, send_command


@pytest.fixture
def device(broker, bundle, keys, tmp_path, service_threads):
    """A running service with the signed 1.0.0 bundle, answering commands on test/cam1."""
    from edge_runtime.service.service_config import parse_config

    raw = {
        "bundle": {"archive": str(bundle[0]), "trusted_keys": [str(keys[1])]},
        "state_dir": str(tmp_path / "state"),
        "camera": {"pipeline": "videotestsrc is-live=true ! video/x-raw,width=96,height=96,framerate=5/1"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "test", "device_id": "cam1"},
        "heatmaps": {"publish": "off"},
        "openvino": {"threads": 1},
        "updates": {"local_folder": str(tmp_path)},  # the tests push bundles from their own folder
        "metrics": {"port": 0},
    }
    return service_threads.start(parse_config(raw, "push test config"))


def test_push_installs_reports_stages_and_rolls_back(device, broker, slot, keys, repack, tmp_path, capsys):
    v2 = repack(slot, tmp_path / "v2.tar", keys[0], "2.0.0")
    assert bundle_version(v2) == "2.0.0"
    target, device_name = Broker("127.0.0.1", broker.port), Device("cam1", prefix="test")
    seen: list[str] = []
    outcome = send_command(target, device_name, "install", install_request(v2, str(v2)), 120, seen.append)
    assert (outcome.ok, outcome.outcome, outcome.version) == (True, "installed", "2.0.0")
    assert seen[0] == "downloading" and seen[-1] == "switching" and "health_check" in seen

    again = send_command(target, device_name, "install", install_request(v2, str(v2)), 30)
    assert (again.ok, again.outcome) == (True, "already_active")

    code = main(["push", "--rollback", "--broker", f"127.0.0.1:{broker.port}", "--prefix", "test", "--device", "cam1"])
    assert code == 0 and "rolled_back 1.0.0" in capsys.readouterr().out
    assert device.updater.state.active.version == "1.0.0"


def test_push_reports_a_refusal_with_its_reason_and_exit_code(device, broker, bundle, tmp_path, capsys):
    renamed = tmp_path / "v1-again.tar"
    data = bundle[0].read_bytes()
    renamed.write_bytes(data[: len(data) // 2])  # cut off in transit
    args = ["push", "--bundle", str(renamed), "--url", str(renamed), "--broker", f"127.0.0.1:{broker.port}"]
    code = main([*args, "--prefix", "test", "--device", "cam1"])
    captured = capsys.readouterr()
    # Where the cut falls decides what is found missing first: the archive itself, or files its manifest lists.
    reasons = ("not_a_bundle", "missing_file")
    assert code == 1 and "refused" in captured.err and any(r in captured.err for r in reasons), captured


def test_push_names_an_unreachable_broker_and_a_bad_bundle(tmp_path):
    with pytest.raises(PushError, match="cannot reach the broker"):
        send_command(Broker("127.0.0.1", 1), Device("cam1"), "rollback", {}, 5)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(PushError, match="is not a readable bundle"):
        bundle_version(junk)


@pytest.fixture
def signed_device(new_broker, bundle, keys, tmp_path, service_threads):
    """A device that requires signed install/rollback, on a mosquitto that speaks TLS only (8883-style)."""
    from edge_runtime.service.service_config import parse_config
    from tests.edge_runtime.service.test_service_security import make_pki

    pki_folder = tmp_path / "pki"
    pki_folder.mkdir()
    pki = make_pki(pki_folder)
    tls = [f"cafile {pki['ca']}", f"certfile {pki['server']}", f"keyfile {pki['server_key']}"]
    broker = new_broker(extra_config=tls)
    broker.start()
    raw = {
        "bundle": {"archive": str(bundle[0]), "trusted_keys": [str(keys[1])]},
        "state_dir": str(tmp_path / "state"),
        "camera": {"pipeline": "videotestsrc is-live=true ! video/x-raw,width=96,height=96,framerate=5/1"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "test", "device_id": "cam1"},
        "heatmaps": {"publish": "off"},
        "openvino": {"threads": 1},
        "updates": {"local_folder": str(tmp_path), "signed_commands": True},
        "metrics": {"port": 0},
    }
    raw["mqtt"]["tls"] = {"ca_file": str(pki["ca"])}
    service = service_threads.start(parse_config(raw, "signed commands test config"))
    return service, Broker("127.0.0.1", broker.port, ca_file=pki["ca"])


def test_signed_commands_need_the_site_key_for_this_device_fresh_and_once(
    signed_device, slot, keys, repack, tmp_path, capsys
):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_runtime.service.signed_commands import signed_command
    from export.signing import load_private_key

    service, target = signed_device
    site_key, device = load_private_key(keys[0]), Device("cam1", prefix="test")
    v2 = repack(slot, tmp_path / "v2.tar", keys[0], "2.0.0")

    def refused(body: dict, command: str = "install", **sign) -> str | None:  # noqa: ANN003
        outcome = send_command(target, device, command, body, 30, **sign)
        assert not outcome.ok, outcome
        return outcome.reason

    assert refused(install_request(v2, str(v2))) == "unsigned", "the broker ACL alone is not enough"
    assert refused(install_request(v2, str(v2)), sign_key=Ed25519PrivateKey.generate()) == "bad_signature"
    other_device = signed_command("install", "cam2", install_request(v2, str(v2)), site_key.sign)
    assert refused(other_device) == "wrong_device"
    as_rollback = signed_command("rollback", "cam1", {}, site_key.sign)
    assert refused(as_rollback, "install") == "wrong_command"
    old = signed_command("install", "cam1", install_request(v2, str(v2)), site_key.sign, now_s=time.time() - 3600)
    assert refused(old) == "stale_command"
    assert service.updater.state.active.version == "1.0.0", "nothing was installed so far"

    installed = send_command(target, device, "install", install_request(v2, str(v2)), 120, sign_key=site_key)
    assert (installed.ok, installed.outcome, installed.version) == (True, "installed", "2.0.0")

    rollback = signed_command("rollback", "cam1", {"request_id": "back-1"}, site_key.sign)
    back = send_command(target, device, "rollback", dict(rollback), 60)
    assert (back.ok, back.outcome, back.version) == (True, "rolled_back", "1.0.0")
    assert refused(dict(rollback), "rollback") == "replayed"

    broker_args = ["--broker", f"127.0.0.1:{target.port}", "--ca-file", str(target.ca_file)]
    code = main(["push", "--rollback", "--key", str(keys[0]), *broker_args, "--prefix", "test", "--device", "cam1"])
    assert code == 0 and "rolled_back 2.0.0" in capsys.readouterr().out, "the CLI signs with --key, over TLS"
