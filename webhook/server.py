"""Serving an ASGI app over TLS with uvicorn, the way the webhook is served."""

from __future__ import annotations

import gc
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn


class CertificateError(RuntimeError):
    pass


def run(
    app: Any,
    *,
    host: str,
    port: int,
    cert: Path,
    key: str | Path,
    on_loaded: Callable[[], None] = lambda: None,
) -> None:
    """Serve ``app`` on HTTPS (TLS 1.2+) until interrupted; ``on_loaded`` runs once the
    certificate is loaded."""
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
    on_loaded()
    # Start-up leaves ~65k long-lived objects (FastAPI, pydantic, the kubernetes client);
    # without freezing them every full collection scans them all: a 10-20 ms stall.
    gc.freeze()
    uvicorn.Server(config).run()
