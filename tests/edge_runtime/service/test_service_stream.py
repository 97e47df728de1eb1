"""The service end to end, in-process: real GStreamer pipelines, a real mosquitto, the tiny real bundle."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np

FPS = 2  # recorded parts play at this rate; each frame's time stamp tells which file it was


def test_recorded_parts_arrive_once_with_the_inspectors_verdicts(
    broker, listen, make_config, run_service, recorded_parts, shared_inspector
):
    expected = [shared_inspector.inspect(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in recorded_parts]
    folder = recorded_parts[0].parent
    pipeline = f'multifilesrc location={folder}/part_%03d.png caps="image/png,framerate={FPS}/1" ! pngdec'
    listener = listen(broker.port, "test")
    # A long reconnect backoff: after the last file (end of stream) the recording must not replay in this test.
    raw = make_config(
        broker.port,
        camera={"pipeline": pipeline, "reconnect_min_s": 60, "reconnect_max_s": 60},
        mode={"max_fps": 0},
        heatmaps={"publish": "defects"},
    )
    service = run_service(raw)
    listener.wait_for(lambda: len(listener.payloads("/result")) >= len(recorded_parts), 30, "all parts")
    listener.wait_for(lambda: service.outbox.depth() == 0, 10, "the outbox to drain")
    time.sleep(0.5)

    results = listener.payloads("/result")
    assert len(results) == len(recorded_parts)
    assert len({r["part_id"] for r in results}) == len(results)
    by_file = {round(r["frame"]["pts_s"] * FPS): r for r in results}
    assert sorted(by_file) == list(range(len(recorded_parts))), "every part exactly once"
    height, width = cv2.imread(str(recorded_parts[0]), cv2.IMREAD_GRAYSCALE).shape
    for index, result in by_file.items():
        direct = expected[index]
        assert result["verdict"] == ("defect" if direct.is_defect else "good")
        assert np.isclose(result["score"], direct.score, rtol=1e-3, atol=1e-4)
        assert result["threshold"] == round(shared_inspector.calibration.image_threshold, 6)
        assert result["model_version"] == shared_inspector.model_version
        assert result["part_id"].startswith(f"cam1-{service.boot_id}-")
        assert (result["frame"]["width"], result["frame"]["height"]) == (width, height)
        assert len(result["defects"]) == len(direct.regions)
        for box in result["defects"]:  # scaled from the 64 px model back to the recorded frame
            assert box["x"] >= 0 and box["x"] + box["w"] <= width + 1
            assert box["y"] >= 0 and box["y"] + box["h"] <= height + 1
    defects = [r["part_id"] for r in results if r["verdict"] == "defect"]
    heatmaps = listener.raw("/heatmap/")
    assert sorted(t.rsplit("/", 1)[1] for t, _ in heatmaps) == sorted(defects)
    for _, jpeg in heatmaps:
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None

    # The end of the recording is a lost camera, reported with its reason on the retained status topic.
    listener.wait_for(lambda: any(s["state"] == "camera_lost" for s in listener.payloads("/status")), 10, "lost")
    lost = [s for s in listener.payloads("/status") if s["state"] == "camera_lost"][-1]
    assert "end of stream" in lost["last_error"]
    assert listener.raw("/availability")[0][1] == b"online"


def test_camera_that_ends_or_fails_is_reported_and_reconnected(broker, listen, make_config, run_service):
    listener = listen(broker.port, "test")
    ending = "videotestsrc num-buffers=5 ! video/x-raw,width=80,height=60,framerate=20/1"
    service = run_service(make_config(broker.port, camera={"pipeline": ending}))
    listener.wait_for(lambda: service.source.reconnects >= 2, 15, "two reconnects")
    states = [s["state"] for s in listener.payloads("/status")]
    assert "camera_lost" in states
    assert "running" in states[states.index("camera_lost") :], "streaming again after the loss"
    assert service.source.frames_in >= 10, "frames from more than one pipeline run"

    service.stop()
    failing = "filesrc location=/nonexistent/part.png ! pngdec"
    broken = run_service(make_config(broker.port, camera={"pipeline": failing}, mqtt={"device_id": "cam2"}))
    listener.wait_for(lambda: broken.source.reconnects >= 2, 15, "reconnect attempts of a failing source")
    errors = [s["last_error"] for s in listener.payloads("cam2/status") if s["state"] == "camera_lost"]
    assert errors and all("filesrc" in e for e in errors), errors

    broken.stop()
    silent = "videotestsrc is-live=true ! video/x-raw,width=80,height=60,framerate=1/60"  # one frame, then none
    camera = {"pipeline": silent, "frame_timeout_s": 0.5}
    stalled = run_service(make_config(broker.port, camera=camera, mqtt={"device_id": "cam3"}))
    listener.wait_for(lambda: stalled.source.reconnects >= 1, 15, "the stalled camera to be reconnected")
    errors = [s["last_error"] for s in listener.payloads("cam3/status") if s["state"] == "camera_lost"]
    assert errors and errors[0] == "camera lost: no frame for 0.5 s", errors


class RecordingPublisher:
    """Stands in for the MQTT publisher: keeps every status the service sends."""

    def __init__(self) -> None:
        self.statuses: list[dict] = []

    def send(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        if topic.endswith("/status"):
            self.statuses.append(json.loads(payload))
        return True


def test_a_status_built_while_the_camera_is_being_lost_does_not_report_the_loss_without_its_error(tmp_path):
    """The source marks itself lost before its event reaches the service; a status sent in that moment by
    another thread (the publisher connecting, a `status` command) must not say camera_lost with no error."""
    from edge_runtime.service.frames import FrameSource
    from edge_runtime.service.service import Service
    from edge_runtime.service.service_config import parse_config

    raw = {"bundle": {"slot": str(tmp_path / "slot")}, "state_dir": str(tmp_path / "state")}
    raw |= {"camera": {"pipeline": "videotestsrc"}, "mqtt": {"prefix": "test", "device_id": "cam1"}}
    service = Service(parse_config(raw, "test config"))
    publisher = RecordingPublisher()
    service.publisher = publisher  # type: ignore[assignment]

    def on_event(event) -> None:  # noqa: ANN001
        if event.state == "lost":
            service.publish_status()  # another thread's status, between the source's change and its event
        service._on_camera(event)

    failing = "filesrc location=/nonexistent/part.png ! pngdec"
    source = FrameSource(failing, "gray", 1.0, (0.2, 0.2), on_event)
    service.source = source
    source.start()
    try:
        deadline = time.monotonic() + 15
        while source.reconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        source.stop()
    assert source.reconnects >= 1, "the failing source was never reported lost"
    lost = [s for s in publisher.statuses if s["state"] == "camera_lost"]
    assert lost, publisher.statuses
    assert all(s["last_error"] and "filesrc" in s["last_error"] for s in lost), lost


def test_commands_malformed_ones_are_answered_with_errors(broker, listen, make_config, run_service):
    listener = listen(broker.port, "test")
    raw = make_config(broker.port, mode={"kind": "triggered"}, heatmaps={"publish": "all"})
    service = run_service(raw)
    listener.wait_for(lambda: service.source.frames_in > 0, 15, "frames")
    base = "test/cam1/cmd/"
    bad = [
        ("trigger", b"{not json"),
        ("trigger", b'{"part": "x"}'),
        ("trigger", b'["P-1"]'),
        ("trigger", b'{"part_id": "a/b#"}'),
        ("explode", b"{}"),
    ]
    for name, payload in bad:
        listener.publish(base + name, payload)
    listener.publish(base + "trigger", json.dumps({"part_id": "P-1"}))
    listener.wait_for(lambda: len(listener.payloads("/result")) == 1, 15, "the triggered result")
    listener.publish(base + "pause", b"")
    listener.publish(base + "trigger", json.dumps({"part_id": "P-2"}))
    listener.publish(base + "resume", b"")
    listener.publish(base + "status", b"")
    listener.wait_for(lambda: len(listener.payloads("/reply")) >= len(bad) + 5, 10, "replies")

    replies = listener.payloads("/reply")
    refused = [r for r in replies if not r["ok"]]
    reasons = [r["error"] for r in refused]
    assert [r["command"] for r in refused] == ["trigger"] * 4 + ["explode", "trigger"]
    assert "not valid JSON" in reasons[0] and refused[0]["payload"] == "{not json"
    assert reasons[1] == "missing part_id"
    assert "JSON object" in reasons[2]
    assert "part_id must be" in reasons[3]
    assert "unknown command 'explode'" in reasons[4]
    assert "paused" in reasons[5]
    assert {r["command"] for r in replies if r["ok"]} == {"trigger", "pause", "resume", "status"}

    result = listener.payloads("/result")[0]
    assert result["part_id"] == "P-1"
    assert [t for t, _ in listener.raw("/heatmap/")] == ["test/cam1/heatmap/P-1"]
    assert any(s["state"] == "paused" for s in listener.payloads("/status"))
    assert listener.payloads("/status")[-1]["state"] == "running"
    listener.wait_for(lambda: any(s["inspected"] for s in listener.payloads("/stats")), 5, "stats")
    stats = listener.payloads("/stats")[-1]
    assert stats["inspected"] == 1 and stats["outbox"]["depth"] == 0 and stats["frames_in"] > 0
    assert service.source.dropped == 0, "unused frames between triggers are not drops"


def test_the_loop_keeps_turning_while_a_trigger_waits_for_its_frame(broker, listen, make_config, run_service):
    """The watchdog and /healthz follow the loop's turns; waiting for a late frame must not look like a hang."""
    listener = listen(broker.port, "test")
    # Five frames, then end of stream and a long reconnect pause: a trigger after that waits in vain.
    pipeline = "videotestsrc is-live=true num-buffers=5 ! video/x-raw,width=160,height=120,framerate=10/1"
    camera = {"pipeline": pipeline, "frame_timeout_s": 2, "reconnect_min_s": 20, "reconnect_max_s": 20}
    service = run_service(make_config(broker.port, mode={"kind": "triggered"}, camera=camera))
    turns: list[float] = []
    service.tick_listeners.append(lambda: turns.append(time.monotonic()))
    listener.wait_for(lambda: service.source.frames_in >= 5, 15, "the camera's five frames")
    asked = time.monotonic()
    listener.publish("test/cam1/cmd/trigger", json.dumps({"part_id": "P-late"}))

    def refusal() -> list[dict]:
        return [r for r in listener.payloads("/reply") if r.get("part_id") == "P-late" and not r["ok"]]

    listener.wait_for(refusal, 10, "the trigger's refusal")
    assert "no frame arrived within 2 s" in refusal()[0]["error"]
    during = [t for t in turns if t > asked]
    assert len(during) >= 8, f"{len(during)} loop turns in the 2 s wait"
    assert max(b - a for a, b in zip(during, during[1:], strict=False)) < 1.0


class HeldLoop:
    """Holds the service's frame loop in a tick listener, as a long inspection or a stalled disk would."""

    def __init__(self, service) -> None:  # noqa: ANN001
        self.release = threading.Event()
        self.holding = threading.Event()
        service.tick_listeners.append(self._hold)

    def _hold(self) -> None:
        if not self.release.is_set():
            self.holding.set()
            self.release.wait(30)


def trigger_replies(listener, part_id: str) -> list[dict]:  # noqa: ANN001
    return [r for r in listener.payloads("/reply") if r.get("part_id") == part_id and not r["ok"]]


def test_a_trigger_whose_deadline_passed_while_it_waited_is_answered_expired(broker, listen, make_config, run_service):
    listener = listen(broker.port, "test")
    camera = {"frame_timeout_s": 1}
    service = run_service(make_config(broker.port, mode={"kind": "triggered"}, camera=camera))
    listener.wait_for(lambda: service.source.frames_in > 0, 15, "frames")
    held = HeldLoop(service)
    listener.wait_for(held.holding.is_set, 5, "the loop to be held")
    for part_id in ("P-a", "P-b"):
        listener.publish("test/cam1/cmd/trigger", json.dumps({"part_id": part_id}))
    time.sleep(1.5)  # past their 1 s deadline while they wait; the camera keeps delivering frames
    held.release.set()
    listener.wait_for(lambda: trigger_replies(listener, "P-b"), 10, "the second trigger's answer")

    for part_id in ("P-a", "P-b"):
        (reply,) = trigger_replies(listener, part_id)
        assert reply["reason"] == "expired" and "past its 1 s deadline" in reply["error"], reply
    assert listener.payloads("/result") == [], "no verdict on a frame taken after the part had passed"
    listener.publish("test/cam1/cmd/trigger", json.dumps({"part_id": "P-c"}))
    listener.wait_for(lambda: listener.payloads("/result"), 10, "a fresh trigger's result")
    assert [r["part_id"] for r in listener.payloads("/result")] == ["P-c"]


def test_a_trigger_waits_for_its_frame_only_until_its_own_deadline(broker, listen, make_config, run_service):
    listener = listen(broker.port, "test")
    # Five frames, then end of stream and a long reconnect pause: no frame comes for the trigger.
    pipeline = "videotestsrc is-live=true num-buffers=5 ! video/x-raw,width=160,height=120,framerate=10/1"
    camera = {"pipeline": pipeline, "frame_timeout_s": 3, "reconnect_min_s": 30, "reconnect_max_s": 30}
    service = run_service(make_config(broker.port, mode={"kind": "triggered"}, camera=camera))
    listener.wait_for(lambda: service.source.frames_in >= 5, 15, "the camera's five frames")
    held = HeldLoop(service)
    listener.wait_for(held.holding.is_set, 5, "the loop to be held")
    sent = time.monotonic()
    listener.publish("test/cam1/cmd/trigger", json.dumps({"part_id": "P-late"}))
    time.sleep(2.0)
    held.release.set()
    listener.wait_for(lambda: trigger_replies(listener, "P-late"), 10, "the trigger's answer")
    answered = time.monotonic() - sent
    assert answered < 4.3, f"answered {answered:.1f} s after it was sent: its 3 s run from its arrival"
    (reply,) = trigger_replies(listener, "P-late")
    assert reply["reason"] == "no_frame", reply


def test_triggers_still_waiting_at_stop_are_answered_stopped(broker, listen, make_config, run_service):
    listener = listen(broker.port, "test")
    service = run_service(make_config(broker.port, mode={"kind": "triggered"}))
    listener.wait_for(lambda: service.source.frames_in > 0, 15, "frames")
    held = HeldLoop(service)
    listener.wait_for(held.holding.is_set, 5, "the loop to be held")
    for part_id in ("P-s1", "P-s2"):
        listener.publish("test/cam1/cmd/trigger", json.dumps({"part_id": part_id}))
    listener.wait_for(lambda: len([r for r in listener.payloads("/reply") if r["ok"]]) >= 2, 5, "the acks")
    service.stop()
    held.release.set()
    listener.wait_for(lambda: trigger_replies(listener, "P-s2"), 10, "the answers at stop")
    for part_id in ("P-s1", "P-s2"):
        (reply,) = trigger_replies(listener, part_id)
        assert reply["reason"] == "stopped", reply
    assert listener.payloads("/result") == []


def test_a_trigger_sent_while_the_device_is_offline_is_served_after_it_reconnects(
    broker, listen, make_config, run_service
):
    listener = listen(broker.port, "test")
    raw = make_config(broker.port, mode={"kind": "triggered"})
    first = run_service(raw)
    listener.wait_for(lambda: first.publisher.connected.is_set(), 10, "the device to connect")
    first.stop()
    listener.wait_for(lambda: not first.publisher.connected.is_set(), 10, "the device to disconnect")
    time.sleep(0.3)  # the broker has seen the DISCONNECT
    listener.publish("test/cam1/cmd/trigger", json.dumps({"part_id": "P-offline"}))  # nobody is subscribed now

    second = run_service(raw)  # same client id: the broker hands over the session it kept
    listener.wait_for(lambda: listener.payloads("/result"), 20, "the queued trigger's result")
    (result,) = listener.payloads("/result")
    assert result["part_id"] == "P-offline"
    assert second.boot_id != first.boot_id
