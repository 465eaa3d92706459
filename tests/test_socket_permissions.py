"""Envoy (UID 1337) must be able to connect() to the app's socket, which needs write
permission on the socket file. What real servers do, and what happens when Envoy cannot:
the proxy's /healthz/app readiness fails instead of a pod that looks fine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import Envoy, http_get, needs_root, shared_folder, stop, wait_for
from tests.support import apply, bootstrap_of
from webhook.engine import inject
from webhook.engine.config import MeshConfig

pytestmark = [pytest.mark.envoy, needs_root]

APPS = Path(__file__).parent / "apps"
NODE_PLAIN = "require('net').createServer(c => c.end()).listen(process.argv[1])"
NODE_OPEN = (
    "require('http').createServer((q, r) => r.end('hello from node\\n'))"
    ".listen({path: process.argv[1], readableAll: true, writableAll: true})"
)
SERVERS = {
    # name: (command with {socket}, socket mode it makes under umask 022, Envoy can connect)
    "uvicorn --uds": (
        [sys.executable, "-m", "uvicorn", "hello:app", "--uds", "{socket}"],
        0o666,
        True,
    ),
    "gunicorn": (
        [sys.executable, "-m", "gunicorn", "--bind", "unix:{socket}", "hello:wsgi"],
        0o777,
        True,
    ),
    "node listen(path)": (["node", "-e", NODE_PLAIN, "{socket}"], 0o755, False),
    "node writableAll": (["node", "-e", NODE_OPEN, "{socket}"], 0o777, True),
    "plain bind()": ([sys.executable, "plain_unix_server.py", "{socket}"], 0o755, False),
}


def web_pod_bootstrap() -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        # Strict: with the socket unreachable there must be no TCP to fall back to.
        "metadata": {"name": "web", "annotations": {"proxy.io/upstream": "uds"}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ]
        },
    }
    return json.loads(bootstrap_of(apply(pod, list(inject(pod, "shop", MeshConfig()).patch))))


@pytest.fixture
def folder():
    path = shared_folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve(command: list[str], socket: Path, umask: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [part.replace("{socket}", str(socket)) for part in command],
        cwd=APPS,
        umask=umask,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: socket.exists() or process.poll() is not None, 20, "app socket")
    assert process.poll() is None, "the app server exited"
    return process


def check_through_envoy(folder: Path, reachable: bool) -> None:
    envoy = Envoy(web_pod_bootstrap(), folder, inbound_ports=[8080]).start()
    try:
        ready = envoy.ports[15021]
        expected = 200 if reachable else 503
        wait_for(lambda: http_get(ready, "/healthz/app")[0] == expected, 10, "app readiness")
        assert http_get(envoy.ports[8080], "/")[0] == expected
        assert http_get(ready, "/healthz/ready")[0] == 200
    finally:
        envoy.stop()


@pytest.mark.parametrize("name", SERVERS)
def test_what_each_server_makes_and_whether_envoy_can_connect(folder, name) -> None:
    if name.startswith("node") and shutil.which("node") is None:
        pytest.fail("node is not installed (scripts/test installs Debian's nodejs as root)")
    command, mode, reachable = SERVERS[name]
    socket = folder / "web-8080.sock"
    server = serve(command, socket, umask=0o022)
    try:
        # node's writableAll is a chmod() after bind(): the mode settles a moment later.
        wait_for(lambda: socket.stat().st_mode & 0o777 == mode, 5, f"socket mode {mode:o}")
        check_through_envoy(folder, reachable)
    finally:
        stop(server)


def test_umask_002_in_an_fsgroup_volume_makes_a_plain_socket_reachable(folder) -> None:
    """What the injected fsGroup 1337 gives a pod: the volume is group 1337 and setgid, so
    sockets are group 1337, and an app with umask 002 leaves them group-writable."""
    os.chown(folder, 0, 1337)
    os.chmod(folder, 0o2775)
    socket = folder / "web-8080.sock"
    server = serve(SERVERS["plain bind()"][0], socket, umask=0o002)
    try:
        info = socket.stat()
        assert (info.st_mode & 0o777, info.st_gid) == (0o775, 1337)
        check_through_envoy(folder, reachable=True)
    finally:
        stop(server)
