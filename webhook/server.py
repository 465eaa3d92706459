"""Serving an ASGI app over TLS with uvicorn, and picking up renewed certificates.

A mounted Secret is updated by swapping a symlink; new TLS handshakes must use the new
certificate without a restart and without dropping requests in flight. A certificate that
fails to load leaves the current one in service.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

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
    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self.context, self.cert, self.key = context, cert, key
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
        return True

    async def watch(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.check()


def run(
    app: Any,
    *,
    host: str,
    port: int,
    cert: Path,
    key: str | Path,
    on_loaded: Callable[[], None] = lambda: None,
    reload_every: float = 10.0,
) -> None:
    """Serve ``app`` on HTTPS (TLS 1.2+) until interrupted; ``on_loaded`` runs once the
    certificate is loaded; the certificate files are re-read every ``reload_every`` s."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load certificate {cert} / key {key}: {exc}") from None
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    reloader = CertificateReloader(config.ssl, Path(cert), Path(key))
    on_loaded()
    # Start-up leaves ~65k long-lived objects (FastAPI, pydantic, the kubernetes client);
    # without freezing them every full collection scans them all: a 10-20 ms stall.
    gc.freeze()
    asyncio.run(_serve(uvicorn.Server(config), reloader, reload_every))


async def _serve(server: uvicorn.Server, reloader: CertificateReloader, every: float) -> None:
    watcher = asyncio.create_task(reloader.watch(every))
    try:
        await server.serve()
    finally:
        watcher.cancel()
