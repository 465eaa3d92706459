"""The signer off the happy path, for real against the fake API: an API that hangs each
way it can (requests never answered on open connections, a watch gone silent, a leader cut
off), answers the API refuses, and requests it cannot read. Every request still gets a
terminal answer with a true reason, and no replica wedges or leads beside another."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_kube import FakeKube
from tests.kubelet import StandInKubelet
from tests.processes import stop, wait_for
from tests.signers import SignerProcess, Signers, started

ANSWERED_WITHIN = 30.0


@pytest.fixture
def signers(fake: FakeKube, tmp_path: Path) -> Iterator[Signers]:
    found = Signers(fake, tmp_path)
    yield found
    fake.release_hung()
    for process in found.processes:
        if process.process.poll() is None:
            stop(process.process)


def _hang_first(count: int, wanted) -> tuple[object, list[int]]:
    """A ``hang_when`` that leaves the first ``count`` matching requests unanswered."""
    left, lock = [count], threading.Lock()

    def hang(method: str, path: str, agent: str) -> bool:
        with lock:
            if left[0] > 0 and wanted(method, path, agent):
                left[0] -= 1
                return True
        return False

    return hang, left


def _all_issued(kubelet: StandInKubelet, names: list[str], since: float) -> float:
    for name in names:
        kubelet.issued("shop", name, timeout=ANSWERED_WITHIN - (time.monotonic() - since))
    return time.monotonic() - since


def test_requests_on_dead_connections_are_answered_within_30s(fake, signers) -> None:
    process = started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    kubelet.issued("shop", kubelet.request(pod))  # the signer's connections are kept alive
    # The next reads of pods are never answered and their connections stay open, as on a
    # connection whose peer is gone without a word (a NAT that forgot it, a frozen server).
    fake.hang_when, _ = _hang_first(3, lambda method, path, _: "/pods/" in path)
    since = time.monotonic()
    names = [kubelet.request(pod) for _ in range(5)]

    def pending() -> float:
        found = re.search(
            r"^proxy_signer_pending_requests (\S+)$", process.get("/metrics")[1], re.M
        )
        return float(found[1]) if found else -1.0

    wait_for(lambda: pending() >= 1, 10, "the held requests counted as pending")
    took = _all_issued(kubelet, names, since)
    assert len(fake.hung) == 3 and took < ANSWERED_WITHIN
    assert process.process.poll() is None
    metrics = process.get("/metrics")[1]
    assert re.search(r'proxy_signer_requests_total\{result="error"\} [1-9]', metrics)
    wait_for(lambda: pending() == 0, 10, "no request pending once all are answered")


def test_a_watch_gone_silent_is_listed_again(fake, signers) -> None:
    started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    kubelet.issued("shop", kubelet.request(pod))
    fake.silent_watches = True  # no event, no bookmark, no end: the connection stays open
    since = time.monotonic()
    names = [kubelet.request(pod) for _ in range(3)]
    assert _all_issued(kubelet, names, since) < ANSWERED_WITHIN
    lists = [p for m, p, _ in fake.requests if m == "GET" and "podcertificaterequests?" in p]
    assert len([p for p in lists if "watch=1" not in p]) >= 2  # the first list, and again


def test_a_stalled_leader_says_so_lets_the_lease_go_and_the_standby_answers(fake, signers) -> None:
    first = started(signers, "signer-a")
    second = signers.start("signer-b")
    wait_for(lambda: second.get("/readyz")[0] == 200, 20, "the standby ready")
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    # signer-a still renews its Lease, but none of its reads of pods is answered.
    fake.hang_when = lambda method, path, agent: "signer-a" in agent and "/pods/" in path
    since = time.monotonic()
    names = [kubelet.request(pod) for _ in range(3)]
    seen_unready = ""

    def standby_took_over() -> bool:
        nonlocal seen_unready
        status, body = first.get("/readyz")
        if status == 503 and "none was answered" in body:
            seen_unready = body
        return second.leading()

    wait_for(standby_took_over, ANSWERED_WITHIN, "the standby leading")
    assert _all_issued(kubelet, names, since) < ANSWERED_WITHIN
    assert "the Lease is let go" in seen_unready
    assert not first.leading()


def _leading_times(process: SignerProcess, until: float) -> list[float]:
    """When ``process`` said it leads, polled every 20 ms until ``until``."""
    seen = []
    while time.monotonic() < until:
        if process.leading():
            seen.append(time.monotonic())
        time.sleep(0.02)
    return seen


def test_a_leader_cut_off_from_the_api_stops_before_another_leads(fake, signers) -> None:
    first = started(signers, "signer-a")
    second = signers.start("signer-b")
    wait_for(lambda: second.get("/readyz")[0] == 200, 20, "the standby ready")
    fake.hang_when = lambda method, path, agent: "signer-a" in agent
    until = time.monotonic() + 6.0
    processes = {"a": first, "b": second}
    results: dict[str, list[float]] = {}

    def watch(key: str) -> None:
        results[key] = _leading_times(processes[key], until)

    watchers = [threading.Thread(target=watch, args=(key,)) for key in processes]
    for thread in watchers:
        thread.start()
    for thread in watchers:
        thread.join()
    assert results["a"] and results["b"], results
    assert max(results["a"]) < min(results["b"]), "two replicas led at once"


def test_every_request_gets_a_terminal_answer_with_a_true_reason(fake, signers) -> None:
    process = started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    cases = {
        kubelet.request(pod, pkixPublicKey="not base64!"): "spec.pkixPublicKey: not valid base64",
        kubelet.request(pod, maxExpirationSeconds="86400"): "expected an integer, got '86400'",
        kubelet.request(pod, maxExpirationSeconds=1800): "1800 is under 3600",
        kubelet.request(pod, created="2026-12-07T07:00:00"): "metadata.creationTimestamp",
    }
    for name, message in cases.items():
        (condition,) = kubelet.answer("shop", name)["conditions"]
        assert (condition["type"], condition["reason"]) == ("Denied", "InvalidRequest"), name
        assert message in condition["message"], condition
    assert process.process.poll() is None
    # The signer's clock 10 minutes ahead of the API server's: the API refuses the leaf's
    # notBefore (422). The request fails, saying why, rather than waiting forever.
    fake.now_offset = -600
    (condition,) = kubelet.answer("shop", kubelet.request(pod))["conditions"]
    assert (condition["type"], condition["reason"]) == ("Failed", "SignerError")
    assert "notBefore" in condition["message"]
    fake.now_offset = 0
    kubelet.issued("shop", kubelet.request(pod))
    metrics = process.get("/metrics")[1]
    assert 'proxy_signer_requests_total{result="denied"} 4.0' in metrics
    assert 'proxy_signer_requests_total{result="failed"} 1.0' in metrics
    assert 'proxy_signer_requests_total{result="error"} 1.0' in metrics
