"""Every pod of the corpus goes through the real webhook over HTTPS; each patch is applied
as the API server applies it and the result must be a valid Pod that real Envoy accepts."""

from __future__ import annotations

import json

import pytest

from tests.support import (
    apply,
    bootstrap_of,
    container,
    corpus,
    envoy_validate,
    patch_of,
    review,
    schema_errors,
)
from webhook.engine import inject
from webhook.engine.config import MeshConfig

CASES = corpus()
INJECTED = [case for case in CASES if case["expect"] == "inject"]


def ids(cases: list[dict]) -> list[str]:
    return [case["id"] for case in cases]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20
    assert len(INJECTED) >= 15


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_corpus_pods_are_valid_kubernetes_pods(case: dict) -> None:
    assert schema_errors(case["pod"]) == []


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_engine_decision_and_reason(case: dict) -> None:
    result = inject(case["pod"], case["namespace"], MeshConfig())
    assert result.outcome == case["expect"], result.message
    assert result.reason.code == case.get("reason", "injected")
    for text in case.get("warnings", []):
        assert any(text in warning for warning in result.warnings), result.warnings


def _mutated(webhook, case: dict) -> tuple[dict, dict]:
    answer = webhook.mutate(review(case["pod"], case["namespace"], uid=f"uid-{case['id']}"))
    assert answer["response"]["uid"] == f"uid-{case['id']}"
    return answer, apply(case["pod"], patch_of(answer))


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["expect"] == "skip"],
    ids=ids([c for c in CASES if c["expect"] == "skip"]),
)
def test_skipped_pods_are_admitted_unchanged(webhook, case: dict) -> None:
    answer, _ = _mutated(webhook, case)
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]
    # A skip the pod's owner did not ask for says why, for kubectl to print.
    for text in case.get("warnings", []):
        assert any(text in warning for warning in answer["response"].get("warnings", []))


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["expect"] == "deny"],
    ids=ids([c for c in CASES if c["expect"] == "deny"]),
)
def test_denied_pods_get_a_400_with_the_reason(webhook, case: dict) -> None:
    answer, _ = _mutated(webhook, case)
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert case["message"] in response["status"]["message"]
    assert "patch" not in response


@pytest.mark.parametrize("case", INJECTED, ids=ids(INJECTED))
def test_injected_pod_is_valid_and_meshed(webhook, case: dict) -> None:
    answer, pod = _mutated(webhook, case)
    assert answer["response"]["allowed"] is True
    assert schema_errors(pod) == []

    spec = pod["spec"]
    original_inits = [c["name"] for c in case["pod"]["spec"].get("initContainers", [])]
    # Native sidecar (the default): the proxy starts right after proxy-init, before the
    # app's own init containers, and keeps running (restartPolicy Always).
    assert [c["name"] for c in spec["initContainers"]] == ["proxy-init", "proxy", *original_inits]
    assert spec["initContainers"][1]["restartPolicy"] == "Always"
    assert "proxy" not in [c["name"] for c in spec["containers"]]
    proxy = container(pod, "proxy")
    shm_volume = next(m["name"] for m in proxy["volumeMounts"] if m["mountPath"] == "/dev/shm")
    for app in spec["containers"]:
        mounts = [m for m in app.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        assert [m["name"] for m in mounts] == [shm_volume], app["name"]

    status = json.loads(pod["metadata"]["annotations"]["proxy.io/status"])
    assert status["containers"] == ["proxy"]
    assert status["volumes"] == [*case.get("volumes_added", ["proxy-shm"]), "proxy-admin"]
    # The admin API's volume is the proxy's alone: no other container can reach the socket.
    admin_mounts = [
        c["name"]
        for c in spec["containers"] + spec["initContainers"]
        for m in c.get("volumeMounts", [])
        if m["name"] == "proxy-admin"
    ]
    assert admin_mounts == ["proxy"]
    if "shm_size" in case:
        volume = next(v for v in spec["volumes"] if v["name"] == "proxy-shm")
        assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": case["shm_size"]}
    if "concurrency" in case:
        assert proxy["args"][proxy["args"].index("--concurrency") + 1] == str(case["concurrency"])
    for text in case.get("warnings", []):
        assert any(text in warning for warning in answer["response"].get("warnings", []))


@pytest.mark.parametrize("case", INJECTED, ids=ids(INJECTED))
def test_sockets_match_bootstrap_and_env(webhook, case: dict) -> None:
    _, pod = _mutated(webhook, case)
    bootstrap = json.loads(bootstrap_of(pod))
    pipes = sorted(
        lb["endpoint"]["address"]["pipe"]["path"]
        for cluster in bootstrap["static_resources"]["clusters"]
        if cluster["name"].count("|") == 1
        for group in cluster.get("load_assignment", {}).get("endpoints", [])
        for lb in group["lb_endpoints"]
        if "pipe" in lb["endpoint"]["address"]
    )
    env_sockets = sorted(
        var["value"]
        for app in pod["spec"]["containers"]
        if app["name"] != "proxy"
        for var in app.get("env", [])
        if var["name"].startswith("PROXY_UDS_PATH_")
    )
    assert pipes == env_sockets
    if "sockets" in case:
        assert pipes == sorted(case["sockets"])


@pytest.mark.parametrize("case", INJECTED, ids=ids(INJECTED))
def test_reinvocation_adds_nothing(webhook, case: dict) -> None:
    _, pod = _mutated(webhook, case)
    again = webhook.mutate(review(pod, case["namespace"]))
    assert again["response"]["allowed"] is True
    assert "patch" not in again["response"]


@pytest.mark.envoy
@pytest.mark.parametrize("case", INJECTED, ids=ids(INJECTED))
def test_bootstrap_passes_envoy_validate(webhook, case: dict) -> None:
    _, pod = _mutated(webhook, case)
    result = envoy_validate(bootstrap_of(pod))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
