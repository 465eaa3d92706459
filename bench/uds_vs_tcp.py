"""Envoy to the app over a Unix socket vs. over TCP loopback, same bootstrap otherwise.

The engine generates the sidecar bootstrap for one pod three times, in UDS mode, in TCP
mode (``proxy.io/upstream: tcp``) and in auto mode (the socket while the app listens
there, else TCP, with a health check every second); all run (remapped by the documented
test hook) in front of the same nginx, which listens on a socket and on a TCP port, so
auto mode takes the socket. Envoy is pinned to CPU 0 with ``--concurrency 1``; nginx (one
worker) and wrk share CPU 1. Runs rotate UDS / TCP / auto, and the figures that count are
the medians of the ratios within each round: UDS/TCP, and auto/UDS, which shows what auto
mode's health check and second priority cost. Each run also reports Envoy's own CPU time
per request (user + system, from /proc), the cost the socket cuts.

``--profile`` then samples Envoy under load with ``perf`` (Debian's linux-perf) in each
mode and prints where its CPU goes: receiving from the app (``tcp_recvmsg`` or
``unix_stream_read_generic``, with what they call), TCP sends, loopback softirq work and
Envoy's own code. The client leg is TCP in both modes, so UDS mode's work apart from
receiving from the app is what both must do at least: the UDS/TCP ratio can at most reach
TCP's cost over that (a socket costing nothing), or over that plus the copy out of the
socket (a socket costing only its copy).

    .venv/bin/python bench/uds_vs_tcp.py [--pairs 5] [--seconds 10] [--connections 32]
        [--profile]

Needs root (Envoy runs as UID 1337, as in a pod), Debian's nginx-light and wrk.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile

from common import cpu_seconds, generated_bootstrap, one_container_pod, pin, wrk

from tests.processes import Envoy, Nginx, free_port, shared_folder

SIZES = {"1 KiB": 1024, "256 KiB": 256 * 1024}
MODES = ("uds", "tcp", "auto")


def measured_run(pid: int, url: str, args: argparse.Namespace) -> dict[str, float]:
    before = cpu_seconds(pid)
    result = wrk(url, seconds=args.seconds, connections=args.connections, cpu=1)
    requests = result["rps"] * args.seconds
    return {**result, "cpu_us": (cpu_seconds(pid) - before) / requests * 1e6}


def summary(run: dict[str, float]) -> str:
    return (
        f"{run['rps']:6.0f} req/s p50 {run['p50']:5.2f} ms p99 {run['p99']:5.2f} ms "
        f"Envoy {run['cpu_us']:3.0f} us/req"
    )


RECEIVING, COPYING = "receiving from the app", "  of which copying to Envoy"
PROFILED = {
    RECEIVING: ("tcp_recvmsg", "unix_stream_read_generic"),
    COPYING: ("_copy_to_iter",),
    "softirq (loopback delivery)": ("handle_softirqs",),
    "TCP sends (client; app in TCP mode)": ("tcp_sendmsg",),
}


def cpu_profile(pid: int, url: str, args: argparse.Namespace) -> dict[str, float]:
    """Percent of Envoy's samples under each PROFILED group, and in Envoy's own code."""
    seconds = max(3, args.seconds // 2)
    with tempfile.NamedTemporaryFile(suffix=".perf") as data:
        record = subprocess.Popen(
            [
                "perf",
                "record",
                "-q",
                "-g",
                "-o",
                data.name,
                "-p",
                str(pid),
                "--",
                "sleep",
                str(seconds),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wrk(url, seconds=seconds + 1, connections=args.connections, cpu=1)
        record.wait(timeout=60)
        report = ["perf", "report", "-i", data.name, "--stdio", "-g", "none"]
        by_symbol = subprocess.run(
            [*report, "--children", "--sort", "sym"], capture_output=True, text=True, timeout=300
        ).stdout
        by_object = subprocess.run(
            [*report, "--no-children", "--sort", "dso"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    children = {
        m.group(2): float(m.group(1))
        for m in re.finditer(r"^\s+([\d.]+)%\s+[\d.]+%\s+\[k\]\s+(\S+)\s*$", by_symbol, re.M)
    }
    shares = {g: sum(children.get(s, 0.0) for s in syms) for g, syms in PROFILED.items()}
    own = re.search(r"^\s+([\d.]+)%\s+envoy\s*$", by_object, re.M)
    return {**shares, "Envoy's own code": float(own.group(1)) if own else 0.0}


def print_profiles(
    envoys: dict, urls: dict[str, str], cpu_us: dict[str, float], args: argparse.Namespace
) -> None:
    """Shares of Envoy's samples per mode, and two bounds on the UDS/TCP ratio from them:
    UDS mode's work apart from receiving from the app is what both modes must do at least
    (the client leg is TCP either way), plus, for a socket, at least the copy."""
    if shutil.which("perf") is None:
        print("  --profile needs perf (Debian's linux-perf)")
        return
    profiles = {m: cpu_profile(envoys[m].process.pid, urls[m], args) for m in urls}
    print("  where Envoy's CPU goes (perf, % of its samples):")
    for group, tcp in profiles["tcp"].items():
        print(f"    {group:36s} UDS {profiles['uds'][group]:5.1f} %  TCP {tcp:5.1f} %")
    uds = profiles["uds"]
    shared_us = cpu_us["uds"] * (100 - uds[RECEIVING]) / 100
    copy_us = cpu_us["uds"] * uds[COPYING] / 100
    print(
        f"  both modes: {shared_us:.0f} us/req besides receiving from the app; TCP mode "
        f"{cpu_us['tcp']:.0f} us/req in all. UDS at most {cpu_us['tcp'] / shared_us:.2f}x "
        f"TCP with a socket costing nothing, "
        f"{cpu_us['tcp'] / (shared_us + copy_us):.2f}x with one costing only its copy"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="where Envoy's CPU goes (perf)")
    parser.add_argument(
        "--app-protocol",
        choices=["http1", "h2"],
        default="http1",
        help="what Envoy speaks to the app (h2: the port is named http2, nginx serves h2c)",
    )
    parser.add_argument(
        "--app-sndbuf", default="", help="nginx's socket send buffer (listen ... sndbuf=), e.g. 4m"
    )
    args = parser.parse_args()
    folder = shared_folder()
    nginx_port = free_port()
    static = folder / "static"
    static.mkdir()
    for size in SIZES.values():
        (static / f"{size}.bin").write_bytes(b"x" * size)
    nginx = Nginx(
        folder,
        sockets=[str(folder / "web-8080.sock")],
        tcp_ports=[nginx_port],
        listen_options=f" sndbuf={args.app_sndbuf}" if args.app_sndbuf else "",
        http2=args.app_protocol == "h2",
    )
    # A port named http2 makes Envoy speak HTTP/2 to the app.
    port_name = "http2" if args.app_protocol == "h2" else "http"
    envoys = {}
    try:
        nginx.start()
        pin(nginx.process.pid, 1)
        for mode in MODES:
            envoys[mode] = Envoy(
                generated_bootstrap(one_container_pod({"proxy.io/upstream": mode}, port_name)),
                folder,
                inbound_ports=[8080],
                app_ports={8080: nginx_port},
            ).start()
            pin(envoys[mode].process.pid, 0)
        for label, size in SIZES.items():
            urls = {
                m: f"http://127.0.0.1:{e.ports[8080]}/static/{size}.bin" for m, e in envoys.items()
            }
            for url in urls.values():
                wrk(url, seconds=2, connections=args.connections, cpu=1)  # warm-up
            ratios: dict[str, list[float]] = {"rps": [], "p50": [], "p99": []}
            auto_ratios: dict[str, list[float]] = {"rps": [], "p50": [], "p99": []}
            print(
                f"\n{label} responses, {args.app_protocol} to the app, app sndbuf "
                f"{args.app_sndbuf or 'default'}, "
                f"{args.pairs} pairs x {args.seconds}s, "
                f"{args.connections} connections, Envoy --concurrency 1 on CPU 0:"
            )
            cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            for pair in range(args.pairs):
                runs = {}
                for mode, url in urls.items():
                    runs[mode] = measured_run(envoys[mode].process.pid, url, args)
                    cpu[mode].append(runs[mode]["cpu_us"])
                uds, tcp, auto = runs["uds"], runs["tcp"], runs["auto"]
                for metric in ratios:
                    ratios[metric].append(uds[metric] / tcp[metric])
                    auto_ratios[metric].append(auto[metric] / uds[metric])
                print(
                    f"  round {pair + 1}: UDS {summary(uds)} | TCP {summary(tcp)} | "
                    f"auto {summary(auto)}"
                )
            for name, found in (("UDS/TCP", ratios), ("auto/UDS", auto_ratios)):
                print(
                    f"  median {name}: "
                    + ", ".join(f"{m} {statistics.median(v):.2f}x" for m, v in found.items())
                )
            rps, p99 = statistics.median(ratios["rps"]), statistics.median(ratios["p99"])
            met = rps >= 1.10 and p99 <= 1.0
            print(
                f"  target UDS >= 1.10x TCP's req/s with p99 no worse: {'met' if met else 'MISSED'}"
            )
            print(
                "  Envoy CPU per request: "
                + ", ".join(f"{m} {statistics.median(v):.0f} us" for m, v in cpu.items())
            )
            if args.profile:
                medians = {m: statistics.median(v) for m, v in cpu.items()}
                print_profiles(envoys, {m: urls[m] for m in ("uds", "tcp")}, medians, args)
    finally:
        for envoy in envoys.values():
            envoy.stop()
        nginx.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
