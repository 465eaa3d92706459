"""A node agent in miniature: it publishes a POSIX shared-memory segment (shm_open, in its
/dev/shm) and a System V segment (shmget, in its IPC namespace), and answers on a Unix
socket in a node directory. ``node_app.py`` reads all three.

    python node_agent.py SOCKET_PATH     (prints "ready" once all three exist)
"""

import ctypes
import mmap
import os
import socket
import sys

POSIX_NAME = "/agent-stats"
SYSV_KEY = 0x5EED
SIZE = 4096
MESSAGE = b"hello from the agent"
IPC_CREAT, SHM_RDONLY = 0o1000, 0o10000

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


def publish_posix() -> None:
    fd = libc.shm_open(POSIX_NAME.encode(), os.O_CREAT | os.O_RDWR, 0o644)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "shm_open")
    os.ftruncate(fd, SIZE)
    with mmap.mmap(fd, SIZE) as memory:
        memory[: len(MESSAGE)] = MESSAGE
    os.close(fd)


def publish_sysv() -> None:
    segment = libc.shmget(SYSV_KEY, SIZE, IPC_CREAT | 0o644)
    if segment < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    address = libc.shmat(segment, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "shmat")
    ctypes.memmove(address, MESSAGE, len(MESSAGE))


def main() -> None:
    from unix_server import answer_each  # run as a script, from this folder

    publish_posix()
    publish_sysv()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sys.argv[1])
    print("ready", flush=True)
    answer_each(server, b"agent ok", read_first=False)


if __name__ == "__main__":
    main()
