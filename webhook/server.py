"""Serving an ASGI app over TLS with uvicorn, and picking up renewed certificates.

A mounted Secret is updated by swapping a symlink; new TLS handshakes must use the new
certificate without a restart and without dropping requests in flight. A certificate that
fails to load leaves the current one in service.

The connections are guarded (``GuardedProtocol``): headers must arrive within a time
limit and only so many connections are served at once, so slow or idle clients cannot
hold the server. Shutdown drains (``DrainingServer``): the API server does not retry a
POST it has written, so no request written to us may go unanswered.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook.serving import Lifecycle, Limits

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


@dataclass
class _Refusals:
    """Connections refused over the limit, logged at most once a second."""

    count: int = 0
    logged_at: float = field(default=0.0)

    def add(self, limit: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= 1.0:
            log.warning(
                "connection limit reached, closing new connections",
                extra={"max_connections": limit, "refused": self.count},
            )
            self.logged_at, self.count = now, 0


LINGER_SECONDS = 1.0
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a header deadline, a connection limit, and
    ``Connection: close`` on every response while draining."""

    def __init__(
        self, *args: Any, limits: Limits, lifecycle: Lifecycle, refusals: _Refusals, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.limits, self.lifecycle, self.refusals = limits, lifecycle, refusals
        self.header_timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.refused = True
            self.refusals.add(self.limits.max_connections)
            transport.abort()
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self.refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self.lifecycle.draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def _arm(self) -> None:
        self._disarm()
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
    being answered (with ``Connection: close``) for ``drain_seconds``, then the listener
    closes, requests already on their way are answered for ``settle_seconds``, and only
    then are idle connections closed. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, limits: Limits, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.limits, self.lifecycle = limits, lifecycle
        self.drain_until: float | None = None

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
        for server in self.servers:
            server.close()
        log.info("listener closed", extra={"connections": len(self.server_state.connections)})
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
    ``background`` tasks run alongside."""
    lifecycle = lifecycle or Lifecycle()
    limits = limits or Limits()
    protocol = functools.partial(
        GuardedProtocol, limits=limits, lifecycle=lifecycle, refusals=_Refusals()
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,  # type: ignore[arg-type]
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # the API server calls directly; nothing forwards for it
        lifespan="off",
        timeout_graceful_shutdown=int(limits.shutdown_timeout),
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load certificate {cert} / key {key}: {exc}") from None
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    reloader = CertificateReloader(config.ssl, Path(cert), Path(key), on_certificate)
    on_certificate(Path(cert))
    lifecycle.loaded = True
    # Start-up leaves ~65k long-lived objects (FastAPI, pydantic, the kubernetes client);
    # without freezing them every full collection scans them all: a 10-20 ms stall.
    gc.freeze()
    tasks = (lambda: reloader.watch(reload_every), *background)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(DrainingServer(config, limits, lifecycle), tasks))


async def _serve(
    server: uvicorn.Server, tasks: tuple[Callable[[], Coroutine[Any, Any, None]], ...]
) -> None:
    running = [asyncio.create_task(task()) for task in tasks]
    try:
        await server.serve()
    finally:
        for task in running:
            task.cancel()
