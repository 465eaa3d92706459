"""`proxy-injector check --pre` through the real kubernetes client against the fake API:
a cluster ready for the injector passes; each thing that would break the install or its
pods is named with its hint, and exits 1."""

from __future__ import annotations

import json

import pytest

from tests.fake_kube import FakeKube
from tests.support import proxy_injector


@pytest.fixture
def fake():
    api = FakeKube()
    yield api
    api.close()


def pre(fake: FakeKube, *args: str):
    return proxy_injector("check", "--pre", "--kube-api", fake.url, *args)


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def enforcing(name: str, level: str) -> dict:
    return namespace(name, **{"pod-security.kubernetes.io/enforce": level})


def mutating(name: str, entry: str, resources: list[str], operations: list[str]) -> dict:
    rule = {"apiGroups": [""], "apiVersions": ["v1"], "resources": resources}
    return {
        "metadata": {"name": name},
        "webhooks": [{"name": entry, "rules": [{**rule, "operations": operations}]}],
    }


def failures(out: str) -> list[str]:
    return [line.split(":")[0] for line in out.splitlines() if line.startswith("FAIL")]


def test_a_cluster_ready_for_the_injector_passes(fake) -> None:
    fake.namespaces["shop"] = namespace("shop")
    fake.webhooks["proxy-injector"] = mutating("proxy-injector", "x.proxy.io", ["pods"], ["CREATE"])
    done = pre(fake)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ok   Kubernetes is 1.29 or newer: 1.33" in out
    assert "ok   you may create what the install creates: 14 kinds" in out
    assert "ok   other mutating webhooks on pod creation: none" in out
    assert "ok   Pod Security admits what the mesh config adds: interception init-container" in out
    assert (
        "ok   mTLS with pod certificates is available (components/mtls): not now (needs "
        "Kubernetes 1.34+, the API server is 1.33); mtls.identity is none" in out
    )


def test_each_obstacle_is_named_with_its_hint(fake, tmp_path) -> None:
    fake.git_version = "v1.28.9-gke.1"
    fake.denied = {
        ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("create", "apps", "daemonsets"),
    }
    fake.webhooks["istio-sidecar-injector"] = mutating(
        "istio-sidecar-injector", "namespace.sidecar-injector.istio.io", ["pods"], ["CREATE"]
    )
    fake.webhooks["vault-agent-injector-cfg"] = mutating(
        "vault-agent-injector-cfg", "vault.hashicorp.com", ["pods"], ["CREATE", "UPDATE"]
    )
    fake.webhooks["deployments-only"] = mutating(
        "deployments-only", "d.example.com", ["deployments"], ["CREATE"]
    )
    fake.namespaces["payments"] = enforcing("payments", "restricted")
    fake.namespaces["kube-system"] = enforcing("kube-system", "baseline")
    config = tmp_path / "mesh.yaml"
    config.write_text("mtls: {identity: pod-certificate}\n")
    done = pre(fake, "--config", str(config), "-o", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    results = {r["check"]: r for r in json.loads(done.stdout)}
    assert not results["Kubernetes is 1.29 or newer"]["ok"]
    assert results["Kubernetes is 1.29 or newer"]["detail"] == "the API server is 1.28"
    assert "nativeSidecar: false" in results["Kubernetes is 1.29 or newer"]["hint"]
    assert results["you may create what the install creates"]["items"] == [
        "create mutatingwebhookconfigurations (cluster-wide)",
        "create daemonsets in proxy-system",
    ]
    assert results["no other mesh's injector is installed"]["items"] == [
        "istio-sidecar-injector/namespace.sidecar-injector.istio.io"
    ]
    others = results["other mutating webhooks on pod creation"]
    assert others["ok"] and len(others["items"]) == 2
    assert "vault-agent-injector-cfg/vault.hashicorp.com" in others["items"]
    security = results["Pod Security admits what the mesh config adds"]
    assert security["items"] == [
        "payments: enforces restricted; proxy-init needs NET_ADMIN and NET_RAW"
    ]
    assert "components/cni" in security["hint"]
    certificates = results["mTLS with pod certificates is available (components/mtls)"]
    assert not certificates["ok"]
    assert "PodCertificateRequest and ClusterTrustBundle feature gates" in certificates["hint"]


def test_with_the_cni_agent_its_own_namespace_must_admit_it(fake, tmp_path) -> None:
    fake.git_version = "v1.35.0"
    fake.served = {"certificates.k8s.io/v1beta1": ["podcertificaterequests", "clustertrustbundles"]}
    fake.namespaces["payments"] = enforcing("payments", "restricted")
    fake.namespaces["proxy-system"] = enforcing("proxy-system", "baseline")
    config = tmp_path / "mesh.yaml"
    config.write_text("interception: cni\n")
    done = pre(fake, "--config", str(config))
    assert done.returncode == 1
    assert failures(done.stdout) == ["FAIL Pod Security admits what the mesh config adds"]
    assert "proxy-system: enforces baseline; the CNI agent's DaemonSet is privileged" in done.stdout
    assert (
        "ok   mTLS with pod certificates is available (components/mtls): PodCertificateRequest "
        "and ClusterTrustBundle served" in done.stdout
    )
