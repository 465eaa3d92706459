"""The listening socket and the connections it hands over, before HTTP sees them.

The socket is ours rather than uvicorn's so that each accepted connection's TLS handshake is
bounded in time and counted against the connection limit (``Connections``,
``TlsListener``), and so that closing it loses no connection the kernel has already
completed: new handshakes are refused first (``refuse_handshakes``), the ones in flight
finish, what waits in the accept queue is taken, and only then is the socket closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.server.settings import Limits

log = logging.getLogger("proxy_injector.tls")


@dataclass
class _Throttled:
    """Refusals of one kind, logged at most once a second with how many there were."""

    message: str
    count: int = 0
    logged_at: float = 0.0

    def add(self, **extra: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= 1.0:
            log.warning(self.message, extra={**extra, "refused": self.count})
            self.logged_at, self.count = now, 0


class Refusals:
    """Connections refused over the limit, and requests whose headers are too large."""

    def __init__(self) -> None:
        self.connections = _Throttled("connection limit reached, closing new connections")
        self.headers = _Throttled("request headers too large, answered 431")

    def add(self, limit: int) -> None:
        self.connections.add(max_connections=limit)

    def too_large(self, limits: Limits) -> None:
        self.headers.add(
            max_header_bytes=limits.max_header_bytes, max_header_fields=limits.max_header_fields
        )


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: many runtimes start processes at 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open files limit raised", extra={"from": soft, "to": hard})


class Connections:
    """Every connection from its accept on. At the limit, a new one takes the place of the
    oldest still in its TLS handshake (a flood of half-open handshakes cannot keep out a
    client that completes its own), or is refused when all are established."""

    def __init__(self, limits: Limits, refusals: Refusals) -> None:
        self.limits, self.refusals = limits, refusals
        self.handshaking: dict[socket.socket, None] = {}
        """In the order they arrived (dicts keep it)."""
        self.established: set[Any] = set()
        """uvicorn's own set of HTTP connections (its server state's)."""

    def admit(self, conn: socket.socket) -> bool:
        if len(self.handshaking) + len(self.established) >= self.limits.max_connections:
            if not self.handshaking:
                self.refusals.add(self.limits.max_connections)
                return False
            oldest = next(iter(self.handshaking))
            self.forget(oldest)
            with contextlib.suppress(OSError):
                oldest.shutdown(socket.SHUT_RDWR)  # its handshake fails, and it is closed
        self.handshaking[conn] = None
        return True

    def forget(self, conn: socket.socket) -> None:
        self.handshaking.pop(conn, None)


class TlsListener:
    """Each accepted connection does its TLS handshake within ``handshake_timeout``,
    counted against the connection limit, before the HTTP protocol sees it.

    ``stop`` closes the socket without resetting a connection the kernel has completed;
    uvicorn then closes it as one of its servers (a no-op by then)."""

    def __init__(
        self,
        listener: socket.socket,
        make_http: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        connections: Connections,
    ) -> None:
        self.listener, self.make_http = listener, make_http
        self.context, self.connections = context, connections
        self.tasks: set[asyncio.Task[None]] = set()
        self.accepting: asyncio.Task[None] | None = None
        self.failures = _Throttled("accept failed, connections wait in the backlog")

    def start(self) -> None:
        self.accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.listener)
            except OSError as exc:
                self.failures.add(errno=exc.errno or 0)  # out of file descriptors, say
                await asyncio.sleep(0.1)
                continue
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        if not self.connections.admit(conn):
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._handshake(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self.make_http,
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.connections.limits.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError):
            conn.close()
        finally:
            self.connections.forget(conn)

    async def stop(self, grace: float) -> int:
        """Refuse new handshakes, go on accepting for ``grace`` s (handshakes in flight
        complete), take what waits in the accept queue, close; the number taken last.

        Closing a listening socket resets every connection in its accept queue, and any
        handshake in flight: clients that have connected see their TLS handshake reset."""
        if self.listener.fileno() < 0:
            return 0
        refused = refuse_handshakes(self.listener)
        if refused:
            await asyncio.sleep(grace)
        if self.accepting is not None:
            self.accepting.cancel()
        taken = 0
        while taken < self.connections.limits.max_connections:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            conn.setblocking(False)
            self._take(conn)
            taken += 1
        self.listener.close()
        log.info("listener closed", extra={"taken_from_queue": taken, "syn_filter": refused})
        return taken

    async def handshakes(self, timeout: float) -> None:
        """Until every handshake in progress has ended, at most ``timeout`` s."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    def close(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        self.listener.close()

    async def wait_closed(self) -> None:
        return None


SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_SYN_ONLY_DROPPED = (
    (0x30, 0, 0, 13),  # ldb [13]: the TCP header's flags (a TCP socket's filter sees it)
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN: a new connection's first packet
    (0x06, 0, 0, 0),  # ret #0: dropped, as if never sent; the client sends it again
    (0x06, 0, 0, 0xFFFFFFFF),  # ret: everything else kept
)
"""A classic BPF socket filter: a listening socket stops starting handshakes but completes
the ones under way (their ACK passes), and a client whose SYN was dropped retries it and
meets the closed port: refused, not reset."""


def refuse_handshakes(listener: socket.socket) -> bool:
    """Attach ``_SYN_ONLY_DROPPED`` (no privilege needed); False where the kernel refuses."""
    code = b"".join(struct.pack("HBBI", *insn) for insn in _SYN_ONLY_DROPPED)
    buffer = ctypes.create_string_buffer(code)
    program = struct.pack("HL", len(_SYN_ONLY_DROPPED), ctypes.addressof(buffer))
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
    except OSError as exc:
        log.warning("cannot refuse new handshakes before closing", extra={"error": str(exc)})
        return False
    return True


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    listener = socket.create_server((host, port), family=family, backlog=backlog)
    listener.setblocking(False)
    return listener
