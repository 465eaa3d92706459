"""The mesh tax: what the sidecar costs per hop, against the same app with no sidecar.

The same app (nginx, or a Python ASGI app under uvicorn) is served three ways, each in a
pod of its own (a network namespace with a client namespace beside it, ``tests/netns.py``):

- ``direct``: no proxy, the app listens on the pod's address;
- ``sidecar-uds``: the pod's real iptables rules (``proxy-injector init-iptables`` with the
  flags the engine gave the pod) and Envoy running the generated bootstrap (UID 1337, the
  engine's worker count); the app listens on its socket only, so Envoy reaches it there;
- ``sidecar-tcp``: the same, with the app listening on 127.0.0.1:8080 only (auto mode, the
  default, sends traffic there).

Runs are interleaved: each round drives every way once, and the figures that count are the
medians over rounds of each way's latency and of its difference to ``direct`` in the same
round. The load is fixed in rate, as Istio measures (``common.paced``: Debian's ``h2load``
with ``--rps``, 16 HTTP/1.1 connections started 1 ms apart, latencies in microseconds).
Started together, as ``hey -q`` and a plain ``h2load --rps`` start them, all 16 send at the
same instant and p90 measures a queue of 16 requests: on this VM that made nginx's direct
p50 220 us instead of 34 us, and the sidecar's added p90 four times larger. ``hey`` also
prints latencies in steps of 0.1 ms, a third of the target.
Envoy is pinned to CPU 0; the app and the load generator share CPU 1. CPU comes from /proc
(``schedstat`` of all threads, in ns): Envoy's, and the app's beside it as a yardstick for
this machine. Envoy's memory comes from /proc/<pid>/status after each run.

``--client-sidecar`` adds a generated sidecar to the client pod too (its rules, its Envoy
on CPU 0): requests go to ``web:8080``, a declared upstream (``proxy.io/upstreams``), out
through 15001 and in through the server's 15006, two hops as in Istio's figures.

``floor`` is the yardstick for the generated config: the same Envoy (same rules, workers
and CPU) with the smallest hand-written config that proxies the port to the app's socket
(no stats matcher, no access log, no health checks, no Lua). The generated sidecar's CPU
per 1000 req/s is printed as a ratio to it (target at most 1.10x).

``--mtls`` (implies ``--client-sidecar``) adds ``sidecar-uds-mtls``: both sidecars with
mesh config ``mtls.identity: pod-certificate``, certificates minted here and laid out as
the kubelet writes them, mTLS between the two; its added p90 over direct (two hops, target
0.5 ms) and its CPU per 1000 req/s as a ratio to plaintext ``sidecar-uds`` (target 1.25x).

``--compare KEY=VALUE`` adds a way, ``sidecar-uds`` with one mesh config field
(``accessLog.tcp=true``; ``accessLog=json`` is short for ``accessLog.format=json``) or pod
annotation (``proxy.io/concurrency=1``) changed: a before and after in the same run. Given
more than once, each is a way of its own, and their server Envoys' vCPU per 1000 req/s is
printed as a ratio to the first's, round by round: ``--compare accessLog=off --compare
accessLog=text --compare accessLog=json`` prices each access log format against none.
``;`` joins several changes in one way; a collector at ``localhost:4317`` is an OTLP/gRPC
receiver (``tests/apps/otlp_receiver.py``, spans to /dev/null) started in each sidecar's
namespace: ``--compare "tracing.collector=localhost:4317;tracing.samplingPercent=1"``. A way
with ``mtls.identity=pod-certificate`` gets certificates minted here, so with
``--client-sidecar`` it prices a change in the two-hop mTLS shape; with two hops both
sidecars' ratio is printed too.
``--profile`` samples the server's Envoy with perf during one extra
``sidecar-uds`` run and prints where its CPU goes.

    .venv/bin/python bench/mesh_tax.py [--quick] [--app nginx,asgi] [--rates 1000,5000]
        [--sizes 1024,65536] [--pairs 3] [--seconds 10] [--client-sidecar]
        [--compare KEY=VALUE ...] [--profile] [--envoy-cpu 0|1] [--mtls]

Needs root (namespaces, iptables, Envoy as UID 1337), Debian's nginx-light, iptables,
iproute2 and nghttp2-client (``scripts/bench`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from common import PACED_CONNECTIONS, ROOT, paced, wakeup_cpu_us

from tests import netns
from tests.identity import ProjectedVolume, create_ca, leaf, spiffe
from tests.meshed_pod import MeshedPod
from tests.processes import Nginx, shared_folder, wait_for
from tests.remap import remap
from tests.support import apply, bootstrap_of
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping

LOAD_CPU = 1
CONNECTIONS = PACED_CONNECTIONS
APP_PORT = 8080
SERVICE = "web"
NAMESPACE = "bench"
ISTIO = {"p90_ms": 2.65, "vcpu": 0.35, "memory_mb": 40.0}
"""Istio's published sidecar figures: Envoy with mTLS and telemetry, a client and a server
sidecar (two hops), 1 KiB, 16 connections, per 1,000 req/s through the proxy."""
TARGETS = {"added p90 per hop (ms)": 0.3, "vCPU per 1000 req/s": 0.05, "RssAnon (MiB)": 16.0}
WAYS = ("direct", "sidecar-uds", "sidecar-tcp", "floor")
MTLS_WAY = "sidecar-uds-mtls"
MTLS_MESH = from_mapping({"mtls": {"identity": "pod-certificate"}})
PERF_RECORD = ["perf", "record", "-q", "-g", "-p"]
PERF_REPORT = ["perf", "report", "--stdio", "--no-children", "-g", "none", "--sort", "dso,sym"]
PERF_REPORT += ["--percent-limit", "1.5"]
SEARCHED_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


@dataclass
class Measured:
    rate: float
    p50: float
    p90: float
    p99: float
    failed: int
    vcpu: dict[str, float] = field(default_factory=dict)
    """Per sidecar (server, client): CPU-seconds per 1,000 requests = vCPU per 1000 req/s."""
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per sidecar: (RssAnon, RSS) in MiB after the run."""
    app_vcpu: float = 0.0
    """The app's own processes, the same way: a yardstick for this machine's costs."""
    wakeups: dict[str, float] = field(default_factory=dict)
    """Per sidecar: how often its threads slept and were woken, per request."""


def cpu_ns(pid: int) -> int:
    """Time on CPU of all the process's threads so far, in ns."""
    total = 0
    with contextlib.suppress(OSError):  # the process may have gone
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def sleeps(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far: each one a sleep
    that something had to wake."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                status = (task / "status").read_text()
                total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def memory_mib(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()

    def kib(name: str) -> float:
        found = re.search(rf"^{name}:\s+(\d+) kB", status, re.M)
        return int(found.group(1)) / 1024 if found else 0.0

    return kib("RssAnon"), kib("VmRSS")


def pod_spec(annotations: dict[str, str], container: str, ports: list[int]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{container}-0", "annotations": annotations},
        "spec": {
            "containers": [
                {
                    "name": container,
                    "image": f"{container}:1",
                    "ports": [{"name": "http", "containerPort": p} for p in ports],
                }
            ]
        },
    }


def injected(pod: dict, config: MeshConfig) -> dict:
    result = inject(pod, NAMESPACE, config)
    if result.outcome != Outcome.INJECT:
        sys.exit(f"mesh-tax: the engine did not inject the benchmark pod: {result.message}")
    return apply(pod, list(result.patch))


def workers(spec: dict) -> int:
    containers = [*spec["spec"]["containers"], *spec["spec"].get("initContainers", [])]
    args = next(c for c in containers if c["name"] == "proxy")["args"]
    return int(args[args.index("--concurrency") + 1])


def iptables_backend() -> str:
    return "nft" if shutil.which("iptables-nft-restore") else "legacy"


@dataclass
class Variant:
    """How one sidecar way differs from the defaults."""

    annotations: dict[str, str] = field(default_factory=dict)
    config: MeshConfig = field(default_factory=MeshConfig)
    label: str = ""
    """The KEY=VALUE it was made from, naming its way in the output."""

    @classmethod
    def parse(cls, text: str) -> Variant:
        annotations: dict[str, str] = {}
        data: dict = {}
        for assignment in text.split(";"):
            key, sep, raw = assignment.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"--compare {text!r}: expected KEY=VALUE")
            if key.startswith("proxy.io/"):
                annotations[key] = raw
                continue
            node = data
            *parents, last = SHORT_KEYS.get(key, key).split(".")
            for part in parents:
                node = node.setdefault(part, {})
            value = yaml.safe_load(raw)
            # YAML 1.1 reads off/on/yes/no as booleans; a format named off stays a word.
            word = isinstance(value, bool) and raw.lower() not in ("true", "false")
            node[last] = raw if word else value
        try:
            return cls(annotations, from_mapping(data, "--compare"), text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


SHORT_KEYS = {"accessLog": "accessLog.format"}
LOCAL_COLLECTOR = "localhost:4317"


class Pod:
    """One way of serving the app: its own network, the app, and maybe sidecars."""

    def __init__(self, way: str, app: str, args: argparse.Namespace, variant: Variant) -> None:
        self.way, self.app, self.args, self.variant = way, app, args, variant
        self.net = netns.Network()
        self.folder = shared_folder()
        self.processes: list[subprocess.Popen] = []
        self.sidecars: dict[str, MeshedPod] = {}
        self.nginx: Nginx | None = None
        self.ca = create_ca(common_name="bench mesh CA")
        self.server_wrapper: tuple[str, ...] = ()
        """Runs the server's Envoy (``bench/instructions.py``: valgrind)."""

    @property
    def meshed(self) -> bool:
        return self.way != "direct"

    @property
    def listens_on_socket(self) -> bool:
        return self.meshed and "tcp" not in self.way

    @property
    def mesh(self) -> MeshConfig:
        return MTLS_MESH if self.way == MTLS_WAY else self.variant.config

    def start(self) -> Pod:
        self.net.create()
        self._write_hosts()
        static = self.folder / "static"
        static.mkdir()
        for size in self.args.sizes:
            (static / f"{size}.bin").write_bytes(b"x" * size)
        if self.meshed:
            self._start_sidecar("server", self.net.pod, self._server_pod())
        self._start_app()
        if self.meshed and self.args.client_sidecar:
            client = pod_spec({"proxy.io/upstreams": f"{SERVICE}:{APP_PORT}"}, "load", [])
            self._start_sidecar("client", self.net.client, injected(client, self.mesh))
        return self

    def _server_pod(self) -> dict:
        return injected(pod_spec(self.variant.annotations, SERVICE, [APP_PORT]), self.mesh)

    def _write_hosts(self) -> None:
        """``web`` names the server pod inside the client namespace (``ip netns exec``
        mounts /etc/netns/<namespace>/hosts over /etc/hosts), for h2load and Envoy."""
        folder = Path("/etc/netns") / self.net.client
        folder.mkdir(parents=True, exist_ok=True)
        names = f"{SERVICE} {SERVICE}.{NAMESPACE} {SERVICE}.{NAMESPACE}.svc"
        (folder / "hosts").write_text(f"127.0.0.1 localhost\n{netns.POD_V4} {names}\n")

    def _start_sidecar(self, role: str, namespace: str, spec: dict) -> None:
        folder = self.folder if role == "server" else shared_folder()
        if self.mesh.tracing.collector == LOCAL_COLLECTOR:
            receiver = [sys.executable, "-m", "tests.apps.otlp_receiver", "127.0.0.1", "4317"]
            self.processes.append(
                self.net.start(namespace, "taskset", "-c", str(LOAD_CPU), *receiver, "/dev/null")
            )
        sidecar = MeshedPod(self.net, folder, iptables_backend(), spec, namespace=namespace)
        applied = sidecar.run_init()
        if applied.returncode != 0:
            raise RuntimeError(f"init-iptables failed in {namespace}: {applied.stderr}")
        if self.mesh.mtls.identity == "pod-certificate":
            identity = ProjectedVolume(sidecar.identity_root / "proxy-identity")
            account = SERVICE if role == "server" else "load"
            identity.pod_certificate(leaf(self.ca, spiffe(NAMESPACE, account)), self.ca)
        socket = folder / f"{SERVICE}-{APP_PORT}.sock"
        floor = None
        if self.way == "floor" and role == "server":
            floor = floor_config(socket, sidecar.admin_socket)
        cpu = ("taskset", "-c", str(self.args.envoy_cpu))
        wrapper = self.server_wrapper if role == "server" else ()
        ready = 300 if wrapper else 30  # valgrind takes a minute to start Envoy
        sidecar.start_envoy(workers(spec), cpu, floor, wrapper, ready)
        self.sidecars[role] = sidecar

    def _start_app(self) -> None:
        in_pod = ["taskset", "-c", str(LOAD_CPU), *self.net.exec(self.net.pod)]
        address = "127.0.0.1" if self.meshed else "0.0.0.0"
        socket_path = self.folder / f"{SERVICE}-{APP_PORT}.sock"
        if self.app == "nginx":
            self.nginx = Nginx(
                self.folder,
                sockets=[str(socket_path)] if self.listens_on_socket else [],
                tcp_ports=[] if self.listens_on_socket else [APP_PORT],
                tcp_address=address,
                command_prefix=in_pod,
                # A fixed-rate client does not reconnect mid-run as wrk does (h2load stalls).
                keepalive_requests=1_000_000,
            ).start()
            return
        where = (
            ["--uds", str(socket_path)]
            if self.listens_on_socket
            else ["--host", address, "--port", str(APP_PORT)]
        )
        self.processes.append(
            subprocess.Popen(
                [
                    *in_pod,
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.apps.hello:app",
                    *where,
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        seconds = 120 if self.server_wrapper else 30
        wait_for(
            lambda: self._curl(f"http://{netns.POD_V4}:{APP_PORT}/healthz"), seconds, "the app"
        )

    def _curl(self, url: str) -> bool:
        return self.net.curl(self.net.client, url)[0] == 200

    def url(self, size: int) -> str:
        return f"http://{SERVICE}:{APP_PORT}/static/{size}.bin"

    def envoy_pids(self) -> dict[str, int]:
        return {role: s.envoy.pid for role, s in self.sidecars.items() if s.envoy}

    def app_pids(self) -> list[int]:
        found = subprocess.run(
            ["ip", "netns", "pids", self.net.pod], capture_output=True, text=True, timeout=10
        ).stdout.split()
        envoys = set(self.envoy_pids().values())
        return [int(pid) for pid in found if int(pid) not in envoys]

    def drive(self, size: int, rate: int, seconds: float) -> Measured:
        pids = self.envoy_pids()
        before = {role: cpu_ns(pid) for role, pid in pids.items()}
        slept = {role: sleeps(pid) for role, pid in pids.items()}
        app = self.app_pids()
        app_before = sum(cpu_ns(pid) for pid in app)
        run = paced(
            self.url(size),
            rate=rate,
            seconds=seconds,
            cpu=LOAD_CPU,
            where=self.net.exec(self.net.client),
        )
        per_request = 1000 / 1e9 / run.requests  # ns of CPU -> vCPU per 1000 req/s
        return Measured(
            rate=run.rate,
            p50=run.percentile(0.50),
            p90=run.percentile(0.90),
            p99=run.percentile(0.99),
            failed=run.failed,
            vcpu={r: (cpu_ns(p) - before[r]) * per_request for r, p in pids.items()},
            memory={role: memory_mib(pid) for role, pid in pids.items()},
            app_vcpu=(sum(cpu_ns(pid) for pid in app) - app_before) * per_request,
            wakeups={r: (sleeps(p) - slept[r]) / run.requests for r, p in pids.items()},
        )

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        self.net.destroy()
        shutil.rmtree(Path("/etc/netns") / self.net.client, ignore_errors=True)
        for sidecar in self.sidecars.values():
            shutil.rmtree(sidecar.folder, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def floor_config(socket: Path, admin: Path) -> dict:
    """The smallest config that proxies the pod's port to the app's socket: the yardstick
    for what the generated config costs beyond Envoy's own proxying."""
    envoy = "type.googleapis.com/envoy.extensions."
    hcm = {
        "@type": envoy + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "floor",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ]
        },
        "http_filters": [
            {"name": "router", "typed_config": {"@type": envoy + "filters.http.router.v3.Router"}}
        ],
    }
    original_dst = {"@type": envoy + "filters.listener.original_dst.v3.OriginalDst"}
    endpoint = {"endpoint": {"address": {"pipe": {"path": str(socket)}}}}
    return {
        "admin": {"address": {"pipe": {"path": str(admin)}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                    "listener_filters": [{"name": "original_dst", "typed_config": original_dst}],
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [{"lb_endpoints": [endpoint]}],
                    },
                }
            ],
        },
    }


def missing_tools() -> list[str]:
    wanted = {
        "h2load": "h2load (nghttp2-client)",
        "ip": "ip (iproute2)",
        "curl": "curl",
        "iptables-nft-restore": "iptables",
        "nginx": "nginx (nginx-light)",
    }
    return [what for tool, what in wanted.items() if shutil.which(tool, path=SEARCHED_PATH) is None]


@contextlib.contextmanager
def pods(app: str, args: argparse.Namespace) -> Iterator[dict[str, Pod]]:
    started: dict[str, Pod] = {}
    try:
        for way in WAYS + ((MTLS_WAY,) if args.mtls else ()):
            started[way] = Pod(way, app, args, Variant()).start()
        for variant in args.compare:
            started[compared(variant)] = Pod("sidecar-uds", app, args, variant).start()
        yield started
    finally:
        for pod in started.values():
            pod.stop()


def compared(variant: Variant) -> str:
    return f"sidecar-uds+{variant.label}"


def ms(value: float) -> str:
    return f"{value:5.2f}"


def added(value: float) -> str:
    return f"{value:+.2f}"


def report_round(number: int, runs: dict[str, Measured]) -> None:
    parts = [
        f"{way} {m.rate:5.0f} req/s p50 {ms(m.p50)} p90 {ms(m.p90)} p99 {ms(m.p99)}"
        + (f" ({m.failed} failed)" if m.failed else "")
        for way, m in runs.items()
    ]
    print(f"  round {number}: " + " | ".join(parts))


@dataclass
class Summary:
    way: str
    percentiles: dict[str, float]
    added: dict[str, float]
    vcpu: dict[str, float]
    memory: dict[str, tuple[float, float]]
    app_vcpu: float
    wakeups: dict[str, float]


def summarize(rounds: list[dict[str, Measured]]) -> list[Summary]:
    result = []
    for way in rounds[0]:
        runs = [r[way] for r in rounds]
        percentiles = {
            p: statistics.median(getattr(m, p) for m in runs) for p in ("p50", "p90", "p99")
        }
        extra = {
            p: statistics.median(getattr(r[way], p) - getattr(r["direct"], p) for r in rounds)
            for p in percentiles
        }
        roles = runs[0].vcpu
        vcpu = {role: statistics.median(m.vcpu[role] for m in runs) for role in roles}
        memory = {role: max(m.memory[role] for m in runs) for role in roles}
        app_vcpu = statistics.median(m.app_vcpu for m in runs)
        wakeups = {role: statistics.median(m.wakeups[role] for m in runs) for role in roles}
        result.append(Summary(way, percentiles, extra, vcpu, memory, app_vcpu, wakeups))
    return result


def print_summary(summaries: list[Summary], hops: int) -> None:
    print(
        "  medians over rounds (added: the median of each round's difference to direct; "
        "CPU in vCPU per 1000 req/s):"
    )
    for s in summaries:
        line = f"    {s.way:22s} " + " ".join(
            f"{p} {ms(v)} ms" + ("" if s.way == "direct" else f" ({added(s.added[p])})")
            for p, v in s.percentiles.items()
        )
        line += f"; app {s.app_vcpu:.3f}"
        for role, vcpu in s.vcpu.items():
            anon, rss = s.memory[role]
            line += (
                f"; {role} Envoy {vcpu:.3f} (woken {s.wakeups[role]:.1f} times per request), "
                f"RssAnon {anon:.1f} MiB, RSS {rss:.1f} MiB"
            )
        print(line)
    if hops == 2:
        print("    (two hops: a client and a server sidecar; per hop is half the added figure)")


def print_istio(summary: Summary, hops: int) -> None:
    """Ours against Istio's published figures, at the setting they publish."""
    two_hops = summary.added["p90"] * (2 / hops)
    server_vcpu = summary.vcpu["server"]
    rss = summary.memory["server"][1]
    how = "measured" if hops == 2 else "twice the one hop measured"
    print(
        f"  against Istio's published sidecar figures (theirs include mTLS and telemetry, and "
        f"their latency is for two hops, a client and a server sidecar):\n"
        f"    {summary.way}: added p90 {two_hops:.2f} ms for two hops ({how}) vs "
        f"{ISTIO['p90_ms']} ms = {two_hops / ISTIO['p90_ms']:.2f}x; "
        f"{server_vcpu:.3f} vCPU vs {ISTIO['vcpu']} = {server_vcpu / ISTIO['vcpu']:.2f}x; "
        f"RSS {rss * 1.048576:.0f} MB vs {ISTIO['memory_mb']:.0f} MB = "
        f"{rss * 1.048576 / ISTIO['memory_mb']:.2f}x (per 1000 req/s)"
    )


def _ratios(rounds: list[dict[str, Measured]], way: str, base: str, roles: str) -> list[float]:
    """Per round, ``way``'s Envoy CPU over ``base``'s (``roles``: server, or both)."""

    def cpu(m: Measured) -> float:
        return m.vcpu["server"] if roles == "server" else sum(m.vcpu.values())

    return sorted(cpu(r[way]) / cpu(r[base]) for r in rounds)


def _ratio_text(ratios: list[float], target: float) -> str:
    middle = statistics.median(ratios)
    verdict = "met" if middle <= target else "MISSED"
    return (
        f"{middle:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f} over rounds; target {target}x: {verdict})"
    )


def print_compared(rounds: list[dict[str, Measured]], variants: list[Variant], hops: int) -> None:
    """Each --compare way's server Envoy vCPU against the first's (one: against the
    unchanged sidecar-uds), per round; with two hops, both sidecars' too."""
    if not variants:
        return
    base = compared(variants[0]) if len(variants) > 1 else "sidecar-uds"
    for variant in variants[1:] if len(variants) > 1 else variants:
        for roles in ("server", "both")[:hops]:
            ratios = _ratios(rounds, compared(variant), base, roles)
            middle = statistics.median(ratios)
            whose = "server Envoy's" if roles == "server" else "both sidecars'"
            print(
                f"  {variant.label} vs {base.removeprefix('sidecar-uds+')}, {whose} vCPU per "
                f"1000 req/s: {middle:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f} over rounds)"
            )


def print_ratios(rounds: list[dict[str, Measured]], summaries: list[Summary], hops: int) -> None:
    """The generated config against the floor, and mTLS against plaintext: each round's
    ratio of the two ways driven side by side in it, their median and range."""
    by_way = {s.way: s for s in summaries}
    uds, floor = by_way["sidecar-uds"], by_way["floor"]
    generated = _ratios(rounds, "sidecar-uds", "floor", "server")
    print(
        f"  generated vs floor, server Envoy's vCPU per 1000 req/s ({uds.vcpu['server']:.3f} vs "
        f"{floor.vcpu['server']:.3f}): {_ratio_text(generated, 1.10)}"
    )
    secured = by_way.get(MTLS_WAY)
    if secured is None:
        return
    p90 = secured.added["p90"] * (2 / hops)
    both = _ratios(rounds, MTLS_WAY, "sidecar-uds", "both")
    print(
        f"  mTLS vs plaintext: added p90 over direct {secured.added['p90']:+.2f} ms vs "
        f"{uds.added['p90']:+.2f} ms (mTLS over two hops {p90:.2f} ms, target 0.5: "
        f"{'met' if p90 <= 0.5 else 'MISSED'}); both sidecars' vCPU per 1000 req/s "
        f"({sum(secured.vcpu.values()):.3f} vs {sum(uds.vcpu.values()):.3f}): "
        f"{_ratio_text(both, 1.25)}"
    )


def per_hop(summary: Summary, hops: int) -> tuple[float, float, float]:
    return summary.added["p90"] / hops, summary.vcpu["server"], summary.memory["server"][0]


def print_targets(summary: Summary, hops: int) -> None:
    found = per_hop(summary, hops)
    checks = [
        f"{name} {value:.3f} (target {target}: {'met' if value <= target else 'MISSED'})"
        for (name, target), value in zip(TARGETS.items(), found, strict=True)
    ]
    print("  targets, sidecar-uds: " + "; ".join(checks))
    if found[1] > TARGETS["vCPU per 1000 req/s"]:
        print_wakeup_cost(summary)


def print_wakeup_cost(summary: Summary) -> None:
    """What a wake-up costs on this machine, for judging the CPU figure on another."""
    across = wakeup_cpu_us((0, LOAD_CPU))
    alone = wakeup_cpu_us((0, 0))
    envoy_us = summary.vcpu["server"] * 1000
    woken = summary.wakeups["server"]
    print(
        f"  this machine: a wake-up costs {across:.1f} us of CPU across CPUs, {alone:.1f} us on "
        f"one CPU (two processes taking turns over pipes); the server Envoy spent "
        f"{envoy_us:.0f} us of CPU per request and was woken {woken:.1f} times per request"
    )


def profile(pod: Pod, size: int, rate: int, seconds: float) -> None:
    """Where the server Envoy's CPU goes during one more run, by shared object and symbol."""
    if shutil.which("perf") is None:
        print("  --profile needs perf (Debian's linux-perf)")
        return
    pid = pod.envoy_pids()["server"]
    with tempfile.NamedTemporaryFile(suffix=".perf") as data:
        record = subprocess.Popen(
            [*PERF_RECORD, str(pid), "-o", data.name, "sleep", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pod.drive(size, rate, seconds + 1)
        record.wait(timeout=120)
        report = subprocess.run(
            [*PERF_REPORT, "-i", data.name],
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    print(f"  where the server Envoy's CPU goes ({pod.way}, perf, % of its samples):")
    for line in report.splitlines():
        if line.strip() and not line.startswith("#"):
            print("    " + line.strip())


def measure(app: str, args: argparse.Namespace) -> list[tuple[str, int, int, Summary]]:
    """Every (size, rate) for one app; returns the sidecar-uds summaries."""
    hops = 2 if args.client_sidecar else 1
    found = []
    with pods(app, args) as started:
        server_workers = workers(started["sidecar-uds"]._server_pod())
        for size in args.sizes:
            for rate in args.rates:
                print(
                    f"\n{app}, {size // 1024} KiB responses, {rate} req/s over {CONNECTIONS} "
                    f"connections, {args.pairs} rounds x {args.seconds} s; Envoy "
                    f"{server_workers} workers on CPU {args.envoy_cpu}, app and h2load on CPU "
                    f"{LOAD_CPU}; {'client and server sidecars' if hops == 2 else 'server sidecar'}"
                )
                for pod in started.values():  # warm-up: connections, health checks, caches
                    pod.drive(size, rate, 2)
                rounds = []
                for number in range(1, args.pairs + 1):
                    runs = {
                        way: pod.drive(size, rate, args.seconds) for way, pod in started.items()
                    }
                    report_round(number, runs)
                    rounds.append(runs)
                summaries = summarize(rounds)
                print_summary(summaries, hops)
                uds = next(s for s in summaries if s.way == "sidecar-uds")
                print_ratios(rounds, summaries, hops)
                print_compared(rounds, args.compare, hops)
                if size == 1024 and rate == 1000:
                    print_istio(uds, hops)
                    print_targets(uds, hops)
                found.append((app, size, rate, uds))
                if args.profile:
                    profile(started["sidecar-uds"], size, rate, args.seconds)
        if args.mtls:
            handshakes(started, args)
    return found


CHURN_RATE = 500
"""New connections per second in the handshake run: one request per connection."""


def churn_config(sidecar: MeshedPod) -> dict:
    """The client sidecar's own bootstrap, its upstream connections used for one request
    each: every request a new connection, with a full handshake under mTLS."""
    config = remap(
        json.loads(bootstrap_of(sidecar.spec)),
        socket_dir=sidecar.folder,
        proxy_ports={},
        loopback_only=False,
        identity_root=sidecar.identity_root if sidecar.identity_root.exists() else None,
        admin_dir=sidecar.admin_socket.parent,
    )
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"].startswith("outbound|") and "||" in cluster["name"]:
            options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            cluster["typed_extension_protocol_options"] = {
                options: {
                    "@type": "type.googleapis.com/" + options,
                    "common_http_protocol_options": {"max_requests_per_connection": 1},
                    "explicit_http_config": {"http_protocol_options": {}},
                }
            }
    return config


def handshakes(started: dict[str, Pod], args: argparse.Namespace) -> None:
    """What connection churn costs: both two-hop ways again, each request on a new
    connection between the sidecars, at a fixed rate."""
    found = {}
    for way in ("sidecar-uds", MTLS_WAY):
        pod = started[way]
        client = pod.sidecars["client"]
        assert client.envoy is not None
        client.envoy.kill()
        client.envoy.wait(timeout=10)
        cpu = ("taskset", "-c", str(args.envoy_cpu))
        client.start_envoy(workers(client.spec), prefix=cpu, config=churn_config(client))
        pod.drive(1024, CHURN_RATE, 2)
        found[way] = [pod.drive(1024, CHURN_RATE, args.seconds) for _ in range(args.pairs)]
    print(
        f"\nnew connections: {CHURN_RATE} req/s, each on a new connection between the "
        f"sidecars (a full handshake under mTLS), {args.pairs} rounds x {args.seconds} s:"
    )
    for way, runs in found.items():
        p90 = statistics.median(m.p90 for m in runs)
        server = statistics.median(m.vcpu["server"] for m in runs)
        both = statistics.median(sum(m.vcpu.values()) for m in runs)
        print(
            f"  {way:18s} p90 {p90:.2f} ms; server Envoy {server:.3f}, both "
            f"{both:.3f} vCPU per 1000 connections/s"
        )
    plain = statistics.median(m.vcpu["server"] for m in found["sidecar-uds"])
    secured = statistics.median(m.vcpu["server"] for m in found[MTLS_WAY])
    extra_us = (secured - plain) * 1000
    print(
        f"  a full mTLS handshake costs the server Envoy {extra_us:.0f} us of CPU more than a "
        f"plaintext connection: one core takes about {1e6 / max(secured * 1000, 1):.0f} new "
        "mTLS connections per second"
    )


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1000 req/s, 1 KiB, nginx, 3 rounds")
    parser.add_argument("--app", default="nginx,asgi", help="nginx, asgi or both")
    parser.add_argument("--rates", type=numbers, default=[1000, 5000])
    parser.add_argument("--sizes", type=numbers, default=[1024, 65536])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--client-sidecar", action="store_true")
    parser.add_argument("--compare", type=Variant.parse, action="append", default=[])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--mtls", action="store_true", help="add mTLS between two sidecars")
    parser.add_argument(
        "--envoy-cpu",
        type=int,
        choices=[0, 1],
        default=0,
        help="where Envoy runs: 0 apart from the app and h2load (the default), 1 with them",
    )
    args = parser.parse_args()
    if args.quick:
        args.app, args.rates, args.sizes, args.pairs, args.seconds = "nginx", [1000], [1024], 3, 8
    args.client_sidecar = args.client_sidecar or args.mtls
    args.apps = [a for a in args.app.split(",") if a]
    unknown = set(args.apps) - {"nginx", "asgi"}
    if unknown:
        parser.error(f"--app: {', '.join(sorted(unknown))} is not nginx or asgi")
    return args


def main() -> None:
    args = parse_args()
    why_not = netns.available()
    missing = missing_tools()
    if why_not or missing:
        sys.exit(
            "mesh-tax: cannot run: "
            + "; ".join([*([why_not] if why_not else []), *(f"{t} is missing" for t in missing)])
            + " (scripts/bench installs what is missing)"
        )
    started = time.monotonic()
    found = [row for app in args.apps for row in measure(app, args)]
    hops = 2 if args.client_sidecar else 1
    print(f"\n(done in {time.monotonic() - started:.0f} s)")
    headline = next(((a, s, r, u) for a, s, r, u in found if s == 1024 and r == 1000), None)
    if headline:
        p90, vcpu, anon = per_hop(headline[3], hops)
        print(
            f"mesh-tax: added p90 {p90:.2f} ms per hop, {vcpu:.3f} vCPU per 1000 req/s, "
            f"RssAnon {anon:.1f} MiB (1 KiB, 1000 req/s, uds)"
        )


if __name__ == "__main__":
    main()
