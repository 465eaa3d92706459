"""Shared pieces of the benchmarks: generating a pod's bootstrap, pinning, running wrk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import apply, bootstrap_of  # noqa: E402
from webhook.engine import Outcome, inject  # noqa: E402
from webhook.engine import core as engine  # noqa: E402
from webhook.engine.config import MeshConfig  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def generated_bootstrap(pod: dict, namespace: str = "bench", allow_oversize: bool = False) -> dict:
    """The bootstrap the engine puts in this pod's proxy container. ``allow_oversize`` lifts
    the one-argument size limit (the engine denies such pods) to measure large configs."""
    limit = engine.ARG_MAX_BYTES
    engine.ARG_MAX_BYTES = 2**31 if allow_oversize else limit
    try:
        result = inject(pod, namespace, MeshConfig())
    finally:
        engine.ARG_MAX_BYTES = limit
    assert result.outcome == Outcome.INJECT, result.message
    return json.loads(bootstrap_of(apply(pod, list(result.patch))))


def one_container_pod(annotations: dict[str, str], port_name: str = "http") -> dict:
    """A pod whose one container serves port 8080; the annotations pick what to measure."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "annotations": annotations},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "web:1",
                    "ports": [{"name": port_name, "containerPort": 8080}],
                }
            ]
        },
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpu: int) -> None:
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True
    )


def wrk(
    url: str, *, seconds: int, connections: int, cpu: int, script: str | None = None
) -> dict[str, float]:
    command = [
        "taskset",
        "-c",
        str(cpu),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    if script:
        command[-1:-1] = ["-s", script]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk saw errors:\n" + out)

    def latency(pct: str) -> float:
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out, re.M)
        assert match, out
        return float(match.group(1)) * UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"rps": float(rps.group(1)), "p50": latency("50"), "p99": latency("99")}


PACED_CONNECTIONS = 16


@dataclass
class Paced:
    """One fixed-rate run: every request's latency (ms, sorted) and how many failed."""

    latencies: list[float]
    failed: int
    seconds: float

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.failed

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(fraction * len(self.latencies)))]


def paced(
    url: str,
    *,
    rate: float,
    seconds: float,
    cpu: int,
    where: list[str] | None = None,
    extra: list[str] | None = None,
) -> Paced:
    """``rate`` req/s over 16 HTTP/1.1 connections for ``seconds``, from Debian's h2load
    (``--rps``), each request's latency in microseconds from its log. The connections start
    1 ms apart, which spreads their requests evenly over each period (at 1,000 and 5,000
    req/s). Paced in step, as ``hey -q`` and a plain ``h2load --rps`` do, all 16 send at the
    same instant, and p90 measures a queue of 16 requests. ``where`` runs it elsewhere
    (``ip netns exec NS``)."""
    with tempfile.NamedTemporaryFile(prefix="paced-", suffix=".log") as log:
        finished = subprocess.run(
            [
                *("taskset", "-c", str(cpu)),
                *(where or []),
                *("h2load", "--h1", f"-c{PACED_CONNECTIONS}", f"--rps={rate / PACED_CONNECTIONS}"),
                *("-r1", "--rate-period=1ms", f"-n{round(rate * seconds)}", "-N5s"),
                f"--log-file={log.name}",
                *(extra or []),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        rows = [line.split("\t") for line in Path(log.name).read_text().splitlines()]
    ok = sorted(int(row[2]) / 1000 for row in rows if row[1].startswith("2"))
    if finished.returncode != 0 or not ok:
        raise RuntimeError(f"h2load against {url} failed: {finished.stdout[-2000:]}")
    return Paced(ok, len(rows) - len(ok), seconds)


def wakeup_cpu_us(cpus: tuple[int, int], rounds: int = 20_000) -> float:
    """CPU time, in us, that one wake-up costs here: two processes pinned to ``cpus`` take
    turns over a pair of pipes, each read sleeping until the other's write wakes it. The
    figure includes a pipe read and write; across CPUs it also includes the interrupt
    that wakes an idle CPU, which on a virtual machine can cost several times more."""
    ping, pong = os.pipe(), os.pipe()

    def player(cpu: int, first: bool, inbox: int, outbox: int) -> int:
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {cpu})
            if first:
                os.write(outbox, b".")
            for _ in range(rounds - first):
                os.read(inbox, 1)
                os.write(outbox, b".")
            if first:
                os.read(inbox, 1)
            os._exit(0)
        return pid

    players = [player(cpus[0], True, pong[0], ping[1]), player(cpus[1], False, ping[0], pong[1])]
    used = 0.0
    for pid in players:
        _, _, usage = os.wait4(pid, 0)
        used += usage.ru_utime + usage.ru_stime
    for fd in (*ping, *pong):
        os.close(fd)
    return used / (2 * rounds) * 1e6
