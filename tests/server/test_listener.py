"""The webhook's listening socket on the real kernel: before it closes, it stops taking new
TCP handshakes but keeps the connections already completed, so closing it resets none."""

from __future__ import annotations

import errno
import select
import socket

import pytest

from webhook.server.listener import listening_socket, refuse_handshakes


def _connecting(host: str, port: int) -> socket.socket:
    """A client whose SYN is on its way (non-blocking connect)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family, socket.SOCK_STREAM)
    client.setblocking(False)
    assert client.connect_ex((host, port)) == errno.EINPROGRESS
    return client


def _connected(client: socket.socket, within: float) -> int | None:
    """The connect's outcome (0 or an errno) once known within ``within`` s, else None."""
    _, writable, _ = select.select([], [client], [], within)
    return client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if writable else None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_refused_handshakes_leave_queued_connections_served_and_new_ones_refused(host) -> None:
    listener = listening_socket(host, 0, 16)
    port = listener.getsockname()[1]
    queued = socket.create_connection((host, port), timeout=5)
    late = None
    try:
        assert refuse_handshakes(listener)
        late = _connecting(host, port)
        assert _connected(late, 0.5) is None, "a new handshake completed after the refusal"
        accepted, _ = listener.accept()  # the connection completed before it is still there
        with accepted:
            queued.sendall(b"ping")
            accepted.settimeout(5)
            assert accepted.recv(4) == b"ping"
            accepted.sendall(b"pong")
            assert queued.recv(4) == b"pong"
        with pytest.raises(BlockingIOError):
            listener.accept()  # the late client never reached the queue
        listener.close()
        # Its SYN is sent again (after 1 s) and meets a closed port: refused, not reset.
        assert _connected(late, 5) == errno.ECONNREFUSED
    finally:
        for sock in (queued, late, listener):
            if sock is not None:
                sock.close()
