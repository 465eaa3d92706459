"""A server that does what most hand-written ones do: bind() and nothing else, so the
socket's mode is whatever the umask leaves. Answers every connection with a fixed HTTP 200."""

import socket
import sys
import time

from hello import BODY

path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
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
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)
                + BODY
            )
        except OSError:
            pass
