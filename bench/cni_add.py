"""What the CNI plugin costs the node per pod: ``proxy-injector cni`` ADD, timed as the
runtime runs it (a new process, the config on stdin), for a pod meshed in cni mode (one API
read, entering its network namespace, the rules applied) and for one that is not (one API
read), interleaved; and VERSION, which is the interpreter's start alone.

    .venv/bin/python bench/cni_add.py [--runs 15] [--backend nft]

Needs root (a network namespace of its own, iptables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

from tests.fake_kube import FakeKube
from tests.support import apply
from webhook.engine import inject
from webhook.engine.config import from_mapping

PLUGIN = [sys.executable, "-m", "webhook", "cni"]


def pod(name: str, meshed: bool) -> dict:
    spec = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]
        },
    }
    if meshed:
        result = inject(spec, "shop", from_mapping({"interception": "cni"}))
        spec = apply(spec, list(result.patch))
    return spec


def timed(command: str, name: str, config: dict, netns: str) -> float:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "bench",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}",
    }
    started = time.perf_counter()
    done = subprocess.run(
        PLUGIN, input=json.dumps(config), env=env, capture_output=True, text=True, cwd=ROOT
    )
    took = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{command} {name}: {done.stdout} {done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--backend", default="nft", choices=["nft", "legacy"])
    args = parser.parse_args()
    api = FakeKube()
    api.pods["shop"] = [pod("meshed-0", True), pod("plain-0", False)]
    netns = "pi-cni-bench"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with tempfile.TemporaryDirectory() as folder:
            kubeconfig = Path(folder) / "kubeconfig"
            kubeconfig.write_text(
                json.dumps(
                    {"clusters": [{"cluster": {"server": api.url}}], "users": [{"user": {}}]}
                )
            )
            config = {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "proxy-injector",
                "kubeconfig": str(kubeconfig),
                "iptablesBackend": args.backend,
                "prevResult": {"cniVersion": "1.0.0", "interfaces": [], "ips": []},
            }
            path = f"/var/run/netns/{netns}"
            found: dict[str, list[float]] = {"meshed": [], "not meshed": [], "VERSION": []}
            for _ in range(args.runs):
                found["meshed"].append(timed("ADD", "meshed-0", config, path))
                found["not meshed"].append(timed("ADD", "plain-0", config, path))
                found["VERSION"].append(timed("VERSION", "plain-0", {}, path))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        api.close()
    print(f"proxy-injector cni, a new process per call, median (min-max) of {args.runs}:")
    for label, runs in found.items():
        what = "ADD" if label != "VERSION" else "VERSION (start-up only)"
        print(
            f"  {what:24s} {label if label != 'VERSION' else '':11s} "
            f"{statistics.median(runs):6.1f} ms ({min(runs):.1f}-{max(runs):.1f})"
        )


if __name__ == "__main__":
    main()
