"""Sparkplug B edge node: the inspector as edge node `<edge_node_id>` with one device, on its own MQTT connection.

Session rules (Sparkplug 3.0): every CONNECT registers an NDEATH will carrying a bdSeq one higher than the
previous CONNECT's (persisted in the state folder, so a restart never reuses the number of a session whose will
may still be delivered); after CONNACK the node publishes NBIRTH (seq 0, same bdSeq), then DBIRTH, then DDATA with
seq counting on modulo 256. An NCMD `Node Control/Rebirth` = true repeats both births. A clean stop publishes the
NDEATH itself before disconnecting. Nothing but the births goes out on a connection before its NBIRTH: each
publish checks, under a lock the network thread also takes before every CONNECT, that the node was born on the
connection that is current at that moment.

Delivery: each inspected part is queued by the frame loop (a list append, nothing else) and written to the node's
own SQLite outbox by this node's thread. DDATA is QoS 0 as the specification requires, so there is no PUBACK; a
row leaves the outbox only after the broker has answered an UNSUBSCRIBE sent after it on the same connection (the
broker handles a connection's packets in order, so the answer proves it took every DDATA before). Rows from
before the current birth (a broker outage, a restart) are sent with `is_historical` and their own time stamps."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_runtime.service.commands import CommandError
from edge_runtime.service.outbox import Outbox
from edge_runtime.service.plc_config import SparkplugConfig
from edge_runtime.service.publisher import apply_login
from edge_runtime.service.service_config import MqttConfig, OutboxConfig
from edge_runtime.service.sparkplug_payloads import (
    COMMAND_ERROR,
    REBIRTH,
    TRIGGER,
    PartRecord,
    SparkplugPayloadError,
    command_metrics,
    device_birth,
    device_data,
    node_birth,
    node_death,
    now_ms,
)

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
DEATH_QOS = 1  # the will; every other Sparkplug message of an edge node is QoS 0
COMMAND_QOS = 1
OUTBOX_FILE = "sparkplug-outbox.sqlite"
BD_SEQ_FILE = "sparkplug-bdseq"
_POLL_S = 0.25  # how often the node looks at state changes when nothing else wakes it


@dataclass(frozen=True)
class SparkplugTopics:
    group_id: str
    edge_node_id: str
    device_id: str

    def node(self, kind: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"

    def device(self, kind: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}/{self.device_id}"

    @property
    def confirm(self) -> str:
        """A filter never subscribed to: unsubscribing from it only asks the broker for an answer."""
        return f"{self.node('NCMD')}/confirm"


@dataclass(frozen=True)
class DeviceState:
    state: str
    model_version: str | None


class BdSeqFile:
    """The bdSeq of the last CONNECT sent, kept across restarts; written before that CONNECT goes out."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def following(self) -> int:
        """The bdSeq after the one of the last CONNECT; 0 on a first start (or a damaged file)."""
        try:
            last = int(self.path.read_text().strip())
        except (OSError, ValueError):
            last = -1
        return (last + 1) % 256

    def write(self, value: int) -> None:
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w") as stream:
            stream.write(f"{value}\n")
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(self.path)


class SparkplugNode:
    """Start with `start()`; the frame loop calls `on_part()`; `stop()` publishes NDEATH and disconnects."""

    def __init__(
        self,
        config: SparkplugConfig,
        mqtt_config: MqttConfig,
        default_node_id: str,
        state_dir: Path,
        outbox_config: OutboxConfig,
        device_state: Callable[[], DeviceState],
        trigger: Callable[[str], None],
    ) -> None:
        self.config = config
        self.mqtt_config = mqtt_config
        self.topics = SparkplugTopics(config.group_id, config.edge_node_id or default_node_id, config.device_id)
        self.device_state = device_state
        self.trigger = trigger
        state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(state_dir / OUTBOX_FILE, outbox_config.max_rows, outbox_config.max_age_s)
        self.bd_seq_file = BdSeqFile(state_dir / BD_SEQ_FILE)
        self.bd_seq = -1  # of the current connection
        self._will_bd_seq = self.bd_seq_file.following()  # registered by the next CONNECT
        self.births = 0  # NBIRTHs published, rebirths included
        self.connected = threading.Event()
        # Connections are numbered by the network thread before each CONNECT; the node thread publishes only on
        # the one it was born on. The lock makes "born on the current connection, so publish" one step.
        self._session_lock = threading.Lock()
        self._session = 0  # CONNECTs sent so far: the number of the current (or coming) connection
        self._born_session = -1  # the connection NBIRTH and DBIRTH went out on
        self._parts: queue.SimpleQueue[PartRecord] = queue.SimpleQueue()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()  # from paho's thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = 0
        self._birth_ms = 0
        self._last_part: PartRecord | None = None
        self._last_state: DeviceState | None = None
        self._command_error = ""
        self._last_sent = 0  # outbox seq of the last row sent on this connection
        self._unconfirmed: list[int] = []  # rows sent since the last confirmation request
        self._confirming: dict[int, list[int]] = {}  # UNSUBSCRIBE mid -> rows it confirms
        self._thread: threading.Thread | None = None
        self.client = self._make_client()

    # --- the frame loop's side -----------------------------------------------------------------------

    def on_part(self, record: PartRecord) -> None:
        """Called in the frame thread after a part was stored; only queues it."""
        self._parts.put(record)
        self._wake.set()

    # --- life cycle ----------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        config = self.mqtt_config
        client_id = f"{self.topics.group_id}-{self.topics.edge_node_id}-spb"
        # Sparkplug edge nodes use clean sessions: state is rebuilt by the births, not by the broker.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        apply_login(client, config)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sparkplug", daemon=True)
        self._thread.start()
        self.client.connect_async(self.mqtt_config.host, self.mqtt_config.port, self.mqtt_config.keepalive)
        self.client.loop_start()

    def stop(self, drain_s: float = 2.0) -> None:
        """Let queued parts go out for up to `drain_s`, publish NDEATH, disconnect; unsent rows stay on disk."""
        deadline = threading.Event()
        timer = threading.Timer(drain_s, deadline.set)
        timer.start()
        while self.connected.is_set() and not deadline.is_set() and (self._parts.qsize() or self._pending()):
            self._wake.set()
            deadline.wait(0.05)
        timer.cancel()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.connected.is_set():
            info = self.client.publish(self.topics.node("NDEATH"), node_death(self.bd_seq, now_ms()), DEATH_QOS)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
        self._store_parts()  # anything queued after the thread stopped
        self.outbox.close()

    def _pending(self) -> bool:
        return self.outbox.depth() > 0

    # --- paho callbacks (network thread): hand over, the node thread acts ----------------------------

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # Attempts that never got a session (broker away, refused) keep the number: only sessions count.
        self.bd_seq_file.write(self._will_bd_seq)
        client.will_set(self.topics.node("NDEATH"), node_death(self._will_bd_seq, now_ms()), DEATH_QOS)
        # Before the socket exists: a node thread still busy with the last connection cannot publish on this one.
        with self._session_lock:
            self._session += 1

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("broker refused the Sparkplug connection: %s", reason_code)
            return
        self.bd_seq, self._will_bd_seq = self._will_bd_seq, (self._will_bd_seq + 1) % 256
        client.subscribe([(self.topics.node("NCMD"), COMMAND_QOS), (self.topics.device("DCMD"), COMMAND_QOS)])
        self._events.put(("connected", self._session))
        self.connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("Sparkplug connection lost: %s; reconnecting with a new bdSeq", reason_code)
        self.connected.clear()
        self._events.put(("disconnected", None))
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        self._events.put(("command", (message.topic, message.payload)))
        self._wake.set()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        self._events.put(("confirmed", mid))
        self._wake.set()

    # --- the node thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_POLL_S)
            self._wake.clear()
            try:
                self._turn()
            except Exception:  # a bug here must not end the node; the next turn tries again
                log.exception("Sparkplug node turn failed")

    def _turn(self) -> None:
        self._store_parts()
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "connected":
                self._forget_connection()
                self._birth(value)
            elif kind == "disconnected":
                self._forget_connection()
            elif kind == "confirmed":
                for seq in self._confirming.pop(value, []):
                    self.outbox.delete(seq)
            elif kind == "command":
                self._command(*value)
        if self._born():
            self._report_state()
            self._send_rows()

    def _store_parts(self) -> None:
        while True:
            try:
                record = self._parts.get_nowait()
            except queue.Empty:
                return
            self.outbox.add(record.part_id, self.topics.device("DDATA"), record.to_bytes())
            if self._last_part is None or record.time_ms >= self._last_part.time_ms:
                self._last_part = record

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    def _born(self) -> bool:
        """NBIRTH and DBIRTH went out on the current connection (checked again under the lock when publishing)."""
        return self._born_session == self._session and self.connected.is_set()

    def _birth(self, session: int) -> None:
        """NBIRTH (seq 0) and DBIRTH with the current values on connection `session`, if it is still the
        current one; also on a rebirth request."""
        state = self.device_state()
        values: dict[str, Any] = self._last_part.values() if self._last_part else {}
        values |= {"Status/State": state.state, TRIGGER: "", COMMAND_ERROR: self._command_error}
        if state.model_version is not None:
            values["Model/Version"] = state.model_version
        with self._session_lock:
            if session != self._session or not self.connected.is_set():
                return  # that connection is gone: the next one's "connected" event births on it
            self._birth_ms = now_ms()
            self._seq = 1  # NBIRTH is 0
            self.client.publish(self.topics.node("NBIRTH"), node_birth(self.bd_seq, self._birth_ms), 0)
            dbirth = device_birth(self._next_seq(), values, self._birth_ms)
            self.client.publish(self.topics.device("DBIRTH"), dbirth, 0)
            self._born_session = session
        self._last_state = state
        self.births += 1
        log.info("Sparkplug NBIRTH/DBIRTH as %s (bdSeq %d)", self.topics.device("DBIRTH"), self.bd_seq)

    def _forget_connection(self) -> None:
        """Rows not confirmed on a connection are sent again on the next one."""
        self._confirming.clear()
        self._unconfirmed.clear()
        self._last_sent = 0

    def _report_state(self) -> None:
        state = self.device_state()
        changed: dict[str, Any] = {}
        if self._last_state is None or state.state != self._last_state.state:
            changed["Status/State"] = state.state
        previous_version = self._last_state.model_version if self._last_state else None
        if state.model_version is not None and state.model_version != previous_version:
            changed["Model/Version"] = state.model_version
        self._last_state = state
        if changed:
            self._publish_data(changed, now_ms(), historical=False)

    def _publish_data(self, values: dict[str, Any], metric_time_ms: int, historical: bool) -> bool:
        """One DDATA on the connection the node was born on; False when that connection is gone (not sent)."""
        payload = device_data(self._next_seq(), values, metric_time_ms, historical, now_ms())
        with self._session_lock:
            if self._born_session != self._session:
                return False
            return self.client.publish(self.topics.device("DDATA"), payload, 0).rc == mqtt.MQTT_ERR_SUCCESS

    def _request_confirmation(self) -> int | None:
        """Ask the broker for an answer on the connection the rows went out on; its mid, or None when gone."""
        with self._session_lock:
            if self._born_session != self._session:
                return None
            result, mid = self.client.unsubscribe(self.topics.confirm)
        return mid if result == mqtt.MQTT_ERR_SUCCESS else None

    def _send_rows(self) -> None:
        room = self.config.inflight - sum(len(rows) for rows in self._confirming.values())
        if room <= 0:
            return
        rows = self.outbox.after(self._last_sent, room)
        for row in rows:
            record = PartRecord.from_bytes(row.payload)
            if not self._publish_data(record.values(), record.time_ms, historical=record.time_ms < self._birth_ms):
                return  # the connection went; its events reset what was sent
            self._last_sent = row.seq
            self._unconfirmed.append(row.seq)
        if self._unconfirmed:
            mid = self._request_confirmation()
            if mid is not None:
                self._confirming[mid] = self._unconfirmed
                self._unconfirmed = []

    def _command(self, topic: str, data: bytes) -> None:
        try:
            metrics = command_metrics(data)
        except SparkplugPayloadError as error:
            log.warning("%s: %s", topic, error)
            return
        if topic == self.topics.node("NCMD"):
            for name, value in metrics:
                if name == REBIRTH and value is True:
                    log.info("rebirth requested")
                    self._birth(self._born_session)  # on the connection it was born on, if still current
                else:
                    log.warning("NCMD metric %r = %r is not understood; only %s = true is", name, value, REBIRTH)
            return
        for name, value in metrics:
            if name != TRIGGER:
                self._refuse(f"{name!r} is not a writable metric; only {TRIGGER} is")
                continue
            try:
                if not isinstance(value, str):
                    raise CommandError(f"{TRIGGER} takes a String part id, got {type(value).__name__}")
                self.trigger(value)
            except CommandError as error:
                self._refuse(str(error))
            else:
                self._command_error = ""
                self._publish_data({COMMAND_ERROR: ""}, now_ms(), historical=False)

    def _refuse(self, reason: str) -> None:
        log.warning("Sparkplug command refused: %s", reason)
        self._command_error = reason
        self._publish_data({COMMAND_ERROR: reason}, now_ms(), historical=False)  # not sent before the births
