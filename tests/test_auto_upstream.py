"""Auto upstream on the real Envoy, in front of a real nginx that listens on TCP, on the
port's socket, or on both: traffic takes the socket whenever the app listens there and
TCP otherwise, following the app as it changes, and operators can see which way it goes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import Envoy, Nginx, free_port, http_get, needs_root, shared_folder, wait_for
from tests.support import apply, bootstrap_of, container
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig

pytestmark = [pytest.mark.envoy, needs_root]

SOCKET_ENDPOINT = "cluster.inbound|8080.endpoint.{folder}/web-8080.sock"
TCP_ENDPOINT = "cluster.inbound|8080.endpoint.127.0.0.1_{port}"


def auto_pod() -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0"},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                }
            ]
        },
    }
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


@pytest.fixture
def folder():
    paths = [shared_folder(), shared_folder()]
    yield paths[0]
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tcp_port() -> int:
    return free_port()


@pytest.fixture
def envoy(folder, tcp_port):
    bootstrap = json.loads(bootstrap_of(auto_pod()))
    proxy = Envoy(bootstrap, folder, app_ports={8080: tcp_port}, inbound_ports=[8080]).start()
    yield proxy
    proxy.stop()


def socket_app(folder: Path) -> Nginx:
    """nginx listening on the port's socket only (its own files in a folder of its own)."""
    own = shared_folder()
    return Nginx(own, sockets=[str(folder / "web-8080.sock")])


def stats(envoy: Envoy, folder: Path, tcp_port: int) -> tuple[int, int]:
    """Requests Envoy sent to the socket and to TCP."""
    socket = envoy.stat(SOCKET_ENDPOINT.format(folder=folder) + ".rq_total")
    tcp = envoy.stat(TCP_ENDPOINT.format(port=tcp_port) + ".rq_total")
    return socket, tcp


def transport(envoy: Envoy) -> str:
    return http_get(envoy.ports[15021], "/app-transport")[1].decode()


@pytest.mark.parametrize("listens", ["tcp", "socket", "both"])
def test_traffic_takes_the_socket_when_the_app_listens_there(
    envoy, folder, tcp_port, listens
) -> None:
    app = Nginx(
        folder,
        sockets=[str(folder / "web-8080.sock")] if listens != "tcp" else [],
        tcp_ports=[tcp_port] if listens != "socket" else [],
    ).start()
    try:
        way = "tcp" if listens == "tcp" else "socket"
        wait_for(lambda: transport(envoy) == f"8080 {way}\n", 10, f"/app-transport: {way}")
        expected = f"hello from nginx {tcp_port}" if way == "tcp" else "hello from nginx web-8080"
        # Workers see a health change a moment after the admin API does.
        wait_for(lambda: http_get(envoy.ports[8080], "/")[1].decode().startswith(expected), 5)
        before = stats(envoy, folder, tcp_port)
        for _ in range(5):
            status, body = http_get(envoy.ports[8080], "/")
            assert (status, body.decode().startswith(expected)) == (200, True)
        after = stats(envoy, folder, tcp_port)
        moved = (after[0] - before[0], after[1] - before[1])
        assert moved == ((0, 5) if way == "tcp" else (5, 0))
        used = f"127.0.0.1:{tcp_port}" if way == "tcp" else f"{folder}/web-8080.sock"
        metrics = http_get(envoy.ports[15090], "/stats/prometheus")[1].decode()
        line = (
            'envoy_cluster_endpoint_rq_total{envoy_cluster_name="inbound|8080",'
            f'envoy_endpoint_address="{used}"}} '
        )
        assert int(metrics.split(line, 1)[1].split()[0]) >= 5
        assert http_get(envoy.ports[15021], "/healthz/app")[0] == 200
        assert http_get(envoy.ports[15021], "/app-health/web/readyz")[0] == 200
    finally:
        app.stop()
    wait_for(lambda: http_get(envoy.ports[15021], "/healthz/app")[0] == 503, 10, "app down")
    assert http_get(envoy.ports[15021], "/app-health/web/readyz")[0] == 503
    assert transport(envoy) == "8080 none\n"


def test_traffic_follows_the_app_under_load(envoy, folder, tcp_port) -> None:
    """wrk runs throughout; the app starts listening on the socket, then stops again.
    Requests may fail only on connections the socket app closed as it stopped."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (scripts/test installs it)")
    tcp_app = Nginx(folder, tcp_ports=[tcp_port]).start()
    on_socket = socket_app(folder)
    # As in a pod, traffic comes once the proxy is ready: once it has seen the app.
    wait_for(lambda: http_get(envoy.ports[15021], "/healthz/app")[0] == 200, 10, "app ready")
    load = subprocess.Popen(
        ["wrk", "-t1", "-c8", "-d9s", f"http://127.0.0.1:{envoy.ports[8080]}/"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        before = stats(envoy, folder, tcp_port)
        on_socket.start()
        started = time.monotonic()
        wait_for(lambda: stats(envoy, folder, tcp_port)[0] > before[0], 10, "socket traffic")
        to_socket = time.monotonic() - started
        time.sleep(2)
        socket_connections = envoy.stat(SOCKET_ENDPOINT.format(folder=folder) + ".cx_total")
        on_socket.stop()
        stopped = time.monotonic()
        after = stats(envoy, folder, tcp_port)[1]
        wait_for(lambda: stats(envoy, folder, tcp_port)[1] > after + 50, 10, "TCP traffic")
        wait_for(lambda: transport(envoy) == "8080 tcp\n", 10, "/app-transport: tcp")
        to_tcp = time.monotonic() - stopped
        output, _ = load.communicate(timeout=30)
    finally:
        load.kill()
        on_socket.stop()
        tcp_app.stop()
    total, failed = wrk_failures(output)
    print(
        f"\nauto upstream under load: {total} requests, {failed} failed; traffic moved to the "
        f"socket in {to_socket:.2f} s and back to TCP in {to_tcp:.2f} s "
        f"({socket_connections} connections to the socket app)"
    )
    assert total > 1000
    assert failed <= socket_connections
    assert to_socket < 5 and to_tcp < 5


def test_auto_mode_is_the_default_and_keeps_the_env() -> None:
    web = container(auto_pod(), "web")
    env = {e["name"]: e["value"] for e in web["env"]}
    assert env["PROXY_UDS_PATH"] == "/dev/shm/web-8080.sock"
    assert env["PROXY_UDS_PATH_8080"] == "/dev/shm/web-8080.sock"


def wrk_failures(output: str) -> tuple[int, int]:
    total = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in errors.groups()) if errors else 0
    )
    return total, failed


@pytest.mark.parametrize("listens", ["tcp", "socket"])
def test_no_request_fails_once_an_app_that_started_after_the_proxy_listens(
    envoy, folder, tcp_port, listens
) -> None:
    """Native sidecar order: the proxy is up, and has seen neither endpoint healthy, when
    the app starts. From the moment the app accepts, every request is answered: on TCP,
    Envoy's panic routing keeps choosing the socket until the health check has seen the
    app, and the retries wait for it."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed (scripts/test installs it)")
    assert transport(envoy) == "8080 none\n"
    app = Nginx(
        folder,
        sockets=[str(folder / "web-8080.sock")] if listens == "socket" else [],
        tcp_ports=[tcp_port] if listens == "tcp" else [],
    )
    try:
        app.start()  # returns once the app accepts
        done = subprocess.run(
            ["wrk", "-t1", "-c4", "-d2s", f"http://127.0.0.1:{envoy.ports[8080]}/"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        app.stop()
    total, failed = wrk_failures(done.stdout)
    print(
        f"\napp started after the proxy, listening on {listens}: {total} requests, {failed} failed"
    )
    assert total >= 1000, done.stdout
    log = (folder / f"{envoy.name}.log").read_text().splitlines()
    assert failed == 0, done.stdout + "\n".join(line for line in log if '" 5' in line)[:3000]
