"""Sidecar memory as a function of declared upstreams (``proxy.io/upstreams``).

Starts the generated sidecar for the same pod with 5 and with 1,000 declared upstreams and
reads anonymous resident memory (RssAnon in /proc/PID/status: most of VmRSS is the mapped
Envoy binary) once Envoy is ready and has settled. Reports the cost per declared upstream,
for the generated config and, for comparison, the same config with Envoy's default stats
(every stat, created eagerly), and the floor: an Envoy with nothing but its admin listener,
all measured in alternating runs. Targets (issue 13): at most 35 KiB per declared
upstream, and a typical pod's sidecar (5 upstreams, 2 workers) within 1.5 MiB of the
floor.

    .venv/bin/python bench/envoy_memory.py [--runs 3] [--concurrency 2]

Needs root (Envoy runs as UID 1337, as in a pod).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import dataclass

from common import generated_bootstrap, one_container_pod

from tests.processes import Envoy, shared_folder


def bootstrap_for(upstreams: int) -> dict:
    """The generated bootstrap; past the argument limit the engine denies the pod, so build
    it from the engine's parts directly."""
    names = ",".join(f"svc-{i}.apps:8080" for i in range(upstreams))
    pod = one_container_pod({"proxy.io/upstreams": names})
    return generated_bootstrap(pod, allow_oversize=True)


def rss_anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def anon_by_origin(pid: int) -> dict[str, int]:
    """Anonymous KiB of the process by where the pages are: the Envoy binary's own data
    (relocated read-only data, .data and the .bss mapped right after it) or elsewhere
    (the heap, thread stacks)."""
    result = {"binary": 0, "heap and stacks": 0}
    binary_end, origin = None, "heap and stacks"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if not parts[0].endswith(":"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                path = parts[5] if len(parts) > 5 else ""
                if path.endswith("/envoy") or (not path and start == binary_end):
                    origin = "binary"
                    binary_end = end if path else None
                else:
                    origin = "heap and stacks"
            elif parts[0] == "Anonymous:":
                result[origin] += int(parts[1])
    return result


@dataclass(frozen=True)
class Sample:
    rss_anon_kib: int
    by_origin: dict[str, int]
    allocated_kib: int
    """What Envoy's allocator holds for it (admin /memory)."""


def measure(bootstrap: dict, concurrency: int, settle: float) -> Sample:
    folder = shared_folder()
    # 1,000 upstreams do not fit in one argument (the engine denies such pods): use a file.
    envoy = Envoy(bootstrap, folder, concurrency=concurrency, config_file=True)
    try:
        envoy.start()
        time.sleep(settle)
        pid = envoy.process.pid
        allocated = int(json.loads(envoy.admin("/memory")[1])["allocated"]) // 1024
        return Sample(rss_anon_kib(pid), anon_by_origin(pid), allocated)
    finally:
        envoy.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    configs = {}
    for count in (5, 1000):
        generated = bootstrap_for(count)
        stock_stats = {
            k: v for k, v in generated.items() if k not in ("stats_config", "deferred_stat_options")
        }
        configs[("generated", count)] = generated
        configs[("all stats", count)] = stock_stats
    configs[("floor", 0)] = {
        "admin": configs[("generated", 5)]["admin"],
        "static_resources": {"listeners": [], "clusters": []},
    }
    samples: dict[tuple[str, int], list[Sample]] = {key: [] for key in configs}
    for _ in range(args.runs):
        for key, bootstrap in configs.items():
            samples[key].append(measure(bootstrap, args.concurrency, args.settle))
    results = {key: [s.rss_anon_kib for s in found] for key, found in samples.items()}
    print(
        f"RssAnon once ready (+{args.settle:g}s), Envoy --concurrency {args.concurrency}, "
        f"median of {args.runs} alternating runs:"
    )
    for variant in ("generated", "all stats"):
        small = statistics.median(results[(variant, 5)])
        large = statistics.median(results[(variant, 1000)])
        print(
            f"  {variant:9s}: 5 upstreams {small / 1024:6.1f} MiB, 1,000 upstreams "
            f"{large / 1024:6.1f} MiB, {(large - small) / 995:.1f} KiB per declared upstream "
            f"(runs: {results[(variant, 5)]} / {results[(variant, 1000)]} KiB)"
        )
    floor = min(samples[("floor", 0)], key=lambda s: s.rss_anon_kib)
    floor_kib = statistics.median(results[("floor", 0)])
    print(
        f"  floor: Envoy with only its admin listener {floor_kib / 1024:.1f} MiB: its "
        f"binary's data {floor.by_origin['binary'] / 1024:.1f} MiB, heap and stacks "
        f"{floor.by_origin['heap and stacks'] / 1024:.1f} MiB "
        f"({floor.allocated_kib / 1024:.1f} MiB allocated by Envoy at start-up)"
    )
    per_upstream = (
        statistics.median(results[("generated", 1000)])
        - statistics.median(results[("generated", 5)])
    ) / 995
    typical = (statistics.median(results[("generated", 5)]) - floor_kib) / 1024
    print(
        f"  targets: {per_upstream:.1f} KiB per declared upstream (<= 35: "
        f"{'met' if per_upstream <= 35 else 'MISSED'}); a typical pod (5 upstreams, "
        f"{args.concurrency} workers) {typical:+.2f} MiB over the floor (<= 1.5: "
        f"{'met' if typical <= 1.5 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
