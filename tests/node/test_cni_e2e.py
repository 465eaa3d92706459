"""The CNI plugin as a node runs it (tests/cni_node.py): Debian's containernetworking-plugins
run for real (``bridge`` with ``host-local`` IPAM) and our static relay is chained after them,
relaying to the agent, which looks the pod up in the fake Kubernetes API. Interception is
then proven with Envoy running the pod's generated bootstrap and a client on the node, for
iptables-nft and iptables-legacy, IPv4 and IPv6."""

from __future__ import annotations

import json
import shutil

import pytest

from tests import netns
from tests.cni_node import SimulatedNode, pod_spec
from tests.meshed_pod import MeshedPod
from tests.processes import Nginx, shared_folder, stop, wait_for

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

NAMESPACE = "shop"


def pod_address(result: dict, version: int) -> str:
    wanted = ":" if version == 6 else "."
    found = [ip["address"].split("/")[0] for ip in result["ips"] if wanted in ip["address"]]
    assert found, result
    return found[0]


@pytest.fixture(params=["nft", "legacy"])
def node(request, tmp_path):
    backend = request.param
    if shutil.which(f"iptables-{backend}-restore") is None:
        pytest.fail(f"iptables-{backend} is missing (scripts/test installs iptables)")
    simulated = SimulatedNode(tmp_path, backend)
    try:
        simulated.write_conflist()
        simulated.start_agent()
        simulated.wait_ready()
        yield simulated
    finally:
        simulated.destroy()


def curl(node: SimulatedNode, url: str) -> tuple[int, str]:
    import subprocess

    done = subprocess.run(
        node.in_node("curl", "-s", "-g", "--max-time", "5", "-w", "\n%{http_code}", url),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body.rstrip("\n")


def test_a_meshed_pod_gets_its_rules_and_its_traffic_goes_through_envoy(node) -> None:
    spec = node.api.put_pod(pod_spec(NAMESPACE, "web-0", meshed=True))
    box = node.sandbox(NAMESPACE, "web-0", spec["metadata"]["uid"])
    code, result = node.add(box)
    assert code == 0, result
    assert ":PROXY_INBOUND" in node.nat(box)
    assert "-A OUTPUT -p tcp -j PROXY_OUTPUT" in node.nat(box)
    # proxy-validate, unprivileged, sees the redirect in place before anything starts.
    checked = node.validate(box, spec)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("redirected: 192.0.2.1 port 80 reached port 15001")

    folder = shared_folder()
    nginx = Nginx(folder, sockets=[str(folder / "web-8080.sock")])
    nginx.command_prefix = ["ip", "netns", "exec", box.netns]
    meshed = MeshedPod(netns.Network(), folder, node.backend, spec, namespace=box.netns)
    try:
        nginx.start()
        meshed.start_envoy()
        for version in (4, 6) if netns.ipv6_available() else (4,):
            address = pod_address(result, version)
            host = f"[{address}]" if version == 6 else address
            before = meshed.stat("http.inbound_8080.downstream_rq_total")
            answer = curl(node, f"http://{host}:8080/")
            assert answer == (200, "hello from nginx web-8080.sock"), host
            assert meshed.stat("http.inbound_8080.downstream_rq_total") == before + 1
    finally:
        for process in meshed.net.processes:
            stop(process)
        nginx.stop()
        shutil.rmtree(folder, ignore_errors=True)

    again = node.ours("ADD", box, result)
    assert again.returncode == 0, again.stdout
    assert node.nat(box).count("-A OUTPUT -p tcp -j PROXY_OUTPUT") == 1
    assert node.ours("CHECK", box, result).returncode == 0
    deleted = node.ours("DEL", box, None)
    assert (deleted.returncode, deleted.stdout) == (0, b"")


def test_a_pod_that_is_not_meshed_is_left_alone_and_fails_proxy_validate(node) -> None:
    plain = node.api.put_pod(pod_spec(NAMESPACE, "legacy-0", meshed=False))
    meshed = pod_spec(NAMESPACE, "legacy-0", meshed=True)  # what it would run, were it meshed
    box = node.sandbox(NAMESPACE, "legacy-0", plain["metadata"]["uid"])
    code, result = node.add(box)
    assert code == 0 and result["ips"]
    assert "PROXY" not in node.nat(box)
    checked = node.validate(box, meshed)
    assert checked.returncode == 95
    assert "this pod's traffic is not redirected to the proxy" in checked.stderr


def test_an_unreachable_api_is_code_11_but_never_for_excluded_or_cached_pods(node) -> None:
    cached = node.api.put_pod(pod_spec(NAMESPACE, "web-0", meshed=True))
    wait_for(lambda: "proxy_injector_cni_cached_pods 1.0" in node.http("/metrics")[1], 10, "cached")
    node.api.pods["default"] = [pod_spec("default", "late-0", meshed=True)]  # not cached
    node.api.close()  # the API server is gone
    prev = {"cniVersion": "1.0.0", "ips": []}
    unknown = node.ours("ADD", node.sandbox("default", "late-0"), prev)
    error = json.loads(unknown.stdout)
    assert unknown.returncode == 1 and error["code"] == 11
    assert error["msg"] == f"cannot read pod default/late-0 from {node.api.url}"
    excluded = node.ours("ADD", node.sandbox("kube-system", "coredns-0"), prev)
    assert (excluded.returncode, json.loads(excluded.stdout)) == (0, prev)
    box = node.sandbox(NAMESPACE, "web-0", cached["metadata"]["uid"])
    meshed = node.ours("ADD", box, prev)
    assert (meshed.returncode, json.loads(meshed.stdout)) == (0, prev)
    assert ":PROXY_OUTPUT" in node.nat(box)


def test_a_pod_the_api_does_not_know_cannot_be_ours_and_passes_through(node) -> None:
    prev = {"cniVersion": "1.0.0", "ips": []}
    done = node.ours("ADD", node.sandbox(NAMESPACE, "static-web-node-1"), prev)
    assert (done.returncode, json.loads(done.stdout)) == (0, prev)
