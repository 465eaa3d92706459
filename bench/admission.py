"""Admission throughput: the injector vs. an allow-all webhook on the same stack.

All are served by uvicorn over TLS (``webhook.server.run``), pinned to CPU 0; wrk (Debian's
`wrk`) runs on CPU 1 with fixed connections and duration. The allow-all floor is a FastAPI
route; a second allow-all answers as plain ASGI, as the injector's /mutate does, so the
ratio to it is what the review, its log line and its bigger answer cost. Runs alternate
injector / allow-all / allow-all (ASGI), and the figure that counts is the median of the
pairwise ratios to the FastAPI floor.

    .venv/bin/python bench/admission.py [--pairs 5] [--seconds 5] [--connections 16]

Then both at a fixed rate, half the allow-all floor's (h2load, as ``bench/common.paced``
drives it), for the p99 under a steady load.

Also prints the engine alone (``inject()`` per pod, no HTTP) from one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import orjson
from common import paced, wrk
from fastapi import FastAPI, Request
from fastapi.responses import Response

from tests.processes import free_port
from tests.support import CORPUS, load_case, review
from webhook.engine import inject
from webhook.engine.config import MeshConfig
from webhook.server.app import create_app

BODIES = {
    "one-container": "01-web-single",
    "two-containers": "03-multi-container-limits",
    "statefulset": "24-statefulset",
}


def allow_all_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        document = orjson.loads(await request.body())
        answer = {
            "apiVersion": document["apiVersion"],
            "kind": "AdmissionReview",
            "response": {"uid": document["request"]["uid"], "allowed": True},
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


def allow_all_asgi() -> Any:
    """The floor without FastAPI: what any webhook on uvicorn pays at the least."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        document = orjson.loads(b"".join(chunks))
        body = orjson.dumps(
            {
                "apiVersion": document["apiVersion"],
                "kind": "AdmissionReview",
                "response": {"uid": document["request"]["uid"], "allowed": True},
            }
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


APPS = {
    "injector": lambda: create_app(MeshConfig()),
    "allow-all": allow_all_app,
    "allow-all-asgi": allow_all_asgi,
}
FLOORS = ("allow-all", "allow-all-asgi")


def serve(kind: str, port: int, cert: str, key: str) -> None:
    from webhook.server import logs
    from webhook.server import serve as server

    logs.configure("info")
    server.run(APPS[kind](), host="127.0.0.1", port=port, cert=Path(cert), key=key)


def start(kind: str, port: int, certs: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            __file__,
            "--serve",
            kind,
            "--port",
            str(port),
            "--cert",
            str(certs / "tls.crt"),
            "--key",
            str(certs / "tls.key"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} server did not start")


def wrk_script(body: str, folder: Path) -> Path:
    script = folder / f"post-{abs(hash(body))}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n"
    )
    return script


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    return wrk(
        f"https://127.0.0.1:{port}/mutate",
        seconds=seconds,
        connections=connections,
        cpu=1,
        script=str(script),
    )


def at_half_the_floor(
    ports: dict[str, int], body: str, floor: float, folder: Path, seconds: int
) -> None:
    """Both servers at a fixed rate, half of what the allow-all floor sustains: the p99 the
    API server sees under a steady load (target: 5 ms)."""
    posted = folder / "review.json"
    posted.write_text(body)
    rate = floor / 2
    extra = ["-d", str(posted), "-H", "content-type: application/json"]
    runs = {
        kind: paced(
            f"https://127.0.0.1:{port}/mutate", rate=rate, seconds=seconds, cpu=1, extra=extra
        )
        for kind, port in ports.items()
    }
    print(
        f"  fixed rate {rate:.0f} req/s (half the floor): "
        + " | ".join(
            f"{kind} p50 {run.percentile(0.5):.2f} ms p99 {run.percentile(0.99):.2f} ms"
            + (f" ({run.failed} failed)" if run.failed else "")
            for kind, run in runs.items()
        )
        + f"; target p99 <= 5 ms: {'met' if runs['injector'].percentile(0.99) <= 5 else 'MISSED'}"
    )


def big_pod(containers: int, env: int) -> dict:
    """Istio's issue 34799 shape: many containers, each with its share of env vars."""
    return {
        "metadata": {"name": "big"},
        "spec": {
            "containers": [
                {
                    "name": f"c{i}",
                    "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8000 + i}],
                    "env": [{"name": f"V{j}", "value": "x"} for j in range(env // containers)],
                }
                for i in range(containers)
            ]
        },
    }


def engine_only() -> None:
    config = MeshConfig()
    print("engine alone (inject() per call, one process):")
    for label, name in BODIES.items():
        pod = load_case(CORPUS / f"{name}.yaml")["pod"]
        runs = timeit.repeat(lambda pod=pod: inject(pod, "shop", config), number=2000, repeat=5)
        print(f"  {label:15s} {min(runs) / 2000 * 1e6:8.1f} us")
    for containers, env in ((20, 1500), (40, 6000)):
        pod = big_pod(containers, env)
        size = len(json.dumps(pod)) / 1024
        runs = timeit.repeat(lambda pod=pod: inject(pod, "shop", config), number=20, repeat=5)
        took = min(runs) / 20 * 1e3
        print(
            f"  big pod: {containers} containers, {env} env vars ({size:.0f} KiB): {took:.2f} ms "
            f"({took * 1e3 / size:.1f} us per KiB; target < 5 ms)"
        )


def compare(ports: dict[str, int], script: Path, args: argparse.Namespace) -> float:
    """Rounds of injector / allow-all / allow-all (ASGI); prints each and the median
    ratios to each floor; returns the FastAPI floor's median req/s."""
    for port in ports.values():
        run_wrk(port, script, 1, args.connections)  # warm-up
    ratios: dict[str, dict[str, list[float]]] = {
        floor: {"rps": [], "p50": [], "p99": []} for floor in FLOORS
    }
    floors = []
    for round_ in range(args.pairs):
        result = {
            kind: run_wrk(port, script, args.seconds, args.connections)
            for kind, port in ports.items()
        }
        floors.append(result["allow-all"]["rps"])
        for floor, metrics in ratios.items():
            for metric, values in metrics.items():
                values.append(result["injector"][metric] / result[floor][metric])
        print(
            f"  round {round_ + 1}: "
            + " | ".join(
                f"{kind} {run['rps']:6.0f} req/s p50 {run['p50']:5.2f} ms p99 {run['p99']:5.2f} ms"
                for kind, run in result.items()
            )
        )
    for floor, metrics in ratios.items():
        target = " (target: rps >= 0.75x)" if floor == "allow-all" else ""
        print(
            f"  median injector/{floor}: "
            + ", ".join(f"{m} {statistics.median(v):.2f}x" for m, v in metrics.items())
            + target
        )
    return statistics.median(floors)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", choices=list(APPS))
    parser.add_argument("--port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.cert, args.key)
        return
    if not shutil.which("wrk") or not shutil.which("taskset"):
        sys.exit("bench/admission.py needs wrk and taskset (apt-get install wrk util-linux)")
    from certs.authority import write_self_signed

    engine_only()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_self_signed(folder, ["localhost", "127.0.0.1"])
        ports = {kind: free_port() for kind in APPS}
        servers = [start(kind, port, folder) for kind, port in ports.items()]
        try:
            for label, name in BODIES.items():
                pod = load_case(CORPUS / f"{name}.yaml")["pod"]
                body = json.dumps(review(pod, "shop", uid="bench"))
                print(
                    f"\n{label} ({len(body)} bytes), {args.pairs} rounds x {args.seconds}s, "
                    f"{args.connections} connections:"
                )
                floor = compare(ports, wrk_script(body, folder), args)
                if shutil.which("h2load"):
                    fixed = {kind: ports[kind] for kind in ("injector", "allow-all")}
                    at_half_the_floor(fixed, body, floor, folder, args.seconds)
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
