"""`proxy-injector signer` for real, against the fake API: a stand-in kubelet creates the
PodCertificateRequests as the real one does for each API version, and checks what comes
back the way the API server and the pod would (the fake refuses a status the API server
would refuse, and a second answer to one request)."""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fake_kube import FakeKube
from tests.kubelet import SIGNER, StandInKubelet
from tests.processes import stop, wait_for
from tests.signers import Signers, rotate_ca, started


@pytest.fixture
def signers(fake: FakeKube, tmp_path: Path) -> Iterator[Signers]:
    found = Signers(fake, tmp_path)
    yield found
    for process in found.processes:
        if process.process.poll() is None:
            stop(process.process)


def _chain_verifies(leaf: x509.Certificate, bundle: bytes) -> bool:
    for ca in x509.load_pem_x509_certificates(bundle):
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception):
            continue
        return True
    return False


@pytest.mark.parametrize(
    ("served", "kubelet_version", "stub"),
    [
        (("v1beta1",), "v1beta1", False),  # 1.35: the key with its proof
        (("v1beta1",), "v1beta1", True),  # 1.36: a stub PKCS#10 request
        (("v1", "v1beta1"), "v1", False),  # 1.37
        (("v1", "v1beta1"), "v1beta1", False),  # a 1.35 kubelet on a 1.37 control plane
    ],
    ids=["1.35", "1.36", "1.37", "1.35-kubelet-1.37-api"],
)
def test_a_pod_gets_its_spiffe_certificate(fake, signers, served, kubelet_version, stub) -> None:
    fake.served = {
        f"certificates.k8s.io/{v}": ["podcertificaterequests", "clustertrustbundles"]
        for v in served
    }
    started(signers)
    kubelet = StandInKubelet(fake, version=kubelet_version)
    pod = kubelet.pod("shop", "web-0", account="web")
    name = kubelet.request(pod, csr=True) if stub else kubelet.request(pod)
    issued = kubelet.issued("shop", name)
    leaf = issued.leaf
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/web"
    ]
    assert sans.get_values_for_type(x509.DNSName) == []
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in usages} == {"serverAuth", "clientAuth"}
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(seconds=86400)
    refresh = dt.datetime.fromisoformat(issued.status["beginRefreshAt"].replace("Z", "+00:00"))
    assert refresh == leaf.not_valid_before_utc + lifetime * 2 / 3
    assert leaf.public_key().public_numbers() == issued.key.public_key().public_numbers()
    assert _chain_verifies(leaf, kubelet.bundle())
    (bundle,) = fake.objects["clustertrustbundles"].values()
    assert bundle["metadata"]["name"].startswith("proxy.io:spiffe:")


def test_a_shorter_maximum_is_kept_and_other_signers_are_ignored(fake, signers) -> None:
    started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    short = kubelet.request(pod, maxExpirationSeconds=3600)
    other = kubelet.request(pod, signer="example.com/other")
    leaf = kubelet.issued("shop", short).leaf
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=1)
    time.sleep(1.0)
    assert "status" not in fake.objects["podcertificaterequests"][("shop", other)]


def test_each_bad_request_is_denied_with_its_reason_and_an_event(fake, signers) -> None:
    process = started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0", account="web")
    gone = {**pod, "metadata": {**pod["metadata"], "name": "web-9", "uid": "gone"}}
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = kubelet.spec(pod, stranger, SIGNER)["proofOfPossession"]
    system = kubelet.pod("kube-system", "dns-0", account="coredns")
    cases = {
        kubelet.request(pod, proofOfPossession=forged): "InvalidProofOfPossession",
        kubelet.request(gone): "PodNotFound",
        kubelet.request(pod, serviceAccountName="admin"): "ServiceAccountMismatch",
        kubelet.request(pod, podUID="an-older-pod"): "PodMismatch",
        kubelet.request(system): "NamespaceNotMeshed",
    }
    for name, reason in cases.items():
        namespace = "kube-system" if name.startswith("dns") else "shop"
        status = kubelet.answer(namespace, name)
        (condition,) = status["conditions"]
        assert (condition["type"], condition["reason"]) == ("Denied", reason), name
        assert condition["message"] and "certificateChain" not in status
    wait_for(lambda: len(fake.events) == len(cases), 10, "an Event per denial")
    assert {e["reason"] for e in fake.events} == {"PodCertificateDenied"}
    assert any("ServiceAccountMismatch" in e["message"] for e in fake.events)
    issued = kubelet.request(pod)
    kubelet.issued("shop", issued)
    counted = 'proxy_signer_requests_total{result="issued"} 1.0'
    wait_for(lambda: counted in process.get("/metrics")[1], 5, "the issue counted")
    metrics = process.get("/metrics")[1]
    assert 'proxy_signer_requests_total{result="denied"} 5.0' in metrics
    assert 'proxy_signer_requests_total{result="issued"} 1.0' in metrics
    assert "proxy_signer_issue_duration_seconds_count 6.0" in metrics
    expiry = re.search(r"^proxy_signer_ca_expiry_timestamp_seconds (\S+)$", metrics, re.M)
    assert expiry and float(expiry[1]) > time.time() + 9 * 365 * 86400  # --create-ca: 10 years


def test_leader_failover_under_a_stream_loses_none_and_issues_none_twice(fake, signers) -> None:
    first = started(signers, "signer-a")
    second = signers.start("signer-b")
    wait_for(lambda: second.get("/readyz")[0] == 200, 20, "the standby ready")
    kubelet = StandInKubelet(fake)
    pods = [kubelet.pod("shop", f"web-{i}") for i in range(8)]
    names = []
    for round_number in range(40):
        names.append(kubelet.request(pods[round_number % len(pods)]))
        if round_number == 15:
            first.process.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    for name in names:
        kubelet.issued("shop", name, timeout=30)
    assert second.leading()
    answers = Counter((ns, name) for ns, name, _ in fake.status_writes)
    assert set(answers) == {("shop", n) for n in names}
    assert max(answers.values()) == 1


def test_a_broken_watch_and_410_gone_miss_no_request(fake, signers) -> None:
    process = started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    before = kubelet.request(pod)
    kubelet.issued("shop", before)
    fake.compact()  # every open watch ends; resuming from its version gets 410 Gone
    after = [kubelet.request(pod) for _ in range(5)]
    for name in after:
        kubelet.issued("shop", name, timeout=30)
    assert process.process.poll() is None


def test_a_restarted_signer_issues_nothing_again(fake, signers, tmp_path) -> None:
    process = started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    names = [kubelet.request(pod) for _ in range(5)]
    for name in names:
        kubelet.issued("shop", name)
    stop(process.process)
    started(signers, "signer-a")
    time.sleep(2.0)
    assert len(fake.status_writes) == len(names)
    # And its CA is the same one: the Secret made at the first start is reused.
    assert len(fake.objects["clustertrustbundles"]) == 1
    assert len(x509.load_pem_x509_certificates(kubelet.bundle())) == 1


def test_rotate_ca_trusts_the_new_ca_before_it_issues(fake, signers, tmp_path) -> None:
    started(signers)
    kubelet = StandInKubelet(fake)
    pod = kubelet.pod("shop", "web-0")
    old_leaf = kubelet.issued("shop", kubelet.request(pod)).leaf
    done = rotate_ca(fake, "--after", "3s", "--config", str(tmp_path / "mesh.yaml"))
    assert done.returncode == 0, done.stderr
    assert "issues from it 3 s later" in done.stdout
    wait_for(lambda: len(x509.load_pem_x509_certificates(kubelet.bundle())) == 2, 15, "bundle")
    published = time.monotonic()
    # Until the bundle has been out 3 s, leaves still come from the old CA.
    early = kubelet.issued("shop", kubelet.request(pod)).leaf
    if time.monotonic() - published < 2.5:
        assert early.issuer == old_leaf.issuer

    def from_new_ca() -> bool:
        leaf = kubelet.issued("shop", kubelet.request(pod)).leaf
        return leaf.issuer != old_leaf.issuer

    wait_for(from_new_ca, 20, "leaves from the new CA")
    assert time.monotonic() - published >= 2.5
    # The old CA stays trusted (its leaves are valid for a day), and both verify.
    bundle = kubelet.bundle()
    assert len(x509.load_pem_x509_certificates(bundle)) == 2
    assert _chain_verifies(old_leaf, bundle)
    again = rotate_ca(fake)
    assert again.returncode == 0, again.stderr  # the first rotation is done: a second may start
