"""The HTTP layer around ``admission.review``.

POST /mutate, the path every pod creation takes, is answered as plain ASGI: FastAPI's
routing, dependency solving and middleware cost more than the review itself
(bench/admission.py). /healthz, /readyz and /metrics are FastAPI routes.

Nothing a client sends can make /mutate raise: an exception reaching uvicorn would be
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
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from webhook import __version__
from webhook.engine.config import MeshConfig
from webhook.engine.reasons import Reason
from webhook.server.admission import BadRequest, Reviewed, review
from webhook.server.events import EventSender, event, subject
from webhook.server.live_config import LiveConfig
from webhook.server.metrics import CONTENT_TYPE, Metrics

MAX_BODY = 3 * 2**20
"""The API server caps requests at 3 MiB; anything larger is not from it."""
BODY_TIMEOUT = 10.0
"""Seconds to receive a body: the longest webhook timeout the API server allows."""
INLINE_BODY = 64 * 2**10
"""Bodies up to this size are reviewed on the event loop (a pod this size takes < 2 ms)."""
REVIEW_THREADS = 2

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
Headers = tuple[tuple[bytes, bytes], ...]
CLOSE: Headers = ((b"connection", b"close"),)
"""For an answer sent before the body was read: the connection cannot be reused."""
ALLOW_POST: Headers = ((b"allow", b"POST"),)

log = logging.getLogger("proxy_injector.admission")


class TooLarge(Exception):
    pass


def _json(status: int, payload: dict[str, object]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _content_length(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The body, or None when the client went away before sending it all."""
    declared = _content_length(scope)
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest(f"Content-Length {declared[:20]!r} is not a number")
        if len(declared) > 10 or int(declared) > MAX_BODY:
            raise TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes, extra: Headers = ()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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


class Admissions:
    """POST /mutate as an ASGI app: the body read within ``body_timeout``, reviewed, logged,
    counted, reported as an Event and answered."""

    def __init__(self, live: LiveConfig, body_timeout: float, events: EventSender | None) -> None:
        self.live, self.body_timeout, self.events = live, body_timeout, events
        self.reviewers = ThreadPoolExecutor(REVIEW_THREADS, thread_name_prefix="review")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            method = scope["method"][:10]
            await _error(send, 405, f"{method} /mutate: only POST is answered", ALLOW_POST)
            return
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await _read_body(scope, receive)
        except TooLarge:
            await _error(send, 413, f"body larger than {MAX_BODY} bytes", CLOSE)
            return
        except TimeoutError:
            message = f"body not received within {self.body_timeout:g}s"
            await _error(send, 408, message, CLOSE)
            return
        except BadRequest as exc:
            await _error(send, 400, str(exc), CLOSE)
            return
        except Exception:
            log.exception("reading the request failed")
            await _error(send, 400, "the request body could not be read", CLOSE)
            return
        if body is None:
            return  # the client is gone: nobody to answer
        await self.answer(send, body, started)

    async def answer(self, send: Send, body: bytes, started: float) -> None:
        try:
            reviewed = await self.review(body)
        except BadRequest as exc:
            log.warning("bad request", extra={"error": str(exc)})
            await _error(send, 400, str(exc))
            return
        except Exception:
            # review() turns the engine's failures into denials; this is the last net.
            log.exception("review failed")
            await _error(send, 500, "internal error; see the webhook's log")
            return
        _log(reviewed, started)
        self.live.metrics.admitted(reviewed.outcome, reviewed.reason, started)
        await _answer(send, 200, reviewed.body)

    async def review(self, body: bytes) -> Reviewed:
        mesh = self.live.current
        if len(body) <= INLINE_BODY:
            answer = review(body, mesh)
        else:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self.reviewers, review, body, mesh)
        if self.events is not None and mesh.events:
            _report(self.events, answer)
        return answer


async def _error(send: Send, status: int, message: str, extra: Headers = ()) -> None:
    await _answer(send, status, orjson.dumps({"error": message}), extra)


class Webhook:
    """The ASGI app uvicorn serves: /mutate to ``Admissions``, the rest to FastAPI."""

    def __init__(self, admissions: Admissions, api: FastAPI) -> None:
        self.admissions, self.api = admissions, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mutate":
            await self.admissions(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(
    config: MeshConfig | LiveConfig,
    ready: Callable[[], bool] = lambda: True,
    body_timeout: float = BODY_TIMEOUT,
    events: EventSender | None = None,
) -> Webhook:
    """``config``: fixed, or a ``LiveConfig`` whose ``current`` each review reads once.
    ``events``: where Events about admissions go (none without a Kubernetes API)."""
    live = config if isinstance(config, LiveConfig) else LiveConfig(None, config, Metrics())
    api = FastAPI(title="proxy-injector", version=__version__, docs_url=None, redoc_url=None)

    @api.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @api.get("/metrics")
    async def prometheus() -> Response:
        return Response(live.metrics.exposition(), media_type=CONTENT_TYPE)

    @api.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready"})

    return Webhook(Admissions(live, body_timeout, events), api)
