"""paho-mqtt's client, made to hear a QoS 2 refusal.

Under MQTT 5 a broker refuses a QoS 2 message in its PUBREC (e.g. 0x87 not authorised, 0x97 quota exceeded) and
then drops it. paho 2 ignores that reason code, sends PUBREL anyway and reports the PUBCOMP that follows as a
success, so a refused result would be deleted from the outbox as if delivered. This client keeps the refusal
and reports it in place of the PUBCOMP's success."""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class RefusalAwareClient(mqtt.Client):
    """A paho client whose `on_publish` gets the PUBREC's failure reason for a QoS 2 message the broker refused."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - paho's own signature
        super().__init__(*args, **kwargs)
        self._refused_at_pubrec: dict[int, ReasonCode] = {}  # mid -> reason; only touched by the network thread

    def _handle_pubrec(self) -> mqtt.MQTTErrorCode:
        mid, reason = _pubrec_reason(bytes(self._in_packet["packet"]), self._protocol)
        if reason.is_failure:
            self._refused_at_pubrec[mid] = reason
        else:  # a PUBREC for a message sent again after reconnecting: the broker took it this time
            self._refused_at_pubrec.pop(mid, None)
        return super()._handle_pubrec()

    def _do_on_publish(self, mid: int, reason_code: ReasonCode, properties: Properties) -> mqtt.MQTTErrorCode:
        refusal = self._refused_at_pubrec.pop(mid, None)
        return super()._do_on_publish(mid, refusal or reason_code, properties)


def _pubrec_reason(packet: bytes, protocol: int) -> tuple[int, ReasonCode]:
    """(packet id, reason code) of a PUBREC's variable header; MQTT 3.1.1 and a 2-byte MQTT 5 PUBREC mean success."""
    (mid,) = struct.unpack("!H", packet[:2])
    code = packet[2] if protocol == mqtt.MQTTv5 and len(packet) > 2 else 0
    try:
        return mid, ReasonCode(PacketTypes.PUBREC, identifier=code)
    except (KeyError, ValueError):  # a code paho does not know for PUBREC: any value from 0x80 is a failure
        return mid, ReasonCode(PacketTypes.PUBREC, identifier=0x80 if code >= 0x80 else 0)
