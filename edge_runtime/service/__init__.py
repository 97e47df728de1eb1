"""The streaming service: frames from a GStreamer pipeline are inspected and the results told over MQTT.

`python -m edge_runtime run --config configs/runtime/<site>.yaml` runs it; see docs/MQTT.md for the topics.
"""
