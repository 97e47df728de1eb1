"""The service's parts on their own: outbox, command parsing, result payloads, topics, credentials."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_runtime.results import DefectRegion, InspectionResult
from edge_runtime.service.commands import CommandError, CommandRegistry
from edge_runtime.service.messages import result_payload
from edge_runtime.service.mqtt_topics import Topics
from edge_runtime.service.outbox import Outbox
from edge_runtime.service.publisher import CredentialError, read_password
from edge_runtime.service.service_config import MqttConfig


def test_outbox_keeps_order_across_reopening_and_counts_what_its_bounds_drop(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"
    outbox = Outbox(path, max_rows=10, max_age_s=3600)
    seqs = [outbox.add(f"p{i}", "t/result", f"{i}".encode()) for i in range(12)]
    assert seqs == sorted(seqs)
    assert outbox.depth() == 10 and outbox.dropped() == 2
    outbox.delete(seqs[2])
    outbox.close()

    reopened = Outbox(path, max_rows=10, max_age_s=3600)  # as after a restart
    rows = reopened.after(0, 100)
    assert [r.part_id for r in rows] == [f"p{i}" for i in range(3, 12)]
    assert [r.part_id for r in reopened.after(rows[3].seq, 2)] == ["p7", "p8"]
    assert reopened.dropped() == 2
    reopened.max_age_s = 0.0  # everything is now too old
    reopened.add("late", "t/result", b"{}")
    assert reopened.depth() == 1 and reopened.dropped() == 11
    reopened.close()


def test_command_registry_answers_every_outcome_and_takes_new_commands():
    replies: list[dict] = []
    registry = CommandRegistry(replies.append)
    registry.register("install", lambda body: {"version": body["version"]})  # how model updates plug in

    def broken(body: dict) -> dict:
        raise KeyError("bug")

    def refuse(body: dict) -> dict:
        raise CommandError("not now")

    registry.register("broken", broken)
    registry.register("refuse", refuse)
    registry.dispatch("install", b'{"version": "2.0"}')
    registry.dispatch("broken", b"")
    registry.dispatch("refuse", b"   ")
    registry.dispatch("install", b"\xff\xfe")
    registry.dispatch("nope", b"{}")
    assert replies[0] == {"command": "install", "ok": True, "version": "2.0"}
    assert replies[1]["ok"] is False and "internal error" in replies[1]["error"]
    assert replies[2]["error"] == "not now"
    assert "not valid JSON" in replies[3]["error"]
    assert "unknown command 'nope'" in replies[4]["error"] and "install" in replies[4]["error"]


def test_result_payload_scales_boxes_to_the_source_frame():
    region = DefectRegion(x=8, y=4, width=16, height=8, area=100, peak=0.91234567)
    result = InspectionResult(
        score=0.7,
        is_defect=True,
        severity_distance=1.0,
        severity_bin=3,
        timestep=40,
        steps=2,
        anomaly_map=np.zeros((64, 64), np.float32),
        regions=[region],
        healed_image=None,
        timings_ms={"total": 12.5},
    )
    payload = result_payload("p-1", result, (480, 640, 1), (64, 64), 0.5, "1.0.0", 20.0, 1.5)
    assert payload["defects"] == [{"x": 80, "y": 30, "w": 160, "h": 60, "area": 7500, "peak": 0.9123}]
    assert payload["verdict"] == "defect" and payload["time"].endswith("Z")
    assert payload["frame"] == {"width": 640, "height": 480, "pts_s": 1.5}
    json.dumps(payload)


def test_topics_live_under_prefix_and_device():
    topics = Topics("plant", "cam1")
    assert topics.result == "plant/cam1/result" and topics.heatmap("p-1") == "plant/cam1/heatmap/p-1"
    assert topics.command_name("plant/cam1/cmd/trigger") == "trigger"
    assert topics.command_name("plant/cam2/cmd/trigger") is None


def test_password_comes_from_a_file_or_a_systemd_credential(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("s3cret\n")
    assert read_password(MqttConfig(username="u", password_file=tmp_path / "pw")) == "s3cret"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_password(MqttConfig(username="u", password_credential="pw")) == "s3cret"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(CredentialError, match="CREDENTIALS_DIRECTORY"):
        read_password(MqttConfig(username="u", password_credential="pw"))
    assert read_password(MqttConfig()) is None


def test_frame_source_keeps_the_newest_frame_and_counts_the_ones_a_slow_consumer_missed():
    from edge_runtime.service.frames import FrameSource

    events = []
    pipeline = "videotestsrc is-live=true ! video/x-raw,width=100,height=50,framerate=50/1"
    source = FrameSource(pipeline, "gray", 2.0, (0.1, 0.5), events.append)
    source.start()
    try:
        taken = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            frame = source.take(timeout=1.0)
            if frame is not None:
                taken.append(frame)
                time.sleep(0.1)  # a slow inspection
    finally:
        source.stop()
    assert taken and taken[0].image.shape == (50, 100) and taken[0].image.dtype == np.uint8
    assert [f.number for f in taken] == sorted(f.number for f in taken)
    assert source.dropped >= source.frames_in - len(taken) - 1 > 0
    assert [e.state for e in events] == ["connecting", "streaming", "stopped"]
