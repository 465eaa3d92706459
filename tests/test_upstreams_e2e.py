"""Declared upstreams for real: a client pod (a network namespace with its init
container's rules and Envoy running the generated bootstrap) calling services whose names
resolve, through a DNS server as the cluster's CoreDNS answers a headless Service, to
several pods' addresses. What a team adopting the mesh for its load balancing and
per-destination policy checks: requests spread per request across every address (HTTP/1.1
keep-alive and HTTP/2 alike), pods that come and go are followed, each upstream's own
timeout and retries hold, and ``declared-only`` refuses what is not declared."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.meshed_pod import MeshedPod
from tests.processes import shared_folder, stat_value, wait_for
from tests.support import apply
from webhook.engine import Outcome, inject
from webhook.engine.bootstrap.outbound import REFUSED_HEADER, REFUSED_REASON
from webhook.engine.config import MeshConfig

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

BACKENDS = {"a": netns.POD_V4, "b": "10.231.0.3", "c": "10.231.0.4"}
DNS = "127.0.0.53"
UPSTREAMS = "web.shop:8080,web.shop:8082/grpc,flaky.shop:8090,steady.shop:8090"
ANNOTATIONS = {
    "proxy.io/upstreams": UPSTREAMS,
    "proxy.io/upstream-timeouts": "flaky.shop:8090=1s",
    "proxy.io/upstream-retries": "flaky.shop:8090=3,steady.shop:8090=0",
    "proxy.io/exclude-outbound-ports": "7071",
}
REQUESTS = 300


def client_spec(**extra: str) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "annotations": {**ANNOTATIONS, **extra}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": []}]},
    }
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


class Upstreams:
    def __init__(self, net: netns.Network, root: Path, records: Path) -> None:
        self.net, self.root, self.records = net, root, records
        (root / "web").mkdir()
        (root / "web").chmod(0o755)
        self.client = MeshedPod(net, root / "web", "nft", client_spec(), namespace=net.client)

    def resolve(self, **names: list[str]) -> None:
        """What the DNS server answers from now on (TTL 1 s, as short as CoreDNS's 5 s)."""
        self.records.write_text(json.dumps({"ttl": 1, "names": names}))

    def restart(self, spec: dict) -> None:
        assert self.client.envoy is not None
        self.client.envoy.kill()
        self.client.envoy.wait(timeout=10)
        self.client.spec = spec
        self.client.start_envoy()

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """curl as the client pod's app (root: redirected to the sidecar, as any UID but
        the proxy's)."""
        return self.net.run(self.net.client, "curl", "-s", "--max-time", "20", *args, timeout=60)

    def who(self, url: str, count: int = REQUESTS) -> Counter[str]:
        """Which backend answered each of ``count`` HTTP/1.1 requests, all on one
        keep-alive connection."""
        done = self.curl(*[url] * count)
        assert done.returncode == 0, done.stderr
        return Counter(done.stdout.split())

    def who_h2(self, url: str, count: int = REQUESTS) -> Counter[str]:
        """The same for HTTP/2 requests (prior knowledge, as h2c clients speak it),
        multiplexed on one connection by nghttp (curl 7.88 cannot reuse such a one)."""
        urls = [f"{url}?request={i}" for i in range(count)]
        done = self.net.run(self.net.client, "nghttp", *urls, timeout=60)
        assert done.returncode == 0, done.stderr
        return Counter(done.stdout.split())


def _records_default(upstreams: Upstreams, web: list[str] | None = None) -> None:
    upstreams.resolve(
        **{
            "web.shop": web or list(BACKENDS.values()),
            "flaky.shop": [netns.POD_V4],
            "steady.shop": [netns.POD_V4],
            "other.shop": [netns.POD_V4],
        }
    )


@contextlib.contextmanager
def running_upstreams() -> Iterator[Upstreams]:
    net = netns.Network().create()
    folder = Path("/etc/netns") / net.client
    try:
        pod_if = f"pip{net.suffix}"
        for address in list(BACKENDS.values())[1:]:
            subprocess.run(
                ["ip", "-n", net.pod, "addr", "add", f"{address}/24", "dev", pod_if],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text("127.0.0.1 localhost\n")
        (folder / "resolv.conf").write_text(f"nameserver {DNS}\noptions timeout:1 attempts:3\n")
        root = shared_folder()
        records = root / "records.json"
        upstreams = Upstreams(net, root, records)
        _records_default(upstreams)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        net.start(net.client, sys.executable, "-m", "tests.apps.dns_server", DNS, "53",
                  str(records), **quiet)  # fmt: skip
        h2 = str(Path(__file__).parent / "apps" / "h2_who.js")
        for name, address in BACKENDS.items():
            net.serve_http(net.pod, address, 8080, root, name)
            net.start(net.pod, "node", h2, address, "8082", name, **quiet)
        for port in (7070, 7071):
            net.serve_http(net.pod, netns.POD_V4, port, root, f"plain-{port}")
        net.start(net.pod, sys.executable, "-m", "tests.apps.flaky_server", netns.POD_V4,
                  "8090", **quiet)  # fmt: skip
        applied = upstreams.client.run_init()
        assert applied.returncode == 0, applied.stderr
        upstreams.client.start_envoy()
        wait_for(
            lambda: upstreams.who_h2("http://web.shop:8082/", 1).total() == 1,
            20,
            "the HTTP/2 backends answering through the sidecar",
        )
        yield upstreams
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        net.destroy()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    missing = [tool for tool in ("node", "curl", "nghttp") if shutil.which(tool) is None]
    if missing:
        raise AssertionError(f"{missing} missing (scripts/test installs them)")
    with running_upstreams() as running:
        yield running


def _spread_evenly(answers: Counter[str]) -> None:
    assert sum(answers.values()) == REQUESTS, answers
    for name in BACKENDS:
        assert 0.20 * REQUESTS <= answers[name] <= 0.47 * REQUESTS, answers


def test_http1_keep_alive_requests_are_balanced_per_request(upstreams: Upstreams) -> None:
    connections = "http.outbound_8080.downstream_cx_total"
    before = upstreams.client.stat(connections)
    _spread_evenly(upstreams.who("http://web.shop:8080/who.txt"))
    assert upstreams.client.stat(connections) == before + 1  # one keep-alive connection


def test_http2_requests_are_balanced_per_request(upstreams: Upstreams) -> None:
    answers = upstreams.who_h2("http://web.shop:8082/")
    _spread_evenly(answers)
    # Three endpoints, the 300 requests multiplexed over about one connection each.
    stats = upstreams.client.admin("/stats?format=json")[1]
    assert stat_value(stats, "cluster.outbound|8082||web.shop.membership_total") == 3
    assert 3 <= stat_value(stats, "cluster.outbound|8082||web.shop.upstream_cx_total") <= 6


def test_pods_that_go_away_are_followed_through_dns(upstreams: Upstreams) -> None:
    try:
        _records_default(upstreams, web=[BACKENDS["a"], BACKENDS["b"]])

        def c_gone() -> bool:
            return upstreams.who("http://web.shop:8080/who.txt", 30)["c"] == 0

        wait_for(c_gone, 30, "the sidecar resolving web.shop again without c")
        answers = upstreams.who("http://web.shop:8080/who.txt", 100)
        assert answers["a"] > 0 and answers["b"] > 0 and answers["c"] == 0
    finally:
        _records_default(upstreams)


def test_each_upstream_has_its_own_request_timeout(upstreams: Upstreams) -> None:
    done = upstreams.curl("-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                          "http://flaky.shop:8090/slow")  # fmt: skip
    status, seconds = done.stdout.split()
    assert status == "504" and float(seconds) < 2.5, done.stdout
    # steady.shop keeps the mesh's 60 s: the 3 s answer arrives.
    done = upstreams.curl("-o", "/dev/null", "-w", "%{http_code}", "http://steady.shop:8090/slow")
    assert done.stdout == "200"


def test_each_upstream_has_its_own_retry_count(upstreams: Upstreams) -> None:
    for host, key, attempts in (("flaky.shop", "three", 4), ("steady.shop", "none", 1)):
        done = upstreams.curl("-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{host}:8090/reset/{key}")  # fmt: skip
        assert done.stdout == "503", (host, done.stdout)
        counted = upstreams.curl(f"http://{host}:8090/count/{key}").stdout.strip()
        assert counted == str(attempts), host


def test_declared_only_refuses_what_is_not_declared(upstreams: Upstreams) -> None:
    assert upstreams.curl(f"http://{netns.POD_V4}:7070/who.txt").stdout == "plain-7070\n"
    try:
        upstreams.restart(client_spec(**{"proxy.io/outbound-policy": "declared-only"}))
        # HTTP to a host not declared, on a declared port: 502 saying why.
        done = upstreams.curl("-D", "-", "-o", "/dev/null", "http://other.shop:8080/who.txt")
        assert done.stdout.startswith("HTTP/1.1 502"), done.stdout
        assert f"{REFUSED_HEADER}: {REFUSED_REASON}" in done.stdout
        # TCP (here HTTP, on a port nothing declares): closed.
        done = upstreams.curl(f"http://{netns.POD_V4}:7070/who.txt")
        assert done.returncode in (52, 56) and done.stdout == "", done
        # What is declared, and what bypasses the proxy (excluded ports), still works.
        assert upstreams.who("http://web.shop:8080/who.txt", 3).total() == 3
        assert upstreams.curl(f"http://{netns.POD_V4}:7071/who.txt").stdout == "plain-7071\n"
        metrics = upstreams.client.admin("/stats/prometheus")[1]
        assert 'envoy_outbound_refused{port="7070"} 1' in metrics
        assert 'envoy_outbound_refused{port="8080"} 1' in metrics
    finally:
        upstreams.restart(client_spec())
