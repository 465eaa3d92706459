"""The mesh tax on TCP: databases through two sidecars (a client pod's and a server pod's),
against the direct path and against the same Envoys running the smallest hand-written
``tcp_proxy`` config, the floor.

Each way is a pair of pods of its own (network namespaces, ``tests/netns.py``) with Debian's
redis-server and PostgreSQL as the server pod's apps (``tests/db_mesh.py``), and their own
load generators in the client pod:

- ``direct``: no sidecar anywhere; the servers listen on the pod's address;
- ``mesh``: both pods injected (their real iptables rules, Envoy as UID 1337 running the
  generated bootstrap), the client declaring ``redis.shop:6379/tcp,pg.shop:5432/tcp``;
- ``floor``: the same rules, Envoys, workers and CPU, with a hand-written config: a
  ``tcp_proxy`` per port on 15001 (to the server's address) and on 15006 (to loopback),
  nothing else;
- ``mesh-mtls``: ``mesh`` with mesh config ``mtls.identity: pod-certificate`` (permissive),
  certificates minted here and laid out as the kubelet writes them.

Load: ``redis-benchmark -t get,set -c 50`` and ``pgbench -S`` (select-only), pinned to CPU 1
with the servers; both Envoys on CPU 0. Rounds are interleaved (each round runs every way
once); the figures are medians over rounds. Envoy's CPU comes from /proc (all threads, both
sidecars) per 1,000 operations; the ratios are generated/floor (target at most 1.10x),
mTLS/plaintext (target at most 1.25x) and each way's ops/s over direct's.

    .venv/bin/python bench/tcp_tax.py [--pairs 3] [--redis-requests 100000] [--seconds 10]

Needs root, Debian's redis-server, redis-tools, postgresql, iptables and iproute2
(``scripts/test`` installs them).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT  # noqa: F401 (puts the project on sys.path)
from mesh_tax import cpu_ns, iptables_backend, workers

from tests import netns
from tests.db_mesh import CLIENT_USER, SERVER, Databases, client_spec, server_spec
from tests.identity import ProjectedVolume, create_ca, leaf, spiffe
from tests.meshed_pod import MeshedPod
from tests.processes import shared_folder

ENVOY_CPU, LOAD_CPU = 0, 1
WAYS = ("direct", "mesh", "floor", "mesh-mtls")
UPSTREAMS = "redis.shop:6379/tcp,pg.shop:5432/tcp"
PORTS = {"redis": 6379, "postgres": 5432}
REDIS_CLIENTS = 50
PGBENCH_CLIENTS = 10
LOADS = {
    "redis": f"redis-benchmark GET+SET, {REDIS_CLIENTS} clients",
    "postgres": f"pgbench -S, {PGBENCH_CLIENTS} clients",
}


def _tcp_proxy(port: int, address: str) -> tuple[dict, dict]:
    """One port's chain and cluster: bytes to ``address:port``."""
    name = f"port{port}"
    proxy = {
        "name": "tcp",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name,
            "cluster": name,
        },
    }
    chain = {"filter_chain_match": {"destination_port": port}, "filters": [proxy]}
    endpoint = {
        "endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}
    }
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    return chain, cluster


def floor_config(listen: int, address: str, admin: Path) -> dict:
    """The smallest config that proxies each port, as iptables hands connections over."""
    pairs = [_tcp_proxy(port, address) for port in PORTS.values()]
    original_dst = {
        "name": "original_dst",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3"
            ".OriginalDst"
        },
    }
    return {
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "floor",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": listen}},
                    "listener_filters": [original_dst],
                    "filter_chains": [chain for chain, _ in pairs],
                }
            ],
            "clusters": [cluster for _, cluster in pairs],
        },
    }


@dataclass
class Run:
    ops_per_second: float
    operations: float
    envoy_seconds: float

    @property
    def cpu_per_1000(self) -> float:
        return self.envoy_seconds / self.operations * 1000 if self.operations else 0.0


@dataclass
class Way:
    name: str
    args: argparse.Namespace
    net: netns.Network = field(default_factory=netns.Network)
    sidecars: list[MeshedPod] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "permissive" if self.name == "mesh-mtls" else "off"

    def start(self) -> Way:
        self.net.create()
        folder = Path("/etc/netns") / self.net.client
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text(f"127.0.0.1 localhost\n{SERVER} redis.shop pg.shop\n")
        root = shared_folder()
        data = root / "data"
        data.mkdir()
        data.chmod(0o777)
        pinned = ("taskset", "-c", str(LOAD_CPU))
        if self.name == "direct":
            # No sidecar: the servers listen on the pod's address.
            Databases(self.net, data, prefix=pinned, address="0.0.0.0").start(tuple(PORTS))
        else:
            self._sidecars(root)
            Databases(self.net, data, prefix=pinned).start(tuple(PORTS))
        self._client("pgbench", "-i", "-s", "1", "-h", "pg.shop", "-U", "postgres", "postgres")
        return self

    def _sidecars(self, root: Path) -> None:
        ca = create_ca(common_name="tcp bench CA")
        pods = (
            ("db", self.net.pod, server_spec(self.mode), 15006, "127.0.0.1"),
            ("app", self.net.client, client_spec(self.mode, UPSTREAMS), 15001, SERVER),
        )
        for account, namespace, spec, listen, address in pods:
            folder = root / account
            folder.mkdir()
            folder.chmod(0o755)
            pod = MeshedPod(self.net, folder, iptables_backend(), spec, namespace=namespace)
            applied = pod.run_init()
            if applied.returncode != 0:
                sys.exit(f"tcp-tax: init-iptables failed: {applied.stderr}")
            if self.mode != "off":
                volume = ProjectedVolume(pod.identity_root / "proxy-identity")
                volume.pod_certificate(leaf(ca, spiffe("shop", account)), ca)
            floor = (
                floor_config(listen, address, pod.admin_socket) if self.name == "floor" else None
            )
            pod.start_envoy(workers(spec), prefix=("taskset", "-c", str(ENVOY_CPU)), config=floor)
            self.sidecars.append(pod)

    def _client(self, *command: str) -> str:
        done = self.net.run(
            self.net.client, "taskset", "-c", str(LOAD_CPU), "runuser", "-u", CLIENT_USER, "--",
            *command, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"tcp-tax: {self.name}: {command[0]} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def _envoy_ns(self) -> int:
        return sum(cpu_ns(pod.envoy.pid) for pod in self.sidecars if pod.envoy)

    def redis(self) -> Run:
        requests = self.args.redis_requests
        before, start = self._envoy_ns(), time.monotonic()
        out = self._client(
            "redis-benchmark", "-h", "redis.shop", "-p", "6379", "-c", str(REDIS_CLIENTS),
            "-n", str(requests), "-t", "get,set", "--csv",
        )  # fmt: skip
        elapsed = time.monotonic() - start
        rates = [float(m) for m in re.findall(r'^"(?:GET|SET)","([\d.]+)"', out, re.M)]
        operations = requests * len(rates)
        return Run(operations / elapsed, operations, (self._envoy_ns() - before) / 1e9)

    def postgres(self) -> Run:
        before = self._envoy_ns()
        out = self._client(
            "pgbench", "-S", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(self.args.seconds),
            "-h", "pg.shop", "-U", "postgres", "postgres",
        )  # fmt: skip
        done = re.search(r"number of transactions actually processed: (\d+)", out)
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        if not done or not tps:
            sys.exit(f"tcp-tax: {self.name}: unexpected pgbench output:\n{out}")
        return Run(float(tps.group(1)), float(done.group(1)), (self._envoy_ns() - before) / 1e9)

    def stop(self) -> None:
        shutil.rmtree(Path("/etc/netns") / self.net.client, ignore_errors=True)
        self.net.destroy()


def _median(runs: list[Run], attribute: str) -> float:
    return statistics.median(getattr(run, attribute) for run in runs)


def report(results: dict[str, dict[str, list[Run]]]) -> None:
    for load in ("redis", "postgres"):
        by_way = results[load]
        direct = _median(by_way["direct"], "ops_per_second")
        print(f"\n{load} ({LOADS[load]})")
        print(f"  {'way':<10} {'ops/s':>10} {'vs direct':>10} {'Envoy CPU-ms/1000 ops':>22}")
        for way in WAYS:
            ops = _median(by_way[way], "ops_per_second")
            cpu = _median(by_way[way], "cpu_per_1000") * 1000 if way != "direct" else 0.0
            shown = f"{cpu:>22.1f}" if way != "direct" else f"{'-':>22}"
            print(f"  {way:<10} {ops:>10.0f} {ops / direct:>9.2f}x {shown}")
        mesh = _median(by_way["mesh"], "cpu_per_1000")
        floor = _median(by_way["floor"], "cpu_per_1000")
        mtls = _median(by_way["mesh-mtls"], "cpu_per_1000")
        pairs = [
            (m.cpu_per_1000 / f.cpu_per_1000)
            for m, f in zip(by_way["mesh"], by_way["floor"], strict=True)
            if f.cpu_per_1000
        ]
        print(f"  generated/floor CPU per op: {mesh / floor:.2f}x (target <= 1.10x); "
              f"per round: {', '.join(f'{p:.2f}' for p in pairs)}")  # fmt: skip
        print(f"  mTLS/plaintext CPU per op:  {mtls / mesh:.2f}x (target <= 1.25x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--redis-requests", type=int, default=100_000, help="per test (default 100000)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="pgbench run length (default 10)")
    args = parser.parse_args()
    ways = []
    try:
        for name in WAYS:
            ways.append(Way(name, args).start())
        results: dict[str, dict[str, list[Run]]] = {"redis": {}, "postgres": {}}
        for round_number in range(args.pairs):
            for way in ways:
                results["redis"].setdefault(way.name, []).append(way.redis())
                results["postgres"].setdefault(way.name, []).append(way.postgres())
            print(f"round {round_number + 1}/{args.pairs} done", file=sys.stderr)
        report(results)
    finally:
        for way in ways:
            way.stop()


if __name__ == "__main__":
    main()
