"""The service: camera frames -> inspection -> durable outbox -> MQTT, with commands, status and stats."""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from edge_runtime.bundle import load_trusted_keys
from edge_runtime.cli import package_version
from edge_runtime.inspector import Inspector
from edge_runtime.openvino_networks import RuntimeOptions
from edge_runtime.preprocess import FrameError
from edge_runtime.service.commands import CommandError, CommandRegistry, part_id_of
from edge_runtime.service.download import DownloadLimits
from edge_runtime.service.frames import CameraEvent, CameraState, Frame, FrameSource
from edge_runtime.service.learning import Learning
from edge_runtime.service.messages import encode_json, result_payload, utc_now
from edge_runtime.service.metrics_endpoint import MetricsEndpoint
from edge_runtime.service.model_guard import CrashGuard, ModelGuard
from edge_runtime.service.model_policy import BundlePolicy
from edge_runtime.service.model_startup import load_startup_model
from edge_runtime.service.model_store import ModelState, ModelStore, StateFileError
from edge_runtime.service.model_updates import ModelUpdater, UpdateRefused
from edge_runtime.service.mqtt_topics import (
    HEATMAP_QOS,
    MODEL_QOS,
    MODEL_RETAIN,
    REPLY_QOS,
    STATS_QOS,
    STATUS_QOS,
    STATUS_RETAIN,
    Topics,
)
from edge_runtime.service.outbox import Outbox, open_outbox
from edge_runtime.service.plc_links import PlcLinks
from edge_runtime.service.publisher import Publisher
from edge_runtime.service.service_config import ServiceConfig
from edge_runtime.service.service_metrics import LiveFigures, ServiceMetrics
from edge_runtime.service.service_observer import InspectedPart, ObserverUnavailable, ServiceObserver
from edge_runtime.service.signed_commands import RECORD_FILE, CommandVerifier
from edge_runtime.service.triggers import QueueClosed, Trigger, TriggerQueue, unserved_reply

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
MODELS_FOLDER = "models"
_IDLE_WAIT_S = 0.2  # how long the frame loop blocks before looking at stop, stats and pause again


def new_boot_id() -> str:
    """Unique per process start, so part ids never repeat across restarts."""
    return f"{int(time.time()):x}{secrets.token_hex(2)}"


def runtime_options(config: ServiceConfig) -> RuntimeOptions:
    openvino = config.openvino
    return RuntimeOptions(
        performance_hint=openvino.performance_hint, threads=openvino.threads, cache_dir=openvino.cache_dir
    )


class Service:
    """Run with `run(stop_event)` (blocks) in the main thread or a test's thread; `stop()` ends it.

    `observers` (the operator view, the systemd link; see service_observer.py) are built and handed in by
    whoever starts the service; more can be attached before `run()`."""

    def __init__(
        self, config: ServiceConfig, inspector: Inspector | None = None, observers: Iterable[ServiceObserver] = ()
    ) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix, config.mqtt.device_id)
        self.boot_id = new_boot_id()
        self.state = "starting"
        self.last_error: str | None = None
        # The camera state a status reports: the source's, as its events tell it, set together with the error
        # a loss comes with. The source's own `state` changes before its event is handled, so a status built
        # from it in another thread meanwhile would say the camera is lost without saying why.
        self.camera_state: CameraState = "stopped"
        # Held while the error or camera state changes and while a status is built and sent: each status is
        # one consistent snapshot, and statuses go out in the order of the changes they report.
        self._status_lock = threading.RLock()
        self.produced = 0
        self.inspector = inspector
        self.store = ModelStore(config.state_dir / MODELS_FOLDER)
        self.updater: ModelUpdater | None = None
        fallback = config.updates.fallback_in_effect()
        self.guard = ModelGuard(fallback, self.store)  # rolls back a new model that keeps failing
        self.crashes = CrashGuard(fallback, self.store)  # ... or that keeps ending the process, counted on disk
        self._incoming_inspector: Inspector | None = None  # handed over by an update, adopted between frames
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        self.source: FrameSource | None = None
        # Everything counted is counted here; the stats message, the operator page and /metrics read it.
        self.stats = ServiceMetrics(package_version(), self._live_figures)
        self.metrics_endpoint: MetricsEndpoint | None = None  # /metrics, started by run() (config.metrics)
        self.commands = CommandRegistry(self._reply)
        self.commands.register("trigger", self._cmd_trigger)
        self.commands.register("pause", self._cmd_pause)
        self.commands.register("resume", self._cmd_resume)
        self.commands.register("status", self._cmd_status)
        self.commands.register("install", lambda body: self._updater().command_install(self._opened("install", body)))
        self.commands.register(
            "rollback", lambda body: self._updater().command_rollback(self._opened("rollback", body))
        )
        self.command_verifier: CommandVerifier | None = None  # set by run() when updates.signed_commands
        self.observers: list[ServiceObserver] = list(observers)
        # The service's own extensions (and the observers, once started) plug in here; the frame loop does not
        # know them. Result listeners run in the frame thread after each part is stored, tick listeners every
        # loop turn (at least every 0.2 s); both must be quick and must not raise.
        self.result_listeners: list[Callable[[InspectedPart], None]] = []
        self.tick_listeners: list[Callable[[], None]] = []
        # Extensions also add to what is published: fields of `status` and `stats`, messages sent at connect.
        self.connect_listeners: list[Callable[[], None]] = []
        self.status_fields: list[Callable[[], dict[str, Any]]] = []
        self.stats_fields: list[Callable[[], dict[str, Any]]] = []
        self.plc_links = PlcLinks(self)  # Sparkplug B node and OPC UA server, when configured
        self.learning = Learning(self)  # operator feedback, the overlay memory, parts kept for retraining
        self.started = threading.Event()
        self._paused = threading.Event()
        self._stop = threading.Event()
        # A trigger's deadline runs from its arrival: the part it names passes the camera meanwhile.
        self._triggers = TriggerQueue(config.mode.trigger_queue, config.camera.frame_timeout_s)

    def part_id(self, counter: int) -> str:
        return f"{self.config.mqtt.device_id}-{self.boot_id}-{counter}"

    def stop(self) -> None:
        self._stop.set()

    def attach(self, observer: ServiceObserver) -> None:
        """Add an observer; only before `run()`."""
        self.observers.append(observer)

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Start everything, inspect until stopped, then shut down cleanly (results stay in the outbox)."""
        stop_event = stop_event or self._stop
        try:
            self._start_observers()  # e.g. systemd's STATUS says the model is loading
            self._start_metrics_endpoint()  # scrapes answer while the model compiles (minutes on a first start)
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
            self._load_models()
            self._warm_up()
            self.plc_links.start()  # first: a link that cannot start stops the service before the camera runs
            self._open_parts()
            self.learning.start()
            assert self.publisher is not None and self.source is not None
            self.publisher.start()
            self.source.start()
            self.started.set()
            self._loop(lambda: stop_event.is_set() or self._stop.is_set())
        finally:
            self._shut_down()

    def _load_models(self) -> None:
        """The model to run (from the model store, or the configured bundle) and the updater that changes it."""
        keys = load_trusted_keys(self.config.bundle.trusted_keys)
        removed = self.store.clean_leftovers()
        if removed:
            log.warning("removed leftovers of an interrupted update: %s", ", ".join(sorted(removed)))
        options = runtime_options(self.config)
        policy = BundlePolicy(self.config.bundle, self.store.root)
        if self.inspector is None:
            startup = load_startup_model(self.config.bundle, self.store, keys, options, policy, self.crashes)
            self.inspector, state = startup.inspector, startup.state
            self.crashes.running(state)
            if startup.problem is not None:  # on the status topic too, not only in `model.last_update`
                self.last_error = startup.problem
            elif self.crashes.problem is not None:
                self.last_error = self.crashes.problem
        else:  # an inspector handed in (tests, tools): the store only records what updates do
            try:
                state = self.store.read()
            except StateFileError:
                state = ModelState()
            policy.start(state)
        self.stats.model_changed(self.inspector.model_version)
        updates = self.config.updates
        if updates.signed_commands:
            command_keys = load_trusted_keys(updates.command_keys) if updates.command_keys else keys
            record = self.config.state_dir / RECORD_FILE
            device = self.config.mqtt.device_id
            self.command_verifier = CommandVerifier(command_keys, device, updates.command_max_age_s, record)
        limits = DownloadLimits(
            updates.max_bundle_bytes,
            updates.download_timeout_s,
            updates.download_attempts,
            updates.ca_file,
            updates.max_unpacked_bytes,
            tuple(updates.allowed_hosts),
            updates.local_folder,
            updates.keep_free_bytes,
        )
        self.updater = ModelUpdater(
            self.store,
            state,
            keys,
            options,
            limits,
            self._hand_over_model,
            self.publish_model_state,
            self._reply,
            policy,
        )

    def _opened(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        """The command body to act on: as sent, or, with updates.signed_commands, verified out of its envelope."""
        if not self.config.updates.signed_commands:
            return body
        if self.command_verifier is None:
            raise CommandError("signed commands are not ready yet", "unsigned")
        return self.command_verifier.open(command, body)

    def _updater(self) -> ModelUpdater:
        if self.updater is None or not self.config.updates.enabled:
            raise CommandError("model updates are turned off on this device (updates.enabled)")
        return self.updater

    def _hand_over_model(self, inspector: Inspector) -> None:
        self._incoming_inspector = inspector

    def _adopt_incoming_model(self) -> None:
        """Between two frames: the next frame is inspected by the new model, none is skipped."""
        incoming, self._incoming_inspector = self._incoming_inspector, None
        if incoming is None:
            return
        old = self.inspector
        self.inspector = incoming
        self.guard.model_changed()
        self._watch_for_crashes()
        self.stats.model_changed(incoming.model_version)
        log.info("now inspecting with model %s (was %s)", incoming.model_version, old and old.model_version)
        self.publish_status()
        self.publish_model_state()

    def _watch_for_crashes(self) -> None:
        """After a model change: the model state.json now names runs, and is watched if it is on probation.
        Read from disk, which the updater wrote before the handover and which the next start will read."""
        try:
            state = self.store.read()
        except StateFileError as error:
            log.error("%s; runs of the new model are not counted", error)
            return
        self.crashes.running(state)

    def _open_parts(self) -> None:
        """Outbox (re-read from disk), MQTT publisher and camera source; nothing is started yet."""
        assert self.inspector is not None
        config = self.config
        box = config.outbox
        self.outbox, damage = open_outbox(config.state_dir / OUTBOX_FILE, box.max_rows, box.max_age_s, box.memory_rows)
        if damage is not None:
            self.last_error = damage
        log.info("outbox holds %d unpublished result(s) from before", self.outbox.depth())
        self.publisher = Publisher(config.mqtt, self.topics, self.outbox, self._on_message)
        self.publisher.on_connected = self._publish_retained
        self.publisher.on_problem = self._set_error
        camera = config.camera
        backoff = (camera.reconnect_min_s, camera.reconnect_max_s)
        self.source = FrameSource(
            camera.pipeline, self.inspector.color, camera.frame_timeout_s, backoff, self._on_camera
        )
        # In triggered mode frames are expected to go unused between triggers: not drops.
        self.source.count_drops = config.mode.kind == "continuous"

    def _warm_up(self) -> None:
        """The first inference is slow; run the bundle's reference checks now, not on the first part."""
        assert self.inspector is not None
        failed = [check for check in self.inspector.health_check() if not check.passed]
        for check in failed:
            self.last_error = (
                f"reference {check.file} scores {check.measured_score:.4f}, not {check.expected_score:.4f}"
            )
            log.error("bundle health check failed: %s", self.last_error)

    def _start_observers(self) -> None:
        """Each observer's `starting`; one that cannot start costs that observer, not inspection."""
        for observer in list(self.observers):
            try:
                observer.starting(self)
            except ObserverUnavailable as error:
                self._drop_observer(observer, str(error))
                continue
            except Exception as error:  # an observer's bug must not keep the service from inspecting
                log.exception("observer %r failed to start", observer)
                self._drop_observer(observer, f"{type(observer).__name__} failed to start: {error}")
                continue
            self.result_listeners.append(observer.on_result)
            self.tick_listeners.append(observer.on_tick)

    def _drop_observer(self, observer: ServiceObserver, reason: str) -> None:
        self.observers.remove(observer)
        self.last_error = reason
        log.error(reason)

    def _stop_observers(self) -> None:
        """Each observer's `stopping`; a stopped observer gets no more calls."""
        for observer in self.observers:
            with contextlib.suppress(ValueError):  # not registered: it never started
                self.result_listeners.remove(observer.on_result)
            with contextlib.suppress(ValueError):
                self.tick_listeners.remove(observer.on_tick)
            try:
                observer.stopping()
            except Exception:  # the others still get to stop
                log.exception("observer %r failed to stop", observer)

    def _start_metrics_endpoint(self) -> None:
        """/metrics on its own port; a port that cannot be bound costs the endpoint, not inspection."""
        config = self.config.metrics
        if not config.enabled:
            return
        endpoint = MetricsEndpoint(config, self.stats)
        try:
            endpoint.start()
        except OSError as error:
            self.last_error = f"metrics cannot listen on {config.host}:{config.port}: {error}"
            log.error(self.last_error)
            return
        self.metrics_endpoint = endpoint

    def _live_figures(self) -> LiveFigures:
        """What the metrics read from the camera source, the outbox and the publisher, which count them."""
        source, outbox, publisher = self.source, self.outbox, self.publisher
        return LiveFigures(
            frames_in=source.frames_in if source else 0,
            frames_dropped=source.dropped if source else 0,
            bad_frames=source.bad_frames if source else 0,
            camera_reconnects=source.reconnects if source else 0,
            camera_streaming=source is not None and source.state == "streaming",
            outbox_depth=outbox.depth() if outbox else 0,
            outbox_dropped=outbox.dropped() if outbox else 0,
            results_published=publisher.published if publisher else 0,
            broker_connected=publisher is not None and publisher.connected.is_set(),
        )

    def _loop(self, stopping: Callable[[], bool]) -> None:
        next_stats = time.monotonic() + self.config.stats_interval_s
        next_frame_due = 0.0
        continuous = self.config.mode.kind == "continuous"
        min_interval = 1.0 / self.config.mode.max_fps if self.config.mode.max_fps else 0.0
        assert self.source is not None
        while not stopping():
            self._adopt_incoming_model()
            self._notify(self.tick_listeners)
            if time.monotonic() >= next_stats:
                self.publish_stats()
                next_stats = time.monotonic() + self.config.stats_interval_s
            if not continuous:
                self._serve_trigger(stopping)
                continue
            frame = self.source.take(timeout=_IDLE_WAIT_S)
            if frame is None:
                continue
            if self._paused.is_set() or frame.received < next_frame_due:
                self.stats.count_skipped()
                continue
            next_frame_due = frame.received + min_interval
            self.produced += 1
            self._inspect(frame, self.part_id(self.produced))

    def _serve_trigger(self, stopping: Callable[[], bool]) -> None:
        trigger = self._triggers.get(timeout=_IDLE_WAIT_S)
        if trigger is None:
            return
        if stopping():
            self._reply(unserved_reply(trigger, "stopped"))
            return
        if trigger.remaining() <= 0:
            self._reply(unserved_reply(trigger, "expired"))
            return
        frame = self._frame_after(trigger, stopping)
        if frame is None:
            self._reply(unserved_reply(trigger, "stopped" if stopping() else "no_frame"))
            return
        self._inspect(frame, trigger.part_id)

    def _frame_after(self, trigger: Trigger, stopping: Callable[[], bool]) -> Frame | None:
        """A frame newer than the trigger, taken before its deadline; waits in short slices, so the loop keeps
        ticking (watchdog, health)."""
        assert self.source is not None
        while not stopping():
            remaining = trigger.remaining()
            if remaining <= 0:
                return None
            frame = self.source.take(after=trigger.received, timeout=min(_IDLE_WAIT_S, remaining))
            if frame is not None:
                return frame
            self._notify(self.tick_listeners)
        return None

    def _inspect(self, frame: Frame, part_id: str) -> None:
        assert self.inspector is not None and self.outbox is not None and self.publisher is not None
        inspector = self.inspector
        try:
            result = inspector.inspect(frame.image)
        except FrameError as error:
            self.stats.count_frame_error()
            self._set_error(f"frame {frame.number} cannot be inspected: {error}")
            return
        except Exception as error:  # an inference failure costs one part, not the all-day process
            log.exception("inspecting frame %d failed", frame.number)
            self.stats.count_model_failure()
            self._set_error(f"inspection of frame {frame.number} failed: {error}")
            self._count_model_failure(inspector, error)
            return
        latency_ms = (time.monotonic() - frame.received) * 1000.0
        threshold = inspector.calibration.image_threshold
        shape, version = frame.image.shape, inspector.model_version
        payload = result_payload(part_id, result, shape, inspector.size, threshold, version, latency_ms, frame.pts_s)
        # Durable first: the row is on disk before anything is sent, and leaves only when the broker acked it.
        # A disk that refuses the row (full, failing) leaves it in memory, still published in order.
        refused_before = self.outbox.disk_error
        self.outbox.add(part_id, self.topics.result, encode_json(payload))
        if self.outbox.disk_error is not None and refused_before is None:
            self.stats.count_storage_error()
            self._set_error(f"the outbox disk refuses writes ({self.outbox.disk_error}); results wait in memory")
        self.publisher.wake()
        self.stats.record_part(latency_ms, result.is_defect)
        part = InspectedPart(part_id, frame, result, latency_ms, payload, inspector)
        self._publish_heatmap(part)
        self._notify(self.result_listeners, part)

    def _count_model_failure(self, inspector: Inspector, error: Exception) -> None:
        """A new model that fails too often on real frames goes back to the one it replaced (config
        updates.fallback); frames that cannot be inspected at all (FrameError) say nothing about the model."""
        updater = self.updater
        if updater is None:
            return
        count = self.guard.failed(inspector.slot, updater.state)  # None while the fallback is off
        if count is None:
            return
        window = self.config.updates.fallback.window_s
        previous = updater.state.previous.version if updater.state.previous else None
        detail = f"model {inspector.model_version} failed {count} inspections within {window:g} s; last: {error}"
        if updater.fall_back(UpdateRefused("inspection_failures", detail)):
            self._set_error(f"{detail}; rolling back to {previous}")

    @staticmethod
    def _notify(listeners: list[Callable[..., None]], *args: Any) -> None:
        for listener in listeners:
            try:
                listener(*args)
            except Exception:  # an observer's bug must not cost a part
                log.exception("listener %r failed", listener)

    def _publish_heatmap(self, part: InspectedPart) -> None:
        assert self.publisher is not None
        wanted = self.config.heatmaps.publish
        defect = part.result.is_defect
        if wanted == "off" or (wanted == "defects" and not defect) or not self.publisher.connected.is_set():
            return
        jpeg = part.overlay_jpeg(self.config.heatmaps.jpeg_quality)
        self.publisher.send(self.topics.heatmap(part.part_id), jpeg, HEATMAP_QOS)

    def _shut_down(self) -> None:
        # Asked to stop, or an error Python caught: the process ends by its own shutdown, not taken down by the
        # model, so this run does not count against a model on probation. Recorded first: a shutdown that then
        # hangs until systemd kills it says nothing about the model.
        self.crashes.stopped()
        self.state = "stopping"
        self._stop_observers()  # first: they read the outbox, which is closed below
        if self.metrics_endpoint is not None:  # so does a scrape
            self.metrics_endpoint.stop()
        if self.source is not None:
            self.source.stop()
        self.plc_links.stop()
        for trigger in self._triggers.close():  # before the publisher goes: every trigger gets an answer
            self._reply(unserved_reply(trigger, "stopped"))
        self.learning.stop()
        if self.publisher is not None:
            self.publish_status()
            self.publisher.stop()
        if self.outbox is not None:
            log.info("stopped; %d result(s) wait in the outbox", self.outbox.depth())
            self.outbox.close()

    # --- status, stats and replies -------------------------------------------------------------------

    def _on_camera(self, event: CameraEvent) -> None:
        with self._status_lock:
            if event.state == "lost":
                self._record_error(f"camera lost: {event.reason}")
            elif event.state == "streaming" and self.state == "starting":
                self.state = "running"
            self.camera_state = event.state
            self.publish_status()

    def _set_error(self, message: str) -> None:
        with self._status_lock:
            self._record_error(message)
            self.publish_status()

    def _record_error(self, message: str) -> None:
        log.error(message)
        self.last_error = message

    def status_payload(self) -> dict[str, Any]:
        with self._status_lock:
            return self._status_snapshot()

    def _status_snapshot(self) -> dict[str, Any]:
        camera = self.camera_state
        state = self.state
        if state in ("starting", "running") and camera == "lost":
            state = "camera_lost"
        elif state == "running" and self._paused.is_set():
            state = "paused"
        return {
            "state": state,
            "mode": self.config.mode.kind,
            "model_version": self.inspector.model_version if self.inspector else None,
            "camera": {
                "state": camera,
                "reconnects": self.source.reconnects if self.source else 0,
                "frames_in": self.source.frames_in if self.source else 0,
            },
            "last_error": self.last_error,
            "boot_id": self.boot_id,
            "time": utc_now(),
        } | self._extra_fields(self.status_fields)

    def _extra_fields(self, providers: list[Callable[[], dict[str, Any]]]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for provider in providers:
            try:
                fields.update(provider())
            except Exception:  # an extension's bug must not cost the status message
                log.exception("fields from %r failed", provider)
        return fields

    def _publish_retained(self) -> None:
        self.publish_status()
        self.publish_model_state()
        self._notify(self.connect_listeners)

    def publish_model_state(self) -> None:
        if self.publisher is not None and self.updater is not None:
            payload = encode_json(self.updater.state_payload())
            self.publisher.send(self.topics.model, payload, MODEL_QOS, MODEL_RETAIN)

    def publish_status(self) -> None:
        if self.publisher is None:
            return
        with self._status_lock:  # sending only queues the message, so holding the lock costs nothing
            self.publisher.send(self.topics.status, encode_json(self.status_payload()), STATUS_QOS, STATUS_RETAIN)

    def stats_payload(self) -> dict[str, Any]:
        """The `stats` message: the metrics registry's figures under their established names."""
        figures = self.stats.snapshot()
        return {
            "frames_in": figures.frames_in,
            "inspected": figures.inspected,
            "dropped": figures.dropped,
            "skipped": figures.skipped,
            "defects": figures.defects,
            "errors": figures.errors,
            "latency_ms": {
                "p50": figures.latency_p50_ms,
                "p99": figures.latency_p99_ms,
                "window": figures.latency_window,
            },
            "outbox": {"depth": figures.outbox_depth, "dropped": figures.outbox_dropped},
            "uptime_s": figures.uptime_s,
            "camera_reconnects": figures.camera_reconnects,
            "bad_frames": figures.bad_frames,
            "boot_id": self.boot_id,  # the counters are this process's
        } | self._extra_fields(self.stats_fields)

    def delivery_problem(self) -> str | None:
        return self.publisher.problem() if self.publisher is not None else None

    def publisher_alive(self) -> bool:
        return self.publisher is None or self.publisher.alive()

    def publish_stats(self) -> None:
        if self.publisher is not None:
            self.publisher.send(self.topics.stats, encode_json(self.stats_payload()), STATS_QOS)

    def _reply(self, body: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.send(self.topics.reply, encode_json({**body, "time": utc_now()}), REPLY_QOS)

    def _on_message(self, topic: str, payload: bytes) -> None:
        name = self.topics.command_name(topic)
        if name is not None:
            self.commands.dispatch(name, payload)

    # --- commands ------------------------------------------------------------------------------------

    def request_trigger(self, part_id: str) -> None:
        """A trigger from another protocol (Sparkplug DCMD, OPC UA method); CommandError says why it is refused."""
        self._cmd_trigger({"part_id": part_id})

    def _cmd_trigger(self, body: dict[str, Any]) -> dict[str, Any]:
        part_id = part_id_of(body)
        if self.config.mode.kind != "triggered":
            raise CommandError("trigger needs mode.kind triggered; this device inspects continuously")
        if self._paused.is_set():
            raise CommandError("inspection is paused; send resume first")
        try:
            self._triggers.put(part_id)
        except queue.Full as error:
            raise CommandError(f"{self._triggers.maxsize} triggers are already waiting") from error
        except QueueClosed as error:
            raise CommandError(str(error)) from error
        return {"part_id": part_id}

    def _cmd_pause(self, body: dict[str, Any]) -> dict[str, Any]:
        self._paused.set()
        self.publish_status()
        return {}

    def _cmd_resume(self, body: dict[str, Any]) -> dict[str, Any]:
        self._paused.clear()
        self.publish_status()
        return {}

    def _cmd_status(self, body: dict[str, Any]) -> dict[str, Any]:
        self.publish_status()
        return {}
