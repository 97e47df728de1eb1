"""The product end to end on one machine: a local mosquitto broker, a conveyor of labelled test parts, the edge
service as a child process, and the demo and soak runs built on them. An application over train_host, export
and edge_runtime; none of those imports it."""
