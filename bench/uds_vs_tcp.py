"""Envoy to the app over a Unix socket vs. over TCP loopback, same bootstrap otherwise.

The engine generates the sidecar bootstrap for one pod twice, in UDS mode and in TCP mode
(``proxy.io/upstream: tcp``); both run (remapped by the documented test hook) in front of
the same nginx, which listens on a socket and on a TCP port. Envoy is pinned to CPU 0 with
``--concurrency 1``; nginx (one worker) and wrk share CPU 1. Runs alternate UDS / TCP, and
the figure that counts is the median of the pairwise ratios.

    .venv/bin/python bench/uds_vs_tcp.py [--pairs 5] [--seconds 10] [--connections 32]

Needs root (Envoy runs as UID 1337, as in a pod), Debian's nginx-light and wrk.
"""

from __future__ import annotations

import argparse
import shutil
import statistics

from common import generated_bootstrap, pin, wrk

from tests.processes import Envoy, Nginx, free_port, shared_folder

SIZES = {"1 KiB": 1024, "256 KiB": 256 * 1024}


def pod(upstream: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "annotations": {"proxy.io/upstream": upstream}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
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
    )
    envoys = {}
    try:
        nginx.start()
        pin(nginx.process.pid, 1)
        for mode in ("uds", "tcp"):
            envoys[mode] = Envoy(
                generated_bootstrap(pod(mode)),
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
            print(
                f"\n{label} responses, app sndbuf {args.app_sndbuf or 'default'}, "
                f"{args.pairs} pairs x {args.seconds}s, "
                f"{args.connections} connections, Envoy --concurrency 1 on CPU 0:"
            )
            for pair in range(args.pairs):
                runs = {
                    m: wrk(u, seconds=args.seconds, connections=args.connections, cpu=1)
                    for m, u in urls.items()
                }
                uds, tcp = runs["uds"], runs["tcp"]
                ratios["rps"].append(uds["rps"] / tcp["rps"])
                ratios["p50"].append(uds["p50"] / tcp["p50"])
                ratios["p99"].append(uds["p99"] / tcp["p99"])
                print(
                    f"  pair {pair + 1}: UDS {uds['rps']:8.0f} req/s p50 {uds['p50']:6.2f} ms "
                    f"p99 {uds['p99']:6.2f} ms | TCP {tcp['rps']:8.0f} req/s "
                    f"p50 {tcp['p50']:6.2f} ms p99 {tcp['p99']:6.2f} ms"
                )
            print(
                "  median UDS/TCP: "
                + ", ".join(f"{m} {statistics.median(v):.2f}x" for m, v in ratios.items())
            )
    finally:
        for envoy in envoys.values():
            envoy.stop()
        nginx.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
