"""What the CNI plugin costs the node per pod: ADD through the static relay (a new process per
call, the config on stdin, as the runtime runs it) to the warm agent, for a pod meshed in cni
mode (its rules applied inside a new network namespace each time, as for a new pod) and for
one that is not, interleaved;
VERSION, which the relay answers alone (its start-up); ADD with the agent away (the relay
failing open); and the agent's time from its process start to serving and to ready.

    .venv/bin/python bench/cni_add.py [--runs 21] [--starts 5] [--backend nft]

Needs root (network namespaces, iptables) and musl-gcc (scripts/build-relay).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the project on sys.path)

from tests.cni_node import SimulatedNode, pod_spec, relay_binary
from tests.processes import wait_for

PREV = {"cniVersion": "1.0.0", "interfaces": [], "ips": []}


def timed_add(node: SimulatedNode, name: str, uid: str, netns: str) -> float:
    entry = next(p for p in node.conflist()["plugins"] if p["type"] == "proxy-injector")
    config = {"cniVersion": "1.0.0", "name": "meshnet", **entry, "prevResult": PREV}
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "bench",
        "CNI_NETNS": f"/var/run/netns/{netns}",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name};K8S_POD_UID={uid}",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [str(node.bin_dir / "proxy-injector")], input=json.dumps(config).encode(), env=env,
        capture_output=True, check=False,
    )  # fmt: skip
    took = (time.perf_counter() - started) * 1000
    if done.returncode != 0 or json.loads(done.stdout) != PREV:
        raise RuntimeError(f"ADD {name}: {done.stdout!r}")
    return took


def timed_version() -> float:
    started = time.perf_counter()
    subprocess.run([str(relay_binary())], env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                   check=True)  # fmt: skip
    return (time.perf_counter() - started) * 1000


def agent_start(node: SimulatedNode) -> tuple[float, float]:
    """(ms to serving, ms to ready) from the agent's own log lines."""
    node.start_agent()
    node.wait_ready()
    wait_for(lambda: "ready, " in node.agent_log(), 10, "the ready line")
    log = node.agent_log()
    serving = float(re.search(r"cni.sock, (\d+) ms after the process started", log).group(1))
    ready = float(re.search(r"ready, (\d+) ms after the process started", log).group(1))
    node.kill_agent(signal.SIGTERM)
    return serving, ready


def line(label: str, runs: list[float]) -> str:
    return f"  {label:44s} {statistics.median(runs):7.1f} ms ({min(runs):.1f}-{max(runs):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--backend", default="nft", choices=["nft", "legacy"])
    args = parser.parse_args()
    found: dict[str, list[float]] = {k: [] for k in ("meshed", "plain", "version", "away")}
    starts: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        node = SimulatedNode(Path(folder), args.backend)
        try:
            node.write_conflist()
            meshed = node.api.put_pod(pod_spec("shop", "meshed-0", meshed=True))
            plain = node.api.put_pod(pod_spec("shop", "plain-0", meshed=False))
            box = node.sandbox("shop", "meshed-0", meshed["metadata"]["uid"])
            for _ in range(args.starts):
                starts.append(agent_start(node))
            node.start_agent()
            node.wait_ready()
            for _ in range(3):  # warm-up
                timed_add(node, "meshed-0", meshed["metadata"]["uid"], box.netns)
            for _ in range(args.runs):
                fresh = node.sandbox("shop", "meshed-0", meshed["metadata"]["uid"])  # a new pod
                found["meshed"].append(
                    timed_add(node, "meshed-0", meshed["metadata"]["uid"], fresh.netns)
                )
                found["plain"].append(
                    timed_add(node, "plain-0", plain["metadata"]["uid"], box.netns)
                )
                found["version"].append(timed_version())
            node.kill_agent(signal.SIGKILL)
            for _ in range(args.runs):
                found["away"].append(timed_add(node, "plain-0", "", box.netns))
        finally:
            node.destroy()
    print(f"proxy-injector CNI plugin (relay + warm agent, iptables-{args.backend}), "
          f"median (min-max) of {args.runs}:")  # fmt: skip
    print(line("ADD, a meshed pod (rules applied)", found["meshed"]))
    print(line("ADD, a pod that is not meshed", found["plain"]))
    print(line("VERSION (the relay's start alone)", found["version"]))
    print(line("ADD with the agent away (fails open)", found["away"]))
    print(f"agent start, median (min-max) of {args.starts}:")
    print(line("process start to serving its socket", [s for s, _ in starts]))
    print(line("process start to ready (installed, pods listed)", [r for _, r in starts]))


if __name__ == "__main__":
    main()
