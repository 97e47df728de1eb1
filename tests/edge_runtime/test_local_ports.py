import socket

from edge_runtime.local_ports import free_port


def test_a_free_port_can_be_bound_at_once():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
