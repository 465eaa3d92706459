"""The small HTTP port of a process that runs beside the cluster (the CNI agent, the
signer): ``/healthz``, ``/readyz`` saying what is not ready, and ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

READ_SECONDS = 5.0

Reasons = Callable[[], list[str]]


def _answer(path: str, reasons: Reasons, registry: CollectorRegistry) -> tuple[int, str, bytes]:
    if path == "/healthz":
        return 200, "text/plain", b"ok\n"
    if path == "/readyz":
        found = reasons()
        body = ("\n".join(found) if found else "ready").encode() + b"\n"
        return (503 if found else 200), "text/plain", body
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)
    return 404, "text/plain", b"not found\n"


async def _handle(
    reasons: Reasons,
    registry: CollectorRegistry,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
        method, path, *_ = head.decode("latin-1").split(" ", 2)
        if method != "GET":
            status, content_type, body = 405, "text/plain", b"GET only\n"
        else:
            status, content_type, body = _answer(path, reasons, registry)
        writer.write(
            f"HTTP/1.1 {status} -\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (
        TimeoutError,
        ValueError,
        ConnectionError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ):
        pass
    finally:
        writer.close()


async def serve(
    host: str, port: int, reasons: Reasons, registry: CollectorRegistry
) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: _handle(reasons, registry, r, w), host, port)
