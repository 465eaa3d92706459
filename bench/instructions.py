"""Envoy's instructions per request, way against way: the figure this VM's CPU clock is
too noisy (+-20 % from round to round) to give to the percent.

Each ``--compare KEY=VALUE`` way is a pod as ``bench/mesh_tax.py`` builds it (the pod's real
iptables rules, nginx on its socket, the generated bootstrap, a real OTLP receiver when
the collector is ``localhost:4317``), with its server Envoy run under valgrind's callgrind.
After an uncounted round of the same load (connections, handshakes, caches), each round
drives every way in turn: callgrind's counters are zeroed (``callgrind_control -z``),
``--requests`` requests of 1 KiB go through at ``--rate`` req/s (Debian's h2load, 16
HTTP/1.1 connections, as mesh_tax), the counters are dumped, and their total over the
requests is that way's instructions per request; each way after the first is printed as a
ratio to the first, round by round. Instruction counts do not depend on
what else the machine is doing: the same way gives the same figure to about 1 % a round.
They are not CPU time (cache misses and memory stalls are left out), so mesh_tax's vCPU
ratios stay the figures to quote, these the ones to trust to the percent.

``--mtls`` gives every way a client sidecar and ``mtls.identity: pod-certificate``
(certificates minted here and laid out as the kubelet writes them): the two-hop shape in
which a mesh runs. The client's Envoy runs natively; only the server's is counted.

    .venv/bin/python bench/instructions.py [--rounds 3] [--requests 1000] [--rate 20]
        [--mtls] --compare KEY=VALUE [--compare KEY=VALUE ...]

Needs root, valgrind, and what mesh_tax needs (``scripts/bench`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import paced
from mesh_tax import LOAD_CPU, Pod, Variant, missing_tools

from tests import netns

PROXY_USER = ("setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups")
NAMED = ("USER=callgrind", "LOGNAME=callgrind", "HOST=bench")
"""valgrind and vgdb name their pipes after the user and host in the environment; the
proxy's UID has no name, so both sides are given the same one."""
MTLS = "mtls.identity=pod-certificate"
SIZE = 1024


class Callgrind:
    """Counts one Envoy's instructions: the command that runs it, and zero/dump through
    vgdb. vgdb must run as the proxy's user: the pipe it creates for the answer is its
    own, and Envoy (UID 1337) could not open one of root's."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="callgrind-"))
        self.folder.chmod(0o777)
        self.prefix = f"--vgdb-prefix={self.folder}/vgdb"

    def wrapper(self) -> tuple[str, ...]:
        out = f"--callgrind-out-file={self.folder}/out.%p"
        return (*NAMED, "valgrind", "--tool=callgrind", self.prefix, out, "--dump-line=no")

    def _control(self, pid: int, action: str) -> None:
        command = [*PROXY_USER, "env", *NAMED, "callgrind_control", self.prefix, action, str(pid)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"callgrind_control {action} {pid}: {done.stdout}{done.stderr}")

    def zero(self, pid: int) -> None:
        self._control(pid, "-z")

    def dump(self, pid: int) -> int:
        """Instructions since the last zero."""
        before = set(self.folder.glob(f"out.{pid}.*"))
        self._control(pid, "-d")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for path in set(self.folder.glob(f"out.{pid}.*")) - before:
                total = _total(path)
                if total is not None:
                    return total
            time.sleep(0.2)
        raise RuntimeError(f"callgrind wrote no dump for {pid} within 60 s")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _total(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    return None


def counted(variant: Variant, mtls: bool) -> Variant:
    """The way as run: with ``--mtls``, pod certificates too (labelled as given)."""
    if not mtls:
        return variant
    run = Variant.parse(f"{MTLS};{variant.label}")
    run.label = variant.label
    return run


@contextlib.contextmanager
def pods(args: argparse.Namespace, callgrind: Callgrind) -> Iterator[dict[str, Pod]]:
    options = argparse.Namespace(sizes=[SIZE], client_sidecar=args.mtls, envoy_cpu=0)
    started: dict[str, Pod] = {}
    try:
        for variant in args.compare:
            pod = Pod("sidecar-uds", "nginx", options, counted(variant, args.mtls))
            pod.server_wrapper = callgrind.wrapper()
            started[variant.label] = pod.start()
        yield started
    finally:
        for pod in started.values():
            pod.stop()


def instructions_per_request(pod: Pod, callgrind: Callgrind, args: argparse.Namespace) -> float:
    pid = pod.envoy_pids()["server"]
    callgrind.zero(pid)
    run = paced(
        pod.url(SIZE),
        rate=args.rate,
        seconds=args.requests / args.rate,
        cpu=LOAD_CPU,
        where=pod.net.exec(pod.net.client),
    )
    total = callgrind.dump(pid)
    if run.failed:
        raise RuntimeError(f"{run.failed} of {run.requests + run.failed} requests failed")
    return total / run.requests


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    callgrind = Callgrind()
    try:
        with pods(args, callgrind) as started:
            for pod in started.values():  # warm-up, a round's load: connections, handshakes
                where = pod.net.exec(pod.net.client)
                seconds = args.requests / args.rate
                paced(pod.url(SIZE), rate=args.rate, seconds=seconds, cpu=LOAD_CPU, where=where)
            found: dict[str, list[float]] = {label: [] for label in started}
            for number in range(1, args.rounds + 1):
                for label, pod in started.items():
                    found[label].append(instructions_per_request(pod, callgrind, args))
                print(
                    f"round {number}: "
                    + ", ".join(f"{label} {values[-1]:,.0f}" for label, values in found.items()),
                    flush=True,
                )
            return found
    finally:
        callgrind.remove()


def report(found: dict[str, list[float]], args: argparse.Namespace) -> None:
    labels = list(found)
    base = labels[0]
    shape = "client and server sidecars, mTLS" if args.mtls else "server sidecar, plaintext"
    print(
        f"\nserver Envoy's instructions per request (callgrind; nginx, 1 KiB, {args.rate} req/s, "
        f"{args.requests} requests a round, {args.rounds} rounds; {shape}):"
    )
    for label in labels:
        middle = statistics.median(found[label])
        line = f"  {label}: {middle:,.0f}"
        if label != base:
            ratios = sorted(a / b for a, b in zip(found[label], found[base], strict=True))
            line += (
                f"  {statistics.median(ratios):.3f}x of {base or 'defaults'} "
                f"({ratios[0]:.3f}-{ratios[-1]:.3f} over rounds)"
            )
        print(line)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Variant.parse, action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=20, help="req/s (under valgrind Envoy runs ~50x slower)"
    )
    parser.add_argument("--mtls", action="store_true", help="two sidecars, mTLS between them")
    args = parser.parse_args()
    if len(args.compare) < 2:
        parser.error(
            "give at least two --compare ways: the first is what the rest are priced against"
        )
    return args


def main() -> None:
    args = parse_args()
    why_not = netns.available()
    missing = [*missing_tools(), *(["valgrind"] if shutil.which("valgrind") is None else [])]
    if why_not or missing or os.geteuid() != 0:
        reasons = [*([why_not] if why_not else []), *(f"{t} is missing" for t in missing)]
        sys.exit("instructions: cannot run: " + "; ".join(reasons or ["needs root"]))
    started = time.monotonic()
    report(measure(args), args)
    print(f"\n(done in {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
