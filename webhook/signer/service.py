"""Running the signer: its controller, its health port and its signals; and
``rotate-ca``, which writes the next CA into the Secret for the leader to roll."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import signal

from webhook.engine.config import MeshConfig
from webhook.kube import health
from webhook.kube.api import Api, ApiError
from webhook.signer import authority
from webhook.signer.controller import Options, Signer, utc_now

log = logging.getLogger("proxy_injector.signer")
__all__ = ["Options", "rotate_ca", "serve"]


async def serve(api: Api, mesh: MeshConfig, options: Options, host: str, port: int) -> None:
    """Until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signer = Signer(api, mesh, options)
    http = await health.serve(host, port, signer.reasons, signer.metrics.registry)
    running = asyncio.create_task(signer.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # raises what stopped it
    except ApiError as exc:
        raise ValueError(str(exc)) from None
    finally:
        for task in (running, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        http.close()


async def rotate_ca(api: Api, namespace: str, after: float) -> str:
    path = f"/api/v1/namespaces/{namespace}/secrets/{authority.SECRET}"
    try:
        secret = await api.call("GET", path)
    except ApiError as exc:
        raise ValueError(f"secret {namespace}/{authority.SECRET}: {exc}") from None
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    metadata = secret.setdefault("metadata", {})
    found = authority.from_secret(data, metadata.get("annotations") or {})
    if found.next is not None:
        when = authority.stamp(found.next_from) or "once its bundle is out"
        raise ValueError(f"a rotation is already under way: the next CA issues from {when}")
    now = utc_now()
    rotated = authority.rotate(found, now, dt.timedelta(seconds=after))
    data, annotations = authority.to_secret(rotated)
    secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
    try:
        await api.call("PUT", path, secret)
    except ApiError as exc:
        raise ValueError(f"secret {namespace}/{authority.SECRET}: {exc}") from None
    return (
        f"a new CA is in secret {namespace}/{authority.SECRET}: the signer publishes it in the "
        f"trust bundle and issues from it {after:g} s later"
    )
