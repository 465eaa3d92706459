"""Kubernetes API calls over asyncio streams, so that a caller's ``asyncio.wait_for``
bounds a whole call (connecting, the status line, every byte of the body), which a socket
timeout cannot: it bounds each read, not the request."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
MERGE_PATCH = "application/merge-patch+json"
IDLE_CONNECTIONS = 32
"""Connections kept open between calls (keep-alive): a burst of calls need not connect
(and, over TLS, shake hands) for each one."""
CALL_SECONDS = 10.0
"""Every call's deadline, connecting and the whole answer included: an API server (or a
connection to it) that stopped answering without closing cannot hold a caller forever."""
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ApiError(Exception):
    """The API answered, and not with success; ``status`` 0: it could not be reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SilentWatch(ApiError):
    """A watch that sent nothing, not even a bookmark, within its bound."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True)
class Api:
    host: str
    port: int
    tls: ssl.SSLContext | None
    token_file: Path | None = None
    user_agent: str = "proxy-injector"
    idle: list[Connection] = field(default_factory=list, compare=False, repr=False)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, user_agent: str = "proxy-injector") -> Api:
        """A plain-HTTP API (kubectl proxy, or a test's fake)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--kube-api {url!r}: expected http://HOST:PORT")
        return cls(parts.hostname, parts.port or 80, None, user_agent=user_agent)

    @classmethod
    def in_cluster(cls, user_agent: str = "proxy-injector") -> Api:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT"),
        )
        if not host or not port:
            raise ValueError("KUBERNETES_SERVICE_HOST/PORT are not set: give --kube-api")
        tls = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        return cls(host, int(port), tls, SERVICE_ACCOUNT / "token", user_agent)

    def _head(
        self, method: str, path: str, body: bytes | None, content_type: str, keep: bool
    ) -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: application/json",
            f"User-Agent: {self.user_agent}",
            "Connection: keep-alive" if keep else "Connection: close",
        ]
        if self.token_file:
            # Read each time: the kubelet rotates projected tokens.
            lines.append(f"Authorization: Bearer {self.token_file.read_text().strip()}")
        if body is not None:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _connect(self) -> Connection:
        return await asyncio.open_connection(self.host, self.port, ssl=self.tls, limit=MAX_HEAD)

    async def _send(self, connection: Connection, request: bytes) -> bytes:
        reader, writer = connection
        try:
            writer.write(request)
            await writer.drain()
            return await reader.readuntil(b"\r\n\r\n")
        except asyncio.CancelledError:
            writer.close()  # the deadline passed: this connection's answer is never read
            raise

    def reset(self) -> None:
        """Close every kept-alive connection: after a call that got no answer, the others
        may be as dead (a gone peer, a NAT that forgot them), and new ones are made."""
        while self.idle:
            self.idle.pop()[1].close()

    async def _exchange(self, request: bytes, keep: bool) -> tuple[Connection, bytes]:
        """The response head, on an idle connection when there is one (again on a new one
        if the server had closed it meanwhile), else on a new connection."""
        while keep and self.idle:
            connection = self.idle.pop()
            if connection[1].is_closing():
                continue
            try:
                return connection, await self._send(connection, request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                connection[1].close()
        try:
            connection = await self._connect()
            return connection, await self._send(connection, request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ApiError(0, f"cannot reach the Kubernetes API at {self.url}: {exc}") from None

    async def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        keep: bool = False,
    ) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
        data = None if body is None else json.dumps(body).encode()
        request = self._head(method, path, data, content_type, keep) + (data or b"")
        (reader, writer), head = await self._exchange(request, keep)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            writer.close()
            raise ApiError(0, f"the Kubernetes API sent {status_line[:80]!r}") from None
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, reader, writer

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = CALL_SECONDS,
    ) -> dict[str, Any]:
        """The decoded answer; ApiError for any other status, and with status 0 when the
        API cannot be reached or does not answer within ``timeout``."""
        try:
            return await asyncio.wait_for(self._call(method, path, body, content_type), timeout)
        except TimeoutError:
            self.reset()
            raise ApiError(0, f"{method} {path}: no answer within {timeout:g}s") from None

    async def _call(self, method: str, path: str, body: Any, content_type: str) -> dict[str, Any]:
        status, headers, reader, writer = await self._open(
            method, path, body, content_type, keep=True
        )
        done = False
        try:
            payload = await _body(reader, headers)
            done = True
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ApiError(
                0, f"the Kubernetes API's answer to {method} {path} broke: {exc}"
            ) from None
        finally:
            framed = "content-length" in headers or "chunked" in headers.get(
                "transfer-encoding", ""
            )
            reusable = done and framed and headers.get("connection", "").lower() != "close"
            if reusable and len(self.idle) < IDLE_CONNECTIONS:
                self.idle.append((reader, writer))
            else:
                writer.close()
        try:
            decoded = json.loads(payload) if payload else {}
        except ValueError:
            decoded = {"message": payload[:200].decode(errors="replace")}
        if not 200 <= status < 300:
            message = decoded.get("message", "") if isinstance(decoded, dict) else ""
            raise ApiError(status, f"{method} {path}: {status} {message}".strip())
        return decoded

    async def watch(self, path: str, idle: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch, one JSON object per line, until the server ends it.
        ``idle``: SilentWatch when nothing at all (no event, no bookmark) arrives for that
        long, as from a server or a path that stopped without closing the connection."""
        try:
            status, headers, reader, writer = await asyncio.wait_for(
                self._open("GET", path), idle or CALL_SECONDS
            )
        except TimeoutError:
            raise SilentWatch(f"watch {path}: no answer within {idle or CALL_SECONDS:g}s") from None
        try:
            if status != 200:
                payload = await asyncio.wait_for(_body(reader, headers), CALL_SECONDS)
                raise ApiError(status, f"watch {path}: {status} {payload[:200]!r}")
            pending = b""
            chunks = _chunks(reader, headers)
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), idle)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise SilentWatch(f"watch {path}: nothing for {idle:g}s") from None
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            writer.close()


async def _chunks(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    if headers.get("transfer-encoding", "").lower() != "chunked":
        while chunk := await reader.read(65536):
            yield chunk
        return
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            return
        if size > MAX_BODY:
            raise ValueError(f"a chunk of {size} bytes")
        yield await reader.readexactly(size)
        await reader.readexactly(2)


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        size = int(headers["content-length"])
        if size > MAX_BODY:
            raise ValueError(f"a body of {size} bytes")
        return await reader.readexactly(size)
    parts, total = [], 0
    async for chunk in _chunks(reader, headers):
        total += len(chunk)
        if total > MAX_BODY:
            raise ValueError(f"a body over {MAX_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)
