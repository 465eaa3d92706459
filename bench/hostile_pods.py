"""The worst pods we can build (tests/hostile.py), timed in the engine and through the
whole review (JSON parse, engine, encoded answer), in one process.

Target: every shape under 100 ms in the engine. Bodies run up to the API server's 3 MiB.

    .venv/bin/python bench/hostile_pods.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import orjson
from common import ROOT  # noqa: F401  (puts the project on sys.path)

from tests.hostile import SHAPES, body
from webhook.engine import InternalError, inject
from webhook.engine.config import MeshConfig
from webhook.engine.pod import InvalidPod
from webhook.server.admission import review

TARGET_MS = 100.0


def best_of(repeat: int, call) -> float:
    """The fastest of ``repeat`` runs, in ms: the least disturbed by the machine."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def engine_call(pod: dict, config: MeshConfig):
    def call() -> None:
        with contextlib.suppress(InvalidPod, InternalError):
            inject(pod, "shop", config)

    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    config = MeshConfig()
    worst = 0.0
    print(f"{'shape':28s} {'body':>9s} {'engine':>9s} {'review':>9s}  answer")
    for name, make in SHAPES.items():
        data = body(make())
        pod = orjson.loads(data)["request"]["object"]
        engine_ms = best_of(args.repeat, engine_call(pod, config))
        review_ms = best_of(args.repeat, lambda data=data: review(data, config))
        reviewed = review(data, config)
        worst = max(worst, engine_ms)
        print(
            f"{name:28s} {len(data) / 2**20:6.2f} MiB {engine_ms:6.1f} ms {review_ms:6.1f} ms"
            f"  {reviewed.outcome} ({reviewed.reason}), {len(reviewed.body):,} bytes"
        )
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(f"worst in the engine: {worst:.1f} ms (target < {TARGET_MS:.0f} ms: {verdict})")


if __name__ == "__main__":
    main()
