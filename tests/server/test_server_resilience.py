"""The running server under clients that misbehave, and while it shuts down: keep-alive
connections survive errors, slow headers are cut off, connections are bounded, the event
loop stays free during a large review, and SIGTERM loses no request.

Each test runs `proxy-injector serve` for real over TLS, verified against its CA."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import hostile
from tests.processes import free_port, stop, wait_for
from tests.support import CORPUS, asgi_call, load_case, review
from webhook.engine.config import MeshConfig
from webhook.server import app as app_module
from webhook.server.admission import review as real_review
from webhook.server.app import create_app

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]
BROKEN_ENGINE = """
import sys
from webhook import engine
def broken(*args, **kwargs):
    raise KeyError("containerPort")
engine.probes.changes = broken
from webhook.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Served:
    port: int
    ca: Path
    process: object
    log: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def connection(self, timeout: float = 10) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "localhost", self.port, context=self.context(), timeout=timeout
        )

    def tls_socket(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context().wrap_socket(raw, server_hostname="localhost")


@contextmanager
def served(
    tmp_path: Path, *flags: str, broken_engine: bool = False, open_files: int | None = None
) -> Iterator[Served]:
    """`proxy-injector serve --self-signed` in a process of its own; with ``broken_engine``
    its engine raises an exception nobody foresaw; ``open_files``: its soft RLIMIT_NOFILE
    at start, as a container runtime may set it."""
    import os
    import subprocess

    port = free_port()
    log = tmp_path / "serve.log"
    prefix = ["-c", BROKEN_ENGINE] if broken_engine else ["-m", "webhook"]
    args = ["serve", "--self-signed", "--certs-dir", str(tmp_path), "--port", str(port), *flags]
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, *prefix, *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=None if open_files is None else _soft_open_files(open_files),
        )
    server = Served(port, tmp_path / "ca.crt", process, log)
    try:
        wait_for(lambda: server.ca.exists() and _answers(server), 30, "serve to start")
        yield server
    finally:
        stop(process)


def _soft_open_files(limit: int):
    import resource

    def apply() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return apply


def _answers(server: Served) -> bool:
    try:
        return status(server.connection(), "GET", "/healthz")[0] == 200
    except OSError:
        return False


def status(connection: http.client.HTTPSConnection, method: str, path: str, body: bytes = b""):
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read(), response.getheader("connection")


def test_a_bad_request_and_an_internal_error_keep_the_connection(tmp_path) -> None:
    with served(tmp_path, broken_engine=True) as server:
        connection = server.connection()
        code, _, _ = status(connection, "POST", "/mutate", b"{not json")
        assert code == 400
        kept = connection.sock
        code, body, header = status(connection, "POST", "/mutate", json.dumps(review(WEB)).encode())
        assert code == 200
        answer = json.loads(body)["response"]
        assert answer["status"]["code"] == 500
        assert answer["status"]["reason"] == "InternalError"
        assert header != "close"
        code, _, _ = status(connection, "GET", "/healthz")
        assert code == 200
        assert connection.sock is kept, "the server closed the keep-alive connection"
    logged = [json.loads(line) for line in server.log.read_text().splitlines()]
    failed = [line for line in logged if line["msg"] == "admission failed"]
    assert failed and "KeyError: 'containerPort'" in failed[0]["exception"]


def test_slow_headers_are_cut_off_while_others_are_served(tmp_path) -> None:
    with served(tmp_path, "--header-timeout-seconds", "1") as server:
        slow = server.tls_socket()
        started = time.monotonic()
        closed_after = None
        header = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 40
        try:
            for byte in header:
                slow.sendall(bytes([byte]))
                # Meanwhile a well-behaved client is answered.
                assert status(server.connection(), "GET", "/healthz")[0] == 200
                time.sleep(0.2)
                if time.monotonic() - started > 6:
                    break
        except OSError:
            closed_after = time.monotonic() - started
        slow.settimeout(5)
        try:
            reply = slow.recv(1024)
        except OSError:
            reply = b""
        closed_after = closed_after or time.monotonic() - started
        slow.close()
        assert reply in (
            b"",
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        assert closed_after < 4, f"a slow client held its connection {closed_after:.1f} s"


def test_connections_past_the_limit_are_closed_and_the_rest_served(tmp_path) -> None:
    with served(tmp_path, "--max-connections", "3") as server:
        held = [server.connection() for _ in range(3)]
        for connection in held:
            assert status(connection, "GET", "/healthz")[0] == 200
        # Refused at its accept, before any TLS work: the handshake fails.
        with pytest.raises(OSError):
            extra = server.tls_socket()
            extra.settimeout(5)
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert extra.recv(1024) == b"", "a connection over the limit was served"
            extra.close()
            raise OSError("closed unanswered")
        for connection in held:
            assert status(connection, "GET", "/healthz")[0] == 200
            connection.close()
        wait_for(lambda: _answers(server), 10, "a connection to be served again")


def test_a_large_review_runs_off_the_event_loop(monkeypatch) -> None:
    """While a 3 MiB review is in progress, /healthz and small reviews are answered."""
    started = threading.Event()

    def slow_review(body: bytes, config: MeshConfig):
        if len(body) > app_module.INLINE_BODY:
            started.set()
            time.sleep(1.5)  # holds its thread, as a CPU-bound review would
        return real_review(body, config)

    monkeypatch.setattr(app_module, "review", slow_review)
    app = create_app(MeshConfig())
    large = hostile.body(hostile.env_and_ports())
    assert app_module.INLINE_BODY < len(large) <= app_module.MAX_BODY
    small = json.dumps(review(WEB)).encode()
    finished: dict[str, float] = {}

    async def call(name: str, method: str, path: str, body: bytes = b"") -> int:
        status_code, _ = await asgi_call(app, method, path, body)
        finished[name] = time.monotonic()
        return status_code

    async def scenario() -> list[int]:
        big = asyncio.create_task(call("large", "POST", "/mutate", large))
        while not started.is_set():
            assert not big.done(), "the large review was not started"
            await asyncio.sleep(0.01)
        others = [call("healthz", "GET", "/healthz"), call("small", "POST", "/mutate", small)]
        return [*await asyncio.gather(*others), await big]

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [200, 200, 200]
    assert finished["healthz"] < finished["large"]
    assert finished["small"] < finished["large"]


@dataclass
class Client:
    """A keep-alive client that writes reviews one after another until the server
    refuses it a connection; a request written and never answered is lost."""

    server: Served
    body: bytes
    answered: int = 0
    lost: list[str] = field(default_factory=list)
    closes: int = 0
    refused: bool = False

    def run(self, deadline: float) -> None:
        connection = self.server.connection(timeout=20)
        while time.monotonic() < deadline:
            if connection.sock is None:
                try:
                    connection.connect()
                except OSError:
                    self.refused = True
                    return
            try:
                code, body, header = status(connection, "POST", "/mutate", self.body)
            except (OSError, http.client.HTTPException) as exc:
                self.lost.append(repr(exc))
                connection.close()
                continue
            if code == 200 and json.loads(body)["response"]["allowed"]:
                self.answered += 1
            else:
                self.lost.append(f"HTTP {code}")
            if header == "close":
                self.closes += 1
                connection.close()


@dataclass
class Arrivals:
    """A client that opens a new connection for every review, as an API server does when
    its kept-alive connection was closed: connecting is refused once the listener is
    closed (it stops after a few refusals); a connection made and then reset, or a review
    written and never answered, is lost."""

    server: Served
    body: bytes
    answered: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)

    def run(self, deadline: float) -> None:
        request = (
            b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(self.body)
        ) + self.body
        context = self.server.context()
        while time.monotonic() < deadline and self.refused < 3:
            try:
                raw = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
            except OSError:
                self.refused += 1
                continue
            try:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(request)
                    answer = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
                    answer.begin()
                    allowed = json.loads(answer.read())["response"]["allowed"]
                    self.answered += answer.status == 200 and allowed
            except (OSError, http.client.HTTPException) as exc:
                self.lost.append(repr(exc))


def test_sigterm_drains_without_losing_a_request_or_resetting_a_connection(tmp_path) -> None:
    """8 keep-alive clients and 8 opening a connection per review, through SIGTERM: every
    review written is answered, and no connection the server's kernel completed is reset
    when the listener closes (its queue is taken, new handshakes refused first)."""
    with served(tmp_path, "--drain-seconds", "2") as server:
        body = json.dumps(review(WEB)).encode()
        clients = [Client(server, body) for _ in range(8)]
        arrivals = [Arrivals(server, body) for _ in range(8)]
        deadline = time.monotonic() + 30
        threads = [threading.Thread(target=c.run, args=(deadline,)) for c in clients + arrivals]
        for thread in threads:
            thread.start()
        wait_for(
            lambda: all(c.answered for c in [*clients, *arrivals]), 20, "every client answered"
        )
        before = sum(c.answered for c in [*clients, *arrivals])
        server.process.send_signal(signal.SIGTERM)
        readyz = server.connection()
        assert status(readyz, "GET", "/readyz")[0] == 503
        for thread in threads:
            thread.join(timeout=40)
        assert not any(thread.is_alive() for thread in threads)
        assert server.process.wait(timeout=30) == 0
    lost = [loss for c in [*clients, *arrivals] for loss in c.lost]
    assert not lost, lost
    assert all(c.refused for c in clients), "clients were not refused after the drain"
    assert all(a.refused for a in arrivals), "new connections were not refused after the drain"
    assert sum(c.answered for c in [*clients, *arrivals]) > before, "none answered in the drain"
    assert all(c.closes for c in clients), "drain responses did not close connections"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    assert '"msg":"listener closed"' in server.log.read_text()


def rss_kib(pid: int) -> int:
    status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status_lines if line.startswith("VmRSS:")).split()[1])


def send_headers(server: Served, head: bytes, filler: bytes, total: int) -> bytes:
    """``head``, then ``filler`` until ``total`` bytes or the server closes; its answer."""
    conn = server.tls_socket()
    conn.settimeout(10)
    sent = 0
    try:
        conn.sendall(head)
        while sent < total:
            conn.sendall(filler)
            sent += len(filler)
    except OSError:
        pass
    try:
        return conn.recv(1024)
    except OSError:
        return b""
    finally:
        conn.close()


def test_oversized_headers_get_431_and_leave_memory_where_it_was(tmp_path) -> None:
    with served(tmp_path) as server:
        for _ in range(3):  # warm: TLS and the app's first requests
            assert status(server.connection(), "GET", "/healthz")[0] == 200
        before = rss_kib(server.process.pid)
        head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Big: "
        answer = send_headers(server, head, b"a" * (1 << 20), 200 << 20)  # 200 MB
        assert answer.startswith(b"HTTP/1.1 431 ") or answer == b""
        # Many small fields: 431 as well, and this time the answer is read.
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(101))
        answer = send_headers(server, head.replace(b"X-Big: ", fields), b"", 0)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        # A long URL counts too.
        answer = send_headers(server, b"GET /" + b"a" * 70_000, b"", 0)
        assert answer.startswith(b"HTTP/1.1 431 ")
        grew = rss_kib(server.process.pid) - before
        assert grew < 4096, f"RSS grew {grew} KiB"
        assert status(server.connection(), "GET", "/healthz")[0] == 200
        # Headers at the limit's side of it are served.
        connection = server.connection()
        connection.request("GET", "/healthz", headers={f"X-F{i}": "v" * 500 for i in range(90)})
        assert connection.getresponse().status == 200
    logged = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert any(line["msg"] == "request headers too large, answered 431" for line in logged)


def test_a_handshake_flood_at_1024_open_files_still_lets_every_review_through(tmp_path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.fail(f"the hard open-files limit here is {hard}: the flood needs 4096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flooder's own sockets
    try:
        with served(tmp_path, open_files=1024) as server:
            flood = []
            try:
                for _ in range(1500):  # half-open: a TLS record header, then nothing
                    conn = socket.socket()
                    conn.setblocking(False)
                    conn.connect_ex(("127.0.0.1", server.port))
                    flood.append(conn)
                time.sleep(0.5)
                for conn in flood:
                    with contextlib.suppress(OSError):
                        conn.send(b"\x16\x03\x01\x02\x00")
                took = []
                body = json.dumps(review(WEB)).encode()
                for _ in range(40):
                    started = time.monotonic()
                    code, answer, _ = status(server.connection(timeout=5), "POST", "/mutate", body)
                    took.append(time.monotonic() - started)
                    assert code == 200 and json.loads(answer)["response"]["allowed"]
                assert max(took) < 1.0, f"slowest review {max(took):.2f} s"
            finally:
                for conn in flood:
                    conn.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    logged = [json.loads(line) for line in server.log.read_text().splitlines()]
    raised = next(line for line in logged if line["msg"] == "open files limit raised")
    assert raised["from"] == 1024 and raised["to"] > 1024


def test_tls_1_2_serves_only_ecdhe_with_aead(tmp_path) -> None:
    with served(tmp_path) as server:
        for ciphers, accepted in (
            ("ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:AES256-SHA256", False),
            ("AES128-GCM-SHA256:AES256-GCM-SHA384", False),  # no forward secrecy
            ("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256", True),
        ):
            context = server.context()
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if accepted:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    assert tls.version() == "TLSv1.2"
            else:
                with pytest.raises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname="localhost")
                raw.close()
