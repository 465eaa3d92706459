"""Interception for real: the init container's rules, applied by `proxy-injector
init-iptables` with exactly the flags the engine put in the pod, inside a network namespace
standing in for the pod, with Envoy (UID 1337) running the generated bootstrap and nginx
behind it: in auto mode (the default), port 8080's app listens on its Unix socket and port
8081's on TCP only. Run against iptables-nft and iptables-legacy."""

from __future__ import annotations

import shutil
import time

import pytest

from tests import netns
from tests.meshed_pod import MeshedPod, injected
from tests.processes import Nginx, shared_folder, wait_for
from webhook.engine.lifecycle import HOLD_UNTIL_READY

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

APP_UID = 4242


def meshed_pod() -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "annotations": {
                "proxy.io/exclude-outbound-ports": "9091",
                "proxy.io/exclude-outbound-ip-ranges": f"{netns.CLIENT_V4_OTHER}/32,fd31:1::/64",
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "http-alt", "containerPort": 8081},
                    ],
                }
            ]
        },
    }
    return injected(pod)


@pytest.fixture(scope="module", params=["nft", "legacy"])
def pod(request):
    backend = request.param
    if shutil.which(f"iptables-{backend}-restore") is None:
        pytest.fail(f"iptables-{backend} is missing (scripts/test installs Debian's iptables)")
    net = netns.Network().create()
    folder = shared_folder()
    nginx = None
    try:
        the_pod = MeshedPod(net, folder, backend, meshed_pod())
        applied = the_pod.run_init()
        assert applied.returncode == 0, applied.stderr
        nginx = Nginx(folder, sockets=[str(folder / "web-8080.sock")])
        nginx.command_prefix = net.exec(net.pod)
        nginx.start()
        net.serve_http(net.pod, "::", 7070, folder, "undeclared-port")
        net.serve_http(net.pod, "127.0.0.1", 7071, folder, "loopback-only")
        net.serve_http(net.pod, "127.0.0.1", 8081, folder, "tcp-only-app")
        for address, port, name in (
            (netns.CLIENT_V4, 9090, "remote"),
            (netns.CLIENT_V4, 9091, "excluded-port"),
            (netns.CLIENT_V4_OTHER, 9090, "excluded-cidr"),
        ):
            net.serve_http(net.client, address, port, folder, name)
        if netns.ipv6_available():
            net.serve_http(net.client, netns.CLIENT_V6, 9090, folder, "remote-v6")
            net.serve_http(net.client, netns.CLIENT_V6_OTHER, 9090, folder, "excluded-v6")
        the_pod.start_envoy()
        yield the_pod
    finally:
        if nginx:
            nginx.stop()
        net.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def test_rules_land_in_the_chosen_backend(pod) -> None:
    saved = pod.net.run(pod.net.pod, f"iptables-{pod.backend}-save", "-t", "nat").stdout
    assert ":PROXY_INBOUND" in saved and "-A OUTPUT -p tcp -j PROXY_OUTPUT" in saved


def test_inbound_to_a_declared_port_reaches_the_app_through_envoy(pod) -> None:
    before = pod.stat("http.inbound_8080.downstream_rq_total")
    status, body = pod.net.curl(pod.net.client, f"http://{netns.POD_V4}:8080/")
    assert (status, body) == (200, "hello from nginx web-8080.sock")
    assert pod.stat("http.inbound_8080.downstream_rq_total") == before + 1
    assert pod.stat("cluster.inbound|8080.upstream_rq_total") >= 1


def test_auto_mode_reaches_each_app_the_way_it_listens(pod) -> None:
    """(a) port 8081's app listens on TCP only, (b) port 8080's on its socket only."""
    socket_endpoint = f"cluster.inbound|8080.endpoint.{pod.folder}/web-8080.sock.rq_total"
    tcp_endpoint = "cluster.inbound|8081.endpoint.127.0.0.1_8081.rq_total"
    wait_for(lambda: pod.net.curl(pod.net.pod, "http://127.0.0.1:15021/healthz/app")[0] == 200)
    before = pod.stat(socket_endpoint), pod.stat(tcp_endpoint)
    assert pod.net.curl(pod.net.client, f"http://{netns.POD_V4}:8080/") == (
        200,
        "hello from nginx web-8080.sock",
    )
    assert pod.net.curl(pod.net.client, f"http://{netns.POD_V4}:8081/who.txt") == (
        200,
        "tcp-only-app",
    )
    assert (pod.stat(socket_endpoint), pod.stat(tcp_endpoint)) == (before[0] + 1, before[1] + 1)
    transport = pod.net.curl(pod.net.pod, "http://127.0.0.1:15021/app-transport")
    assert transport == (200, "8080 socket\n8081 tcp")


def test_inbound_to_an_undeclared_port_reaches_the_address_it_was_sent_to(pod) -> None:
    """Passed through to the pod's IP, never to loopback: a port the app serves on every
    address answers, one it binds to 127.0.0.1 only stays out of reach, as it would
    without a sidecar."""
    before = pod.stat("cluster.inbound|passthrough.upstream_cx_total")
    status, body = pod.net.curl(pod.net.client, f"http://{netns.POD_V4}:7070/who.txt")
    assert (status, body) == (200, "undeclared-port")
    assert pod.stat("cluster.inbound|passthrough.upstream_cx_total") == before + 1
    assert pod.net.curl(pod.net.client, f"http://{netns.POD_V4}:7071/who.txt")[0] == 0
    assert pod.stat("cluster.inbound|passthrough.upstream_cx_connect_fail") >= 1
    if netns.ipv6_available():
        status, body = pod.net.curl(pod.net.client, f"http://[{netns.POD_V6}]:7070/who.txt")
        assert (status, body) == (200, "undeclared-port")
        assert pod.net.curl(pod.net.client, f"http://[{netns.POD_V6}]:7071/who.txt")[0] == 0


def test_outbound_from_the_app_goes_through_envoy_exactly_once(pod) -> None:
    before = pod.stat("cluster.outbound|passthrough.upstream_cx_total")
    status, body = pod.net.curl(
        pod.net.pod, f"http://{netns.CLIENT_V4}:9090/who.txt", as_uid=APP_UID
    )
    assert (status, body) == (200, "remote")
    # One app connection, one upstream connection: Envoy's own was not redirected again.
    assert pod.stat("cluster.outbound|passthrough.upstream_cx_total") == before + 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://{netns.CLIENT_V4}:9091/who.txt", "excluded-port"),
        (f"http://{netns.CLIENT_V4_OTHER}:9090/who.txt", "excluded-cidr"),
    ],
)
def test_excluded_port_and_range_bypass_envoy(pod, url, expected) -> None:
    before = pod.stat("cluster.outbound|passthrough.upstream_cx_total")
    assert pod.net.curl(pod.net.pod, url, as_uid=APP_UID) == (200, expected)
    assert pod.stat("cluster.outbound|passthrough.upstream_cx_total") == before


def test_the_proxy_uid_is_never_redirected(pod) -> None:
    before = pod.stat("cluster.outbound|passthrough.upstream_cx_total")
    url = f"http://{netns.CLIENT_V4}:9090/who.txt"
    assert pod.net.curl(pod.net.pod, url, as_uid=1337) == (200, "remote")
    assert pod.stat("cluster.outbound|passthrough.upstream_cx_total") == before


@pytest.mark.skipif(not netns.ipv6_available(), reason="this kernel has no IPv6")
def test_ipv6_is_intercepted_the_same_way(pod) -> None:
    inbound = pod.stat("http.inbound_8080.downstream_rq_total")
    assert pod.net.curl(pod.net.client, f"http://[{netns.POD_V6}]:8080/") == (
        200,
        "hello from nginx web-8080.sock",
    )
    assert pod.stat("http.inbound_8080.downstream_rq_total") == inbound + 1
    outbound = pod.stat("cluster.outbound|passthrough.upstream_cx_total")
    assert pod.net.curl(
        pod.net.pod, f"http://[{netns.CLIENT_V6}]:9090/who.txt", as_uid=APP_UID
    ) == (200, "remote-v6")
    assert pod.net.curl(
        pod.net.pod, f"http://[{netns.CLIENT_V6_OTHER}]:9090/who.txt", as_uid=APP_UID
    ) == (200, "excluded-v6")
    assert pod.stat("cluster.outbound|passthrough.upstream_cx_total") == outbound + 1


def test_running_init_iptables_again_changes_nothing(pod) -> None:
    def rules() -> list[str]:
        saved = pod.net.run(pod.net.pod, f"iptables-{pod.backend}-save", "-t", "nat").stdout
        return sorted(line for line in saved.splitlines() if line.startswith("-A"))

    first = rules()
    again = pod.run_init()
    assert again.returncode == 0, again.stderr
    assert rules() == first
    assert pod.net.curl(pod.net.client, f"http://{netns.POD_V4}:8080/")[0] == 200


def test_hold_hook_returns_once_envoy_is_ready(pod) -> None:
    started = time.monotonic()
    result = pod.net.run(pod.net.pod, "bash", "-c", HOLD_UNTIL_READY, timeout=90)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
