"""Meshed pods in namespaces enforcing Pod Security: with interception: cni every
container the injector adds passes the restricted profile, so a pod that passed baseline or
restricted before injection still does; with init-container mode proxy-init fails both.
Checked with the published rules (``tests/pod_security.py``) over the corpus."""

from __future__ import annotations

import pytest

from tests.pod_security import LEVELS, violations
from tests.support import apply, corpus
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping

CNI = from_mapping({"interception": "cni"})
INJECTED = [c for c in corpus() if c["expect"] == "inject"]

RESTRICTED_APP = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "payments-5c8d7-q9x2k"},
    "spec": {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "payments",
                "image": "registry.example/payments:3.2.1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
            }
        ],
    },
}


def injected(pod: dict, namespace: str, config: MeshConfig) -> dict:
    result = inject(pod, namespace, config)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


@pytest.mark.parametrize("case", INJECTED, ids=[c["id"] for c in INJECTED])
def test_cni_mode_keeps_every_level_the_pod_passed(case: dict) -> None:
    out = injected(case["pod"], case["namespace"], CNI)
    for level in LEVELS:
        if not violations(case["pod"], level):
            assert violations(out, level) == [], level


def test_the_corpus_holds_pods_that_pass_each_level() -> None:
    pods = [c["pod"] for c in INJECTED] + [RESTRICTED_APP]
    assert sum(not violations(p, "baseline") for p in pods) >= 10
    assert not violations(RESTRICTED_APP, "restricted")


def test_a_restricted_app_stays_restricted_with_cni_and_fails_baseline_with_proxy_init() -> None:
    meshed = injected(RESTRICTED_APP, "payments", CNI)
    assert [c["name"] for c in meshed["spec"]["initContainers"]] == ["proxy-validate", "proxy"]
    assert violations(meshed, "restricted") == []
    classic = injected(RESTRICTED_APP, "payments", MeshConfig())
    assert violations(classic, "baseline") == ["proxy-init: capabilities ['NET_ADMIN', 'NET_RAW']"]
    assert "proxy-init: runAsNonRoot != true" in violations(classic, "restricted")
    assert "proxy-init: runAsUser=0" in violations(classic, "restricted")


def test_the_checker_catches_what_the_profiles_forbid() -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "hostNetwork": True,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [
                {
                    "name": "c",
                    "image": "i",
                    "ports": [{"containerPort": 80, "hostPort": 80}],
                    "securityContext": {
                        "privileged": True,
                        "seccompProfile": {"type": "Unconfined"},
                    },
                }
            ],
        },
    }
    assert violations(pod, "baseline") == [
        "hostNetwork=true",
        "c: privileged",
        "c: seccomp Unconfined",
        "volume root: hostPath",
        "c: hostPort 80",
    ]
    assert "c: allowPrivilegeEscalation != false" in violations(pod, "restricted")


def test_init_container_mode_warns_in_namespaces_that_enforce_pod_security() -> None:
    enforcing = from_mapping({"podSecurityNamespaces": ["payments"]})
    warned = inject(RESTRICTED_APP, "payments", enforcing).warnings
    assert warned == (
        "namespace payments enforces Pod Security (mesh config podSecurityNamespaces): "
        "proxy-init runs as root with NET_ADMIN and NET_RAW, which baseline and restricted "
        "reject; use proxy.io/interception: cni with the proxy-injector CNI plugin",
    )
    cni = {
        **RESTRICTED_APP,
        "metadata": {"name": "p", "annotations": {"proxy.io/interception": "cni"}},
    }
    assert inject(cni, "payments", enforcing).warnings == ()
    assert inject(RESTRICTED_APP, "shop", enforcing).warnings == ()


def test_cni_mode_refuses_a_spec_that_would_overflow_the_pods_annotations() -> None:
    """The spec repeats the range annotations: near the API server's 256 KiB it is refused
    naming itself, rather than the API server refusing the pod without naming us."""
    ranges = ",".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(1000))
    annotations = {
        "proxy.io/interception": "cni",
        "proxy.io/exclude-outbound-ip-ranges": ranges,
        "example.com/notes": "n" * (250_000 - len(ranges)),
    }
    pod = {**RESTRICTED_APP, "metadata": {"name": "p", "annotations": annotations}}
    result = inject(pod, "payments", MeshConfig())
    assert result.outcome == Outcome.DENY and result.reason.code == "invalid_annotation"
    assert result.message.startswith("proxy.io/interception-spec (")
    assert "more than the 262,144 bytes the API server accepts" in result.message
    annotations["example.com/notes"] = "short"
    assert inject(pod, "payments", MeshConfig()).outcome == Outcome.INJECT
