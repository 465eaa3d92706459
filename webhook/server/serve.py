"""Serving an ASGI app over TLS with uvicorn, and picking up renewed certificates.

A mounted Secret is updated by swapping a symlink; new TLS handshakes must use the new
certificate without a restart and without dropping requests in flight. A certificate that
fails to load leaves the current one in service.

The connections are guarded: a TLS handshake must finish within a time limit and only so
many connections are held at once, those still in their handshake dropped first
(``listener``); headers must arrive within a time limit and stay within
a size (``GuardedProtocol``), so slow, idle or oversized clients cannot hold the server.
Shutdown drains (``DrainingServer``): the API server does not retry a POST it has written,
so no request written to us may go unanswered.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook.server.listener import (
    Connections,
    Refusals,
    TlsListener,
    listening_socket,
    raise_open_files_limit,
)
from webhook.server.settings import Lifecycle, Limits

log = logging.getLogger("proxy_injector.tls")


class CertificateError(RuntimeError):
    pass


def _fingerprint(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a file or the symlink in front of it is replaced."""
    result = []
    for path in paths:
        try:
            info = os.stat(path)
            result.append((os.path.realpath(path), info.st_mtime_ns, info.st_size))
        except OSError:
            result.append((str(path), -1, -1))
    return tuple(result)


class CertificateReloader:
    def __init__(
        self,
        context: ssl.SSLContext,
        cert: Path,
        key: Path,
        on_certificate: Callable[[Path], None] = lambda path: None,
    ) -> None:
        self.context, self.cert, self.key = context, cert, key
        self.on_certificate = on_certificate
        self.seen = _fingerprint(cert, key)

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate went into service."""
        now = _fingerprint(self.cert, self.key)
        if now == self.seen:
            return False
        self.seen = now
        try:
            # Load into a scratch context first: a failed load into the live one could
            # leave it with the new certificate and the old key.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "new certificate not loaded, keeping the current one",
                extra={"cert": str(self.cert), "error": str(exc)},
            )
            return False
        log.info("certificate reloaded", extra={"cert": str(self.cert)})
        self.on_certificate(self.cert)
        return True

    async def watch(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()


LINGER_SECONDS = 1.0
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
INTERMEDIATE_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
"""Mozilla's "intermediate" TLS 1.2 suites less DHE: ECDHE and AEAD only (TLS 1.3's are
all AEAD and set apart)."""


def server_context(cert: Path, key: str | Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_TLS12_CIPHERS)
    context.load_cert_chain(cert, key)
    return context


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a header deadline and size, and ``Connection:
    close`` on every response while draining. (The connection limit is ``Connections``',
    counted from the accept on.)"""

    def __init__(
        self, *args: Any, limits: Limits, lifecycle: Lifecycle, refusals: Refusals, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.limits, self.lifecycle, self.refusals = limits, lifecycle, refusals
        self.header_timer: asyncio.TimerHandle | None = None
        self.header_bytes = self.header_fields = 0
        self.too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        reading_headers = self.header_timer is not None
        super().data_received(data)
        # Counted once fed: a chunk that ends the headers may carry the body as well.
        if reading_headers and self.header_timer is not None:
            self.header_bytes += len(data)
            if self.header_bytes > self.limits.max_header_bytes:
                self.too_large = True
                self.send_400_response("")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_fields += 1
        if self.header_fields > self.limits.max_header_fields:
            self.too_large = True
            raise ValueError("too many header fields")  # uvicorn answers send_400_response
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if not self.too_large:
            super().send_400_response(msg)
            return
        self._disarm()
        self.refusals.too_large(self.limits)
        self.transport.write(_TOO_LARGE)
        self.transport.close()
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.lifecycle.draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def _arm(self) -> None:
        self._disarm()
        self.header_bytes = self.header_fields = 0
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _too_slow(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()
            # A TLS close waits for the client's close_notify (uvloop: up to 30 s), which a
            # slow client need not send: drop the connection if it is still there.
            self.loop.call_later(LINGER_SECONDS, self.transport.abort)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain on SIGTERM: /readyz fails at once, requests go on
    being answered (with ``Connection: close``) for ``drain_seconds`` (new connections
    still accepted: the endpoint is leaving the Service meanwhile), then the listener
    closes without resetting a connection (``TlsListener.stop``), handshakes under way
    finish, requests already on their way are answered for ``settle_seconds``, and only
    then are idle connections closed. A second signal stops at once."""

    def __init__(
        self,
        config: uvicorn.Config,
        limits: Limits,
        lifecycle: Lifecycle,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(config)
        self.limits, self.lifecycle, self.context = limits, lifecycle, context
        self.drain_until: float | None = None
        self.refusals = Refusals()
        self.connections = Connections(limits, self.refusals)
        self.listener: TlsListener | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        self.connections.established = self.server_state.connections
        make_http = functools.partial(
            GuardedProtocol,
            config=config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            limits=self.limits,
            lifecycle=self.lifecycle,
            refusals=self.refusals,
        )
        try:
            listener = listening_socket(config.host, config.port, config.backlog)
        except OSError as exc:
            log.error("cannot listen", extra={"host": config.host, "port": config.port,
                                              "error": str(exc)})  # fmt: skip
            sys.exit(3)
        self.listener = TlsListener(listener, make_http, self.context, self.connections)
        self.listener.start()
        self.servers = [self.listener]  # type: ignore[list-item]
        log.info("serving", extra={"url": f"https://{config.host}:{config.port}"})
        self.started = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_until is not None:
            self.should_exit = self.force_exit = True
            return
        self.lifecycle.draining = True
        self.drain_until = time.monotonic() + self.limits.drain_seconds
        log.info(
            "draining",
            extra={"signal": signal.Signals(sig).name, "seconds": self.limits.drain_seconds},
        )

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        if self.listener is not None:
            await self.listener.stop(0 if self.force_exit else self.limits.close_grace_seconds)
            if not self.force_exit:
                await self.listener.handshakes(self.limits.handshake_timeout)
        if not self.force_exit:
            await asyncio.sleep(self.limits.settle_seconds)
        await super().shutdown(sockets)


def run(
    app: Any,
    *,
    host: str,
    port: int,
    cert: Path,
    key: str | Path,
    lifecycle: Lifecycle | None = None,
    limits: Limits | None = None,
    reload_every: float = 10.0,
    on_certificate: Callable[[Path], None] = lambda path: None,
    background: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = (),
) -> None:
    """Serve ``app`` on HTTPS (TLS 1.2+) until SIGTERM or SIGINT and a drain;
    ``lifecycle.loaded`` is set once the certificate is loaded; the certificate files are
    re-read every ``reload_every`` s, ``on_certificate`` told of each one in service;
    ``background`` tasks run alongside.

    The listening socket is ours (``TlsListener``): each connection's TLS handshake is
    bounded in time and counted against the connection limit before uvicorn's HTTP
    protocol sees it."""
    lifecycle = lifecycle or Lifecycle()
    limits = limits or Limits()
    try:
        context = server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load certificate {cert} / key {key}: {exc}") from None
    raise_open_files_limit()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the API server calls directly; nothing forwards for it
        lifespan="off",
        timeout_graceful_shutdown=int(limits.shutdown_timeout),
    )
    config.load()
    reloader = CertificateReloader(context, Path(cert), Path(key), on_certificate)
    on_certificate(Path(cert))
    lifecycle.loaded = True
    # Start-up leaves ~65k long-lived objects (FastAPI, pydantic, the kubernetes client);
    # without freezing them every full collection scans them all: a 10-20 ms stall.
    gc.freeze()
    tasks = (lambda: reloader.watch(reload_every), *background)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(DrainingServer(config, limits, lifecycle, context), tasks))


async def _serve(
    server: uvicorn.Server, tasks: tuple[Callable[[], Coroutine[Any, Any, None]], ...]
) -> None:
    running = [asyncio.create_task(task()) for task in tasks]
    try:
        await server.serve()
    finally:
        for task in running:
            task.cancel()
