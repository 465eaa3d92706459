"""The HTTP layer: FastAPI routes around ``admission.review``.

Nothing a client sends can make a route raise: an exception reaching Starlette would be
answered with a bare 500 and the keep-alive connection dropped, losing the next request
on it. A review of a large body runs on a worker thread so that the event loop goes on
answering /healthz and the other reviews meanwhile; the ordinary pod of a few KiB is
reviewed inline, where a thread hop would cost more than the review.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from webhook import __version__
from webhook.admission import BadRequest, Reviewed, review
from webhook.engine.config import MeshConfig
from webhook.engine.policy import Reason
from webhook.events import EventSender, event, subject
from webhook.live_config import LiveConfig
from webhook.metrics import CONTENT_TYPE, Metrics

MAX_BODY = 3 * 2**20
"""The API server caps requests at 3 MiB; anything larger is not from it."""
BODY_TIMEOUT = 10.0
"""Seconds to receive a body: the longest webhook timeout the API server allows."""
INLINE_BODY = 64 * 2**10
"""Bodies up to this size are reviewed on the event loop (a pod this size takes < 2 ms)."""
REVIEW_THREADS = 2

log = logging.getLogger("proxy_injector.admission")


class TooLarge(Exception):
    pass


def _json(status: int, payload: dict[str, object], close: bool = False) -> Response:
    headers = {"connection": "close"} if close else None
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


def _error(status: int, message: str, close: bool = False) -> Response:
    """``close``: the rest of the body was not read, so the connection cannot be reused."""
    return _json(status, {"error": message}, close)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest(f"Content-Length {declared[:20]!r} is not a number")
        if len(declared) > 10 or int(declared) > MAX_BODY:
            raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _log(reviewed: Reviewed, started: float) -> None:
    fields = {
        "uid": reviewed.uid,
        "namespace": reviewed.namespace,
        "pod": reviewed.pod,
        "decision": reviewed.outcome,
        "reason": reviewed.reason,
        "detail": reviewed.message,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if reviewed.error is None:
        log.info("admission", extra=fields)
    else:
        error = reviewed.error
        log.error(
            "admission failed", extra=fields, exc_info=(type(error), error, error.__traceback__)
        )


_NO_EVENTS = {Reason.NOT_A_POD.code, Reason.NOT_CREATE.code}


def _report(events: EventSender, answer: Reviewed) -> None:
    if answer.dry_run or answer.reason in _NO_EVENTS:
        return
    involved = subject(answer.pod_object, answer.namespace, answer.pod)
    events.record(event(involved, answer.pod, answer.outcome, answer.reason, answer.message))


def create_app(
    config: MeshConfig | LiveConfig,
    ready: Callable[[], bool] = lambda: True,
    body_timeout: float = BODY_TIMEOUT,
    events: EventSender | None = None,
) -> FastAPI:
    """``config``: fixed, or a ``LiveConfig`` whose ``current`` each review reads once.
    ``events``: where Events about admissions go (none without a Kubernetes API)."""
    app = FastAPI(title="proxy-injector", version=__version__, docs_url=None, redoc_url=None)
    reviewers = ThreadPoolExecutor(REVIEW_THREADS, thread_name_prefix="review")
    live = config if isinstance(config, LiveConfig) else LiveConfig(None, config, Metrics())
    metrics = live.metrics

    async def reviewed(body: bytes) -> Reviewed:
        mesh = live.current
        if len(body) <= INLINE_BODY:
            answer = review(body, mesh)
        else:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(reviewers, review, body, mesh)
        if events is not None and mesh.events:
            _report(events, answer)
        return answer

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(body_timeout):
                body = await _read_body(request)
        except TooLarge:
            return _error(413, f"body larger than {MAX_BODY} bytes", close=True)
        except TimeoutError:
            return _error(408, f"body not received within {body_timeout:g}s", close=True)
        except BadRequest as exc:
            return _error(400, str(exc), close=True)
        except Exception:
            log.exception("reading the request failed")
            return _error(400, "the request body could not be read", close=True)
        try:
            answer = await reviewed(body)
        except BadRequest as exc:
            log.warning("bad request", extra={"error": str(exc)})
            return _error(400, str(exc))
        except Exception:
            # review() turns the engine's failures into denials; this is the last net.
            log.exception("review failed")
            return _error(500, "internal error; see the webhook's log")
        _log(answer, started)
        metrics.admitted(answer.outcome, answer.reason, started)
        return Response(answer.body, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready"})

    return app
