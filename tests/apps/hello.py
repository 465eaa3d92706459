"""The smallest ASGI and WSGI apps, for serving on a Unix socket in tests.

``/slow?<seconds>`` answers after that many seconds: a request still in flight when the
app is told to stop."""

import asyncio

BODY = b"hello over a unix socket\n"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(float(scope["query_string"] or 0))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [BODY]
