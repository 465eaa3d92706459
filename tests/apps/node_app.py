"""An app that uses a node agent: it reads the agent's POSIX segment from /dev/shm and its
System V segment from the IPC namespace, asks the agent's socket, then serves what it read
over HTTP on its own socket, ``PROXY_UDS_PATH``, as the injector told it.

    python node_app.py AGENT_SOCKET
"""

import ctypes
import mmap
import os
import socket
import sys

from node_agent import POSIX_NAME, SHM_RDONLY, SIZE, SYSV_KEY, libc
from unix_server import answer_each, http_ok


def read_posix() -> str:
    fd = libc.shm_open(POSIX_NAME.encode(), os.O_RDONLY, 0)
    if fd < 0:
        return f"error {ctypes.get_errno()}"
    with mmap.mmap(fd, SIZE, prot=mmap.PROT_READ) as memory:
        data = memory[:SIZE]
    os.close(fd)
    return data.rstrip(b"\0").decode()


def read_sysv() -> str:
    segment = libc.shmget(SYSV_KEY, 0, 0)
    if segment < 0:
        return f"error {ctypes.get_errno()}"
    address = libc.shmat(segment, None, SHM_RDONLY)
    return ctypes.string_at(address, SIZE).rstrip(b"\0").decode()


def ask_agent(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        try:
            conn.connect(path)
            return conn.recv(100).decode()
        except OSError as exc:
            return f"error {exc.errno}"


def main() -> None:
    body = (f"posix={read_posix()}; sysv={read_sysv()}; agent={ask_agent(sys.argv[1])}\n").encode()
    path = os.environ["PROXY_UDS_PATH"]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o666)  # Envoy runs as another user
    answer_each(server, http_ok(body))


if __name__ == "__main__":
    main()
