"""The HTTP layer: FastAPI routes around ``admission.review``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from webhook import __version__
from webhook.admission import BadRequest, review
from webhook.config import MeshConfig

MAX_BODY = 3 * 2**20
"""The API server caps requests at 3 MiB; anything larger is not from it."""
BODY_TIMEOUT = 10.0
"""Seconds to receive a body: the longest webhook timeout the API server allows."""

log = logging.getLogger("proxy_injector.admission")


class TooLarge(Exception):
    pass


def _json(status: int, payload: dict[str, object]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": message})


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length {declared!r} is not a number")
        if int(declared) > MAX_BODY:
            raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    config: MeshConfig,
    ready: Callable[[], bool] = lambda: True,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    app = FastAPI(title="proxy-injector", version=__version__, docs_url=None, redoc_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(body_timeout):
                body = await _read_body(request)
            reviewed = review(body, config)
        except TooLarge:
            return _error(413, f"body larger than {MAX_BODY} bytes")
        except TimeoutError:
            return _error(408, f"body not received within {body_timeout:g}s")
        except BadRequest as exc:
            log.warning("bad request", extra={"error": str(exc)})
            return _error(400, str(exc))
        log.info(
            "admission",
            extra={
                "uid": reviewed.uid,
                "namespace": reviewed.namespace,
                "pod": reviewed.pod,
                "decision": reviewed.outcome,
                "reason": reviewed.reason,
                "detail": reviewed.message,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return Response(reviewed.body, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready"})

    return app
