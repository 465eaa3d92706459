"""The generated bootstrap on the real Envoy binary, in front of a real nginx listening only
on Unix sockets, Envoy running as UID 1337 and nginx's workers as nobody."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from tests.processes import (
    Envoy,
    Nginx,
    free_port,
    http_get,
    shared_folder,
    wait_for,
)
from tests.support import apply, bootstrap_of, container
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not __import__("os").path.exists("/usr/sbin/nginx"),
        reason="nginx (Debian nginx-light) is not installed",
    ),
]

UPSTREAM_PORT = free_port()


def meshed(annotations: dict[str, str] | None = None) -> dict:
    """Strict socket mode: these tests are about the socket (auto mode: test_auto_upstream)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "annotations": {"proxy.io/upstream": "uds", **(annotations or {})},
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "raw", "containerPort": 9000},
                    ],
                    "readinessProbe": {
                        "httpGet": {
                            "path": "/headers?from=kubelet",
                            "port": "http",
                            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}],
                        }
                    },
                    "livenessProbe": {"tcpSocket": {"port": 9000}},
                }
            ]
        },
    }
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


@pytest.fixture
def folder():
    path = shared_folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def app(folder):
    nginx = Nginx(
        folder,
        sockets=[str(folder / "web-8080.sock"), str(folder / "web-9000.sock")],
        tcp_ports=[UPSTREAM_PORT],
    )
    (folder / "static").mkdir()
    (folder / "static" / "page.txt").write_text("static page\n")
    nginx.start()
    yield nginx
    nginx.stop()


@pytest.fixture
def pod():
    return meshed(
        {"proxy.io/upstreams": f"localhost:{UPSTREAM_PORT}", "proxy.io/outbound-uds": "true"}
    )


@pytest.fixture
def envoy(pod, folder, app):
    proxy = Envoy(json.loads(bootstrap_of(pod)), folder, inbound_ports=[8080, 9000]).start()
    yield proxy
    proxy.stop()


def test_http_port_reaches_nginx_over_its_socket_and_counts_it(envoy) -> None:
    status, body = http_get(envoy.ports[8080], "/")
    assert (status, body) == (200, b"hello from nginx web-8080.sock\n")
    assert http_get(envoy.ports[8080], "/static/page.txt") == (200, b"static page\n")
    assert envoy.stat("cluster.inbound|8080.upstream_rq_total") == 2
    assert envoy.stat("http.inbound_8080.downstream_rq_2xx") == 2
    assert envoy.stat("cluster.inbound|8080.upstream_cx_total") >= 1


def test_tcp_port_is_proxied_byte_for_byte(envoy) -> None:
    with socket.create_connection(("127.0.0.1", envoy.ports[9000]), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: raw\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"hello from nginx web-9000.sock\n")
    wait_for(lambda: envoy.stat("tcp.inbound|9000.downstream_cx_total") == 1, 5, "tcp stats")


def test_readiness_is_envoys_own_and_follows_its_state(envoy) -> None:
    ready = envoy.ports[15021]
    assert http_get(ready, "/healthz/ready")[0] == 200
    assert envoy.admin("/healthcheck/fail", "POST")[0] == 200
    assert http_get(ready, "/healthz/ready")[0] == 503
    assert envoy.admin("/healthcheck/ok", "POST")[0] == 200
    assert http_get(ready, "/healthz/ready")[0] == 200


def test_readiness_port_is_closed_until_envoy_has_started(pod, folder, app) -> None:
    proxy = Envoy(json.loads(bootstrap_of(pod)), folder, inbound_ports=[8080, 9000])
    try:
        proxy.start(wait=False)
        seen = set()

        def ready() -> bool:
            try:
                status = http_get(proxy.ports[15021], "/healthz/ready")[0]
            except OSError:
                seen.add("refused")
                return False
            seen.add(status)
            return status == 200

        wait_for(ready, 20, "readiness 200")
        # Envoy may accept a moment before it is LIVE; then it answers 503, never 200.
        assert seen <= {"refused", 503, 200}, seen
        assert proxy.admin("/ready") == (200, "LIVE\n")
    finally:
        proxy.stop()


def test_app_readiness_fails_when_the_socket_goes_away(envoy, app) -> None:
    port = envoy.ports[15021]
    wait_for(lambda: http_get(port, "/healthz/app")[0] == 200, 10, "app healthy")
    app.stop()
    wait_for(lambda: http_get(port, "/healthz/app")[0] == 503, 10, "app unhealthy")
    assert http_get(port, "/healthz/ready")[0] == 200


def test_rewritten_probes_reach_the_app_and_fail_without_it(pod, envoy, app) -> None:
    web = container(pod, "web")
    assert web["readinessProbe"]["httpGet"] == {
        "path": "/app-health/web/readyz",
        "port": 15021,
        "scheme": "HTTP",
    }
    assert web["livenessProbe"]["httpGet"]["path"] == "/app-health/web/livez"
    port = envoy.ports[15021]
    status, body = http_get(port, "/app-health/web/readyz")
    assert status == 200
    assert body.startswith(b"x-probe=kubelet ")
    assert body.endswith(b" args=from=kubelet\n")
    wait_for(lambda: http_get(port, "/app-health/web/livez")[0] == 200, 10, "tcp probe ok")
    app.stop()
    assert http_get(port, "/app-health/web/readyz")[0] == 503
    wait_for(lambda: http_get(port, "/app-health/web/livez")[0] == 503, 10, "tcp probe fails")


def test_egress_socket_reaches_a_local_server(envoy, folder) -> None:
    egress = str(folder / "proxy-outbound.sock")
    status, body = http_get(egress, "/", {"Host": f"127.0.0.1:{UPSTREAM_PORT}"})
    assert (status, body) == (200, f"hello from nginx {UPSTREAM_PORT}\n".encode())
    assert envoy.stat("cluster.outbound|forward-proxy.upstream_rq_total") == 1


def test_declared_upstream_gets_its_own_cluster_stats(envoy, folder) -> None:
    cluster = f"outbound|{UPSTREAM_PORT}||localhost"
    wait_for(lambda: envoy.stat(f"cluster.{cluster}.membership_healthy") == 1, 10, "DNS")
    egress = str(folder / "proxy-outbound.sock")
    for _ in range(3):
        assert http_get(egress, "/", {"Host": f"localhost:{UPSTREAM_PORT}"})[0] == 200
    assert envoy.stat(f"cluster.{cluster}.upstream_rq_total") == 3
    assert envoy.stat("cluster.outbound|forward-proxy.upstream_rq_total") == 0


def test_egress_socket_is_open_to_the_apps_uid(envoy, folder) -> None:
    assert (folder / "proxy-outbound.sock").stat().st_mode & 0o777 == 0o666
