"""The MQTT topics of one device, all under `<prefix>/<device_id>/` (documented in docs/MQTT.md)."""

from __future__ import annotations

from dataclasses import dataclass

# Quality of service and retain flag of each outgoing topic; results take the configured QoS.
AVAILABILITY_QOS, AVAILABILITY_RETAIN = 1, True
STATUS_QOS, STATUS_RETAIN = 1, True
MODEL_QOS, MODEL_RETAIN = 1, True
FEEDBACK_QOS, FEEDBACK_RETAIN = 1, True
STATS_QOS = 0
HEATMAP_QOS = 0
REPLY_QOS = 1
COMMAND_QOS = 1


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def model(self) -> str:
        """Installed and active model versions, update progress and the last update's outcome (retained)."""
        return f"{self.base}/model"

    @property
    def feedback(self) -> str:
        """Summary of operator feedback and of the overlay memory it taught (retained)."""
        return f"{self.base}/feedback"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def commands(self) -> str:
        """Subscription filter for every command; `#`, as some commands have two levels (feedback/undo)."""
        return f"{self.base}/cmd/#"

    def heatmap(self, part_id: str) -> str:
        # MQTT 3.1.1 has no message properties, so the part id travels in the topic.
        return f"{self.base}/heatmap/{part_id}"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def command_name(self, topic: str) -> str | None:
        """The command a topic carries, or None when it is not one of ours."""
        head = f"{self.base}/cmd/"
        return topic[len(head) :] if topic.startswith(head) else None
