"""The plant-floor links beside the service: the Sparkplug B edge node and the OPC UA server. Both get every
inspected part from the service's result listener, in the frame thread, and only queue it there."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edge_runtime.service.sparkplug import DeviceState, SparkplugNode
from edge_runtime.service.sparkplug_payloads import PartRecord, now_ms

if TYPE_CHECKING:  # the service imports this module
    from edge_runtime.service.opcua_server import OpcUaServer
    from edge_runtime.service.service import InspectedPart, Service

log = logging.getLogger(__name__)


class PlcLinkError(ValueError):
    """A configured link that cannot start (port taken, unreadable certificate or password)."""


class PlcLinks:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.sparkplug: SparkplugNode | None = None
        self.opcua: OpcUaServer | None = None

    def start(self) -> None:
        """Start what the config enables; raises PlcLinkError naming the link and the reason."""
        config = self.service.config
        if config.opcua.enabled:
            from edge_runtime.service.opcua_server import OpcUaServer  # asyncua only where it is used

            server = OpcUaServer(config.opcua, config.state_dir / "opcua", self.device_state, self.counters)
            server.trigger = self.service.request_trigger
            server.start()  # raises PlcLinkError
            self.opcua = server
        if config.sparkplug.enabled:
            node = SparkplugNode(
                config.sparkplug,
                config.mqtt,
                config.mqtt.device_id,
                config.state_dir,
                config.outbox,
                self.device_state,
                self.service.request_trigger,
            )
            node.start()
            self.sparkplug = node
        if self.sparkplug is not None or self.opcua is not None:
            self.service.result_listeners.append(self.on_part)

    def device_state(self) -> DeviceState:
        status = self.service.status_payload()
        return DeviceState(status["state"], status["model_version"])

    def counters(self) -> dict[str, int]:
        service = self.service
        return {
            "inspected": service.stats.inspected,
            "defects": service.stats.defects,
            "errors": service.stats.errors,
            "dropped": service.source.dropped if service.source is not None else 0,
        }

    def on_part(self, part: InspectedPart) -> None:
        record = PartRecord.from_result(part.payload, now_ms(), self.counters())
        if self.sparkplug is not None:
            self.sparkplug.on_part(record)
        if self.opcua is not None:
            self.opcua.on_part(record, part.payload["defects"])

    def stop(self) -> None:
        for link in (self.sparkplug, self.opcua):
            if link is None:
                continue
            try:
                link.stop()
            except Exception:  # stopping one link must not keep the other running
                log.exception("stopping %r failed", link)
