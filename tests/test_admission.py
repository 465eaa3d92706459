"""The AdmissionReview contract, spoken to the real server over HTTPS."""

from __future__ import annotations

import time

from tests.support import CORPUS, apply, load_case, patch_of, review

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]
REPLICA = load_case(CORPUS / "12-generate-name.yaml")["pod"]


def test_uid_is_echoed_and_v1_is_answered_in_v1(webhook) -> None:
    answer = webhook.mutate(review(WEB, uid="705ab4f5-6393-11e8-b7cc-42010a800002"))
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert answer["response"]["allowed"] is True
    assert patch_of(answer)


def test_v1beta1_is_answered_in_v1beta1_with_the_same_patch(webhook) -> None:
    v1 = webhook.mutate(review(WEB, version="v1"))
    beta = webhook.mutate(review(WEB, version="v1beta1"))
    assert beta["apiVersion"] == "admission.k8s.io/v1beta1"
    assert patch_of(beta) == patch_of(v1)


def test_other_kinds_are_allowed_without_a_patch(webhook) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}]},
    }
    answer = webhook.mutate(review(service, kind="Service"))
    assert answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}


def test_updates_are_allowed_without_a_patch(webhook) -> None:
    answer = webhook.mutate(review(WEB, operation="UPDATE", oldObject=WEB))
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]


def test_subresources_are_allowed_without_a_patch(webhook) -> None:
    answer = webhook.mutate(review(WEB, subResource="ephemeralcontainers"))
    assert "patch" not in answer["response"]


def test_dry_run_gets_the_same_answer(webhook) -> None:
    real = webhook.mutate(review(WEB))
    dry = webhook.mutate(review(WEB, dryRun=True))
    assert patch_of(dry) == patch_of(real)


def test_request_namespace_wins_over_the_pods_empty_or_stale_one(webhook) -> None:
    pod = {**WEB, "metadata": {**WEB["metadata"], "namespace": "shop"}}
    answer = webhook.mutate(review(pod, namespace="kube-system"))
    assert "patch" not in answer["response"]


def test_misspelt_annotation_is_admitted_with_a_warning(webhook) -> None:
    pod = {**WEB, "metadata": {**WEB["metadata"], "annotations": {"proxy.io/concurency": "4"}}}
    answer = webhook.mutate(review(pod))
    assert answer["response"]["allowed"] is True
    assert answer["response"]["warnings"] == [
        "unknown annotation proxy.io/concurency is ignored; did you mean proxy.io/concurrency?"
    ]
    status = apply(pod, patch_of(answer))["metadata"]["annotations"]["proxy.io/status"]
    assert '"ignoredAnnotations":["proxy.io/concurency"]' in status


def test_each_admission_is_one_json_log_line(webhook) -> None:
    uid = "log-line-check-0001"
    webhook.mutate(review(REPLICA, namespace="shop", uid=uid))
    deadline = time.monotonic() + 5
    lines: list[dict] = []
    while time.monotonic() < deadline and not lines:
        lines = [line for line in webhook.log_lines() if line.get("uid") == uid]
        time.sleep(0.05)
    assert len(lines) == 1
    line = lines[0]
    assert line["namespace"] == "shop"
    assert line["pod"] == "checkout-6d8f7b9c5-*"
    assert line["decision"] == "inject"
    assert line["reason"] == "injected"
    assert line["duration_ms"] >= 0


def test_health_and_readiness(webhook) -> None:
    assert webhook.client.get(webhook.url + "/healthz").json() == {"status": "ok"}
    ready = webhook.client.get(webhook.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
