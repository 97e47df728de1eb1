"""Results out: a paho-mqtt client that publishes the outbox in order and deletes each row only once the
broker acknowledged it; other messages (status, stats, heatmaps, replies) go out directly when connected.

MQTT 5 is used where the broker speaks it, because only MQTT 5 acknowledgements carry a reason code: a result
the broker refuses (e.g. denied by its ACL) is then kept aside instead of deleted. Under MQTT 3.1.1 a broker
acknowledges a publish it drops, and the device cannot tell."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.service.mqtt_client import RefusalAwareClient
from edge_runtime.service.mqtt_topics import AVAILABILITY_QOS, AVAILABILITY_RETAIN, COMMAND_QOS, Topics
from edge_runtime.service.outbox import Outbox
from edge_runtime.service.service_config import MqttConfig

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class CredentialError(ValueError):
    """The MQTT password cannot be read."""


def read_password(config: MqttConfig) -> str | None:
    """The password from its file or systemd credential (never from the YAML); None when there is none."""
    if config.password_credential is not None:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise CredentialError(
                f"mqtt.password_credential: {config.password_credential!r} needs $CREDENTIALS_DIRECTORY "
                "(set by systemd LoadCredential=)"
            )
        path = Path(folder) / config.password_credential
    elif config.password_file is not None:
        path = config.password_file
    else:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise CredentialError(f"MQTT password file {path} cannot be read: {error.strerror or error}") from error
    return lines[0] if lines else ""


def apply_login(client: mqtt.Client, config: MqttConfig) -> None:
    """The broker login and TLS settings of a client, the same for every connection the device opens."""
    if config.username:
        client.username_pw_set(config.username, read_password(config))
    if config.tls is not None:
        tls = config.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )


class Publisher:
    """Owns the MQTT connection; paho reconnects with backoff and retransmits unacked messages, so each outbox
    row is handed to paho once per process and at most `inflight` rows wait for acks at any time.

    Order through a reconnect: paho resends what was in flight only after the on-connect callback, while a row
    handed meanwhile would go out at once, ahead of them. So after a reconnect no new row is handed until every
    row handed on an earlier connection is acknowledged.

    Its thread survives any error of the outbox (a full or failing disk): acks it cannot record yet are kept
    and recorded later, and `problem()` tells the health checks what is wrong."""

    def __init__(self, config: MqttConfig, topics: Topics, outbox: Outbox, on_message: MessageHandler) -> None:
        self.config = config
        self.topics = topics
        self.outbox = outbox
        self.on_message = on_message
        self.on_connected: Callable[[], None] = lambda: None
        self.on_problem: Callable[[str], None] = lambda text: None  # called once per new problem
        self.connected = threading.Event()
        self.published = 0
        self.protocol = mqtt.MQTTv311 if config.protocol == "3.1.1" else mqtt.MQTTv5
        self.store_error: str | None = None  # the outbox refused to record acks or refusals
        self.last_turn = time.monotonic()  # the thread's heartbeat
        self._acks: queue.Queue[tuple[int, str | None]] = queue.Queue()  # (mid, the broker's refusal or None)
        self._settled: list[tuple[int, str | None]] = []  # (seq, refusal) acked but not yet recorded
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._connections = 0  # successful connects so far, counted by the network thread
        self._connections_seen = 0  # ... as far as the publisher thread has taken them into account
        self._carried_over: set[int] = set()  # mids handed on an earlier connection and not yet acked
        self._last_handed = 0
        # On each connection the rows the broker refused are offered once more (its ACL may have changed),
        # oldest first and before new rows; the cursor is the last one offered on this connection.
        self._offering_refused = False
        self._refused_cursor = 0
        self._downgrade = False
        self._thread: threading.Thread | None = None
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        config = self.config
        client_id = f"{self.topics.prefix}-{self.topics.device_id}"
        if self.protocol == mqtt.MQTTv5:
            client = RefusalAwareClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:  # a kept session holds commands sent while the device is offline
            client = RefusalAwareClient(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=config.session_expiry_s == 0,
            )
        client.will_set(self.topics.availability, b"offline", AVAILABILITY_QOS, AVAILABILITY_RETAIN)
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        # paho's own queue only ever holds the in-flight window plus a few status messages.
        client.max_inflight_messages_set(config.inflight)
        apply_login(client, config)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _connect(self) -> None:
        config = self.config
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = config.session_expiry_s
            self.client.connect_async(
                config.host,
                config.port,
                config.keepalive,
                clean_start=config.session_expiry_s == 0,
                properties=properties,
            )
        else:
            self.client.connect_async(config.host, config.port, config.keepalive)
        self.client.loop_start()

    def start(self) -> None:
        self._connect()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A new row is in the outbox."""
        self._wake.set()

    def send(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Publish a non-result message now; dropped (False) while disconnected, as it is re-sent on connect
        (status) or superseded by the next one (stats, heatmaps)."""
        if not self.connected.is_set():
            return False
        return self.client.publish(topic, payload, qos, retain).rc == mqtt.MQTT_ERR_SUCCESS

    def stop(self, drain_s: float = 3.0) -> None:
        """Give waiting results `drain_s` seconds to be acked, announce offline, then disconnect; whatever is
        not acked by then stays in the outbox for the next start."""
        deadline = time.monotonic() + drain_s
        while self.connected.is_set() and self.outbox.depth() > 0 and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        if self.connected.is_set():
            info = self.client.publish(self.topics.availability, b"offline", AVAILABILITY_QOS, AVAILABILITY_RETAIN)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    def problem(self, stall_s: float = 10.0) -> str | None:
        """What keeps results from going out, or None: the thread ended or hangs, or the outbox fails."""
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the publisher thread has ended"
        silent = time.monotonic() - self.last_turn
        if self._thread is not None and silent > stall_s:
            return f"the publisher has not turned for {silent:.1f} s"
        if self.store_error is not None:
            return f"the outbox cannot record acknowledgements: {self.store_error}"
        if self.outbox.disk_error is not None:
            return f"results wait in memory, the disk refuses writes: {self.outbox.disk_error}"
        return None

    def alive(self, stall_s: float = 10.0) -> bool:
        """The thread runs and turns (a restart would mend it otherwise; a full disk it would not)."""
        thread = self._thread
        running = thread is None or thread.is_alive() or self._stop.is_set()
        return running and time.monotonic() - self.last_turn <= stall_s

    # --- paho callbacks (network thread) ---------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            if self.protocol == mqtt.MQTTv5 and self.config.protocol == "auto" and _is_version_refusal(reason_code):
                log.warning("the broker does not speak MQTT 5; using 3.1.1, which cannot report refused results")
                self._downgrade = True
                self._wake.set()
                return
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s:%d (MQTT %s)", self.config.host, self.config.port, _protocol_name(self.protocol))
        client.subscribe(self.topics.commands, COMMAND_QOS)
        client.publish(self.topics.availability, b"online", AVAILABILITY_QOS, AVAILABILITY_RETAIN)
        self._connections += 1
        self.connected.set()
        self._wake.set()
        self.on_connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("disconnected from the broker: %s; paho reconnects with backoff", reason_code)
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        # Called from paho's network thread: only hand the ack over, the publisher thread owns the outbox rows.
        refusal = str(reason_code) if reason_code is not None and reason_code.is_failure else None
        self._acks.put((mid, refusal))
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        try:
            self.on_message(message.topic, message.payload)
        except Exception:  # a command handler bug must not take the network thread down
            log.exception("handling %s failed", message.topic)

    # --- the publisher thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.5, backoff))
            self._wake.clear()
            self.last_turn = time.monotonic()
            try:
                self._turn()
            except sqlite3.Error as error:  # a full or failing disk: keep going, the next turn tries again
                backoff = min(5.0, max(0.5, backoff * 2))
                self._report_store_error(str(error))
                continue
            except Exception:  # a bug must not end publishing for the rest of the process's life
                log.exception("publishing failed; trying again")
                backoff = min(5.0, max(0.5, backoff * 2))
                continue
            backoff = 0.0
            if self.store_error is not None:
                log.info("the outbox records acknowledgements again")
                self.store_error = None

    def _turn(self) -> None:
        if self._downgrade:
            self._switch_to_311()
        if self.outbox.disk_error is not None:
            self.outbox.flush()
        self._collect_acks()
        self._record_settled()
        if self.connected.is_set():
            self._note_reconnect()
            self._hand_over()

    def _report_store_error(self, text: str) -> None:
        if self.store_error is None:
            log.error("the outbox cannot record acknowledgements (%s); retrying", text)
            self.on_problem(f"the outbox cannot record acknowledgements: {text}")
        self.store_error = text

    def _collect_acks(self) -> None:
        while True:
            try:
                mid, refusal = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(mid, None)
            self._carried_over.discard(mid)
            if seq is not None:  # acks of status/stats messages have no row
                self._settled.append((seq, refusal))

    def _record_settled(self) -> None:
        """Delete acked rows, set refused ones aside; an entry leaves the list only once recorded."""
        while self._settled:
            seq, refusal = self._settled[0]
            if refusal is None:
                self.outbox.delete(seq)
                self.published += 1
            else:
                self.outbox.refuse(seq, refusal)
                log.error("the broker refused result row %d: %s; it is kept and offered again", seq, refusal)
                self.on_problem(f"the broker refused a result: {refusal}")
            self._settled.pop(0)

    def _note_reconnect(self) -> None:
        """On the first turn of a new connection: what is in flight now is what paho resends on it, and the
        refused rows are to be offered again."""
        if self._connections_seen != self._connections:
            self._connections_seen = self._connections
            self._carried_over = set(self._inflight)
            self._offering_refused = True
            self._refused_cursor = 0

    def _hand_over(self) -> None:
        room = self.config.inflight - len(self._inflight)
        if room <= 0 or self._carried_over:  # what paho resends goes first
            return
        if self._offering_refused:
            room -= self._offer_refused_rows(room)
            if self._offering_refused:  # they are older than any new row
                return
        self._offer_new_rows(room)

    def _offer_refused_rows(self, room: int) -> int:
        """The next refused rows of this connection's pass; returns how many were handed to paho."""
        rows = self.outbox.refused_rows(room, after=self._refused_cursor)
        if len(rows) < room:
            self._offering_refused = False
        waiting = set(self._inflight.values())  # e.g. one offered on the last connection, resent by paho
        handed = 0
        for row in rows:
            self._refused_cursor = row.seq
            if row.seq not in waiting:
                info = self.client.publish(row.topic, row.payload, self.config.qos)
                self._inflight[info.mid] = row.seq
                handed += 1
        return handed

    def _offer_new_rows(self, room: int) -> None:
        if room <= 0:
            return
        for row in self.outbox.after(self._last_handed, room):
            info = self.client.publish(row.topic, row.payload, self.config.qos)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("publishing result %s failed (%s); retrying", row.part_id, mqtt.error_string(info.rc))
                return
            # NO_CONN still queues the message in paho, which sends it after reconnecting.
            self._inflight[info.mid] = row.seq
            self._last_handed = row.seq

    def _switch_to_311(self) -> None:
        """A new client for a broker without MQTT 5; nothing was delivered through the old one."""
        self._downgrade = False
        self.client.loop_stop()
        self.protocol = mqtt.MQTTv311
        if self._inflight:
            self._last_handed = min(self._inflight.values()) - 1
            self._inflight.clear()
            self._carried_over.clear()
        self.client = self._make_client()
        self._connect()

    @property
    def inflight(self) -> int:
        return len(self._inflight)


def _is_version_refusal(reason_code: ReasonCode) -> bool:
    return reason_code.value in (0x01, 0x84)  # 3.1.1 "unacceptable protocol version", 5 "unsupported"


def _protocol_name(protocol: int) -> str:
    return "5" if protocol == mqtt.MQTTv5 else "3.1.1"
