"""The accept loop the socket apps share: one fixed answer per connection, for at most
two minutes, every wait bounded."""

import socket
import time


def http_ok(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    return head % len(body) + body


def answer_each(server: socket.socket, answer: bytes, read_first: bool = True) -> None:
    """``read_first``: read the request (HTTP) before answering; else answer at once."""
    server.listen(16)
    server.settimeout(1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(5)
            try:
                if read_first:
                    conn.recv(65536)
                conn.sendall(answer)
            except OSError:
                pass
