"""Results out: a paho-mqtt client that publishes the outbox in order and deletes each row only once the
broker acknowledged it; other messages (status, stats, heatmaps, replies) go out directly when connected."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

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


class Publisher:
    """Owns the MQTT connection; paho reconnects with backoff and retransmits unacked QoS 1 messages, so each
    outbox row is handed to paho once per process and at most `inflight` rows wait for acks at any time."""

    def __init__(self, config: MqttConfig, topics: Topics, outbox: Outbox, on_message: MessageHandler) -> None:
        self.config = config
        self.topics = topics
        self.outbox = outbox
        self.on_message = on_message
        self.on_connected: Callable[[], None] = lambda: None
        self.connected = threading.Event()
        self.published = 0
        self._acks: queue.Queue[int] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._last_handed = 0
        self._thread: threading.Thread | None = None
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        config = self.config
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self.topics.prefix}-{self.topics.device_id}"
        )
        client.will_set(self.topics.availability, b"offline", AVAILABILITY_QOS, AVAILABILITY_RETAIN)
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        # paho's own queue only ever holds the in-flight window plus a few status messages.
        client.max_inflight_messages_set(config.inflight)
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
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self.client.loop_start()
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

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s:%d", self.config.host, self.config.port)
        client.subscribe(self.topics.commands, COMMAND_QOS)
        client.publish(self.topics.availability, b"online", AVAILABILITY_QOS, AVAILABILITY_RETAIN)
        self.connected.set()
        self._wake.set()
        self.on_connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("disconnected from the broker: %s; paho reconnects with backoff", reason_code)
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        # Called from paho's network thread: only hand the ack over, the publisher thread owns the outbox rows.
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        try:
            self.on_message(message.topic, message.payload)
        except Exception:  # a command handler bug must not take the network thread down
            log.exception("handling %s failed", message.topic)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            self._settle_acks()
            if self.connected.is_set():
                self._hand_over()

    def _settle_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(mid, None)
            if seq is not None:  # acks of status/stats messages have no row
                self.outbox.delete(seq)
                self.published += 1

    def _hand_over(self) -> None:
        room = self.config.inflight - len(self._inflight)
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

    @property
    def inflight(self) -> int:
        return len(self._inflight)
