"""What the signer sustains: a rollout of N pods at once (a burst of N PodCertificateRequests
against the fake API), the signer pinned to CPU 0 and the fake API on CPU 1; each request's
time from its creation to its answer accepted by the API (p50, p99), and certificates
issued per second over the burst. Then the same number paced at ``--rate`` a second (a
rollout as the kubelets create the requests), whose p99 is each request's own wait. Then
the signing alone (the policy's checks and the leaf, no API) on one core: the ceiling the
API calls leave room for.

    .venv/bin/python bench/signer.py [--burst 1000] [--rounds 3]

Targets: at least 500 certificates a second, p99 under 200 ms against the fake API.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fake_kube import FakeKube
from tests.kubelet import StandInKubelet
from tests.processes import stop, wait_for
from tests.signers import SignerProcess
from webhook.engine.config import from_mapping
from webhook.signer import authority, issue, review
from webhook.signer.requests import parse

SIGNER_CPU, API_CPU = 0, 1


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_signer(fake: FakeKube, folder: Path) -> SignerProcess:
    prefix = ("taskset", "-c", str(SIGNER_CPU))
    signer = SignerProcess(fake, folder, "bench", "--log-level", "warning", prefix=prefix)
    wait_for(lambda: signer.get("/readyz")[0] == 200 and signer.leading(), 30, "the leader")
    return signer


def burst(
    fake: FakeKube, kubelet: StandInKubelet, count: int, round_number: int, rate: float = 0.0
) -> dict[str, float]:
    """``count`` requests at once, or at ``rate`` a second (a rollout as kubelets pace it),
    in a namespace of the round's own (the fake API finds a pod by scanning its namespace)."""
    namespace = f"shop-{round_number}"
    pods = [kubelet.pod(namespace, f"web-{i}") for i in range(count)]
    specs = []
    for pod in pods:  # keys and proofs made before the clock starts
        name = f"{pod['metadata']['name']}-cert"
        private = ec.generate_private_key(ec.SECP256R1())
        kubelet.keys[f"{namespace}/{name}"] = private
        specs.append((name, kubelet.spec(pod, private, "proxy.io/spiffe")))
    created: dict[tuple[str, str], float] = {}
    start = time.monotonic()
    for index, (name, spec) in enumerate(specs):
        if rate:
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
        fake.put_object(
            "podcertificaterequests",
            {
                "apiVersion": "certificates.k8s.io/v1beta1",
                "kind": "PodCertificateRequest",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            },
        )
        created[(namespace, name)] = time.monotonic()
    wait_for(lambda: all(k in fake.answered_at for k in created), 120, "every request answered")
    latencies = [(fake.answered_at[k] - t) * 1000 for k, t in created.items()]
    finished = max(fake.answered_at[k] for k in created)
    return {
        "per_second": count / (finished - start),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "created_per_second": count / (max(created.values()) - start),
    }


def signing_alone(count: int) -> float:
    """Certificates per second from review.review + issue.issued, no API, on CPU 0."""
    os.sched_setaffinity(0, {SIGNER_CPU})
    config = from_mapping({"mtls": {"identity": "pod-certificate"}})
    fake = type("NoApi", (), {"put_pod": staticmethod(lambda pod: pod)})()
    kubelet = StandInKubelet(fake)  # type: ignore[arg-type]
    ca = authority.new_ca(dt.datetime.now(dt.UTC))
    requests = []
    for i in range(count):
        pod = {
            "metadata": {"name": f"web-{i}", "namespace": "shop", "uid": f"uid-{i}"},
            "spec": {"serviceAccountName": "web", "nodeName": "node-a"},
        }
        key = ec.generate_private_key(ec.SECP256R1())
        obj = {
            "apiVersion": "certificates.k8s.io/v1beta1",
            "metadata": {"name": f"web-{i}", "namespace": "shop", "uid": str(i)},
            "spec": kubelet.spec(pod, key, "proxy.io/spiffe"),
        }
        requests.append((parse(obj), pod))
    start = time.perf_counter()
    for request, pod in requests:
        verdict = review.review(request, pod, config)
        assert verdict.public_key is not None
        issue.issued(request, verdict.public_key, ca, config, dt.datetime.now(dt.UTC))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0, help="the paced rounds' rate")
    args = parser.parse_args()
    os.sched_setaffinity(0, {API_CPU})  # the fake API's threads, and the stand-in kubelet
    fake = FakeKube()
    fake.served["certificates.k8s.io/v1beta1"] = ["podcertificaterequests", "clustertrustbundles"]
    with tempfile.TemporaryDirectory(prefix="signer-bench-") as folder:
        signer = start_signer(fake, Path(folder))
        try:
            kubelet = StandInKubelet(fake)
            rows = [burst(fake, kubelet, args.burst, n) for n in range(args.rounds)]
            paced = [
                burst(fake, kubelet, args.burst, args.rounds + n, rate=args.rate)
                for n in range(args.rounds)
            ]
        finally:
            stop(signer.process)
            fake.close()
    print(
        f"signer: bursts of {args.burst} PodCertificateRequests (a rollout of {args.burst} pods), "
        f"signer on CPU {SIGNER_CPU}, the fake API on CPU {API_CPU}:"
    )
    for n, row in enumerate(rows, 1):
        print(
            f"  round {n}: {row['per_second']:.0f} certificates/s; request to answer p50 "
            f"{row['p50']:.0f} ms, p99 {row['p99']:.0f} ms (requests created at "
            f"{row['created_per_second']:.0f}/s)"
        )
    for n, row in enumerate(paced, 1):
        print(
            f"  paced round {n}: {args.burst} requests at {args.rate:.0f}/s: request to answer "
            f"p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms"
        )
    rate = statistics.median(r["per_second"] for r in rows)
    p99 = statistics.median(r["p99"] for r in paced)
    alone = signing_alone(min(args.burst, 500))
    print(f"  signing alone (checks and the leaf, no API): {alone:.0f} certificates/s on one core")
    print(
        f"signer: {rate:.0f} certificates/s (target 500: {'met' if rate >= 500 else 'MISSED'}), "
        f"p99 {p99:.0f} ms at {args.rate:.0f} requests/s (target 200: "
        f"{'met' if p99 <= 200 else 'MISSED'}), medians of {args.rounds} rounds of {args.burst}"
    )


if __name__ == "__main__":
    main()
