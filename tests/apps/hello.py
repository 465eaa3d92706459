"""The smallest ASGI and WSGI apps, for serving on a Unix socket in tests.

``/slow?<seconds>`` answers after that many seconds: a request still in flight when the
app is told to stop. ``/static/<bytes>.bin`` answers that many bytes (at most 1 MiB), as
nginx serves the benchmarks' files."""

import asyncio
import functools

BODY = b"hello over a unix socket\n"
MAX_SIZED = 2**20


@functools.lru_cache(maxsize=16)
def sized(path: str) -> bytes:
    count = path.removeprefix("/static/").removesuffix(".bin")
    return b"x" * min(int(count), MAX_SIZED) if count.isdigit() else BODY


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(float(scope["query_string"] or 0))
    body = sized(scope["path"]) if scope["path"].startswith("/static/") else BODY
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [BODY]
