"""Malformed requests get a 4xx with a JSON error: never a 500, never a hang."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import CORPUS, asgi_call, load_case, review
from webhook.engine.config import MeshConfig
from webhook.server.app import MAX_BODY, create_app

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]


def post(webhook, content: bytes | str) -> tuple[int, dict]:
    response = webhook.client.post(
        webhook.url + "/mutate", content=content, headers={"Content-Type": "application/json"}
    )
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}), "expected kind AdmissionReview"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            "AdmissionReview.request: expected an object, got nothing",
        ),
        (json.dumps(review(WEB, uid="")), "request.uid: expected a non-empty string, got ''"),
        (
            json.dumps({**review(WEB), "request": {**review(WEB)["request"], "uid": 7}}),
            "request.uid: expected a non-empty string, got int",
        ),
        (
            json.dumps({**review(WEB), "request": {**review(WEB)["request"], "kind": "Pod"}}),
            "request.kind: expected an object, got 'Pod'",
        ),
        (json.dumps(review("a pod")), "request.object: expected a Pod object, got 'a pod'"),
    ],
)
def test_malformed_request_gets_400_with_a_json_error(webhook, body, expected) -> None:
    status, payload = post(webhook, body)
    assert status == 400
    assert expected in payload["error"]


def test_a_pod_with_a_wrong_type_is_denied_naming_the_field(webhook) -> None:
    """The envelope is sound, so the API server gets an answer it can show, not a failed
    webhook call."""
    status, payload = post(webhook, json.dumps(review({"spec": {"containers": "web"}})))
    assert status == 200
    assert payload["response"]["allowed"] is False
    assert payload["response"]["status"]["code"] == 400
    assert (
        "pod field spec.containers: expected a list, got str"
        in (payload["response"]["status"]["message"])
    )


def test_body_over_3_mib_is_refused_from_its_content_length(webhook) -> None:
    status, payload = post(webhook, b" " * (MAX_BODY + 1))
    assert status == 413
    assert "larger than" in payload["error"]


def test_chunked_body_over_3_mib_is_refused_while_streaming(webhook) -> None:
    def chunks():
        for _ in range(4):
            yield b" " * 2**20

    response = webhook.client.post(webhook.url + "/mutate", content=chunks())
    assert response.status_code == 413


def test_a_body_at_the_limit_is_read(webhook) -> None:
    body = json.dumps(review(WEB)).encode()
    status, payload = post(webhook, body + b" " * (MAX_BODY - len(body)))
    assert status == 200
    assert payload["response"]["allowed"] is True


def test_a_get_on_mutate_is_refused_naming_post(webhook) -> None:
    response = webhook.client.get(webhook.url + "/mutate")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {"error": "GET /mutate: only POST is answered"}


def test_an_unknown_path_is_not_found(webhook) -> None:
    response = webhook.client.post(webhook.url + "/mutate/pods", content=b"{}")
    assert response.status_code == 404


def test_a_client_gone_before_its_body_arrived_gets_no_answer() -> None:
    """The API server gave up (its timeout) or went away: nothing is reviewed, nothing
    raised, and the connection is left to uvicorn to close."""
    sent: list[dict] = []
    arrivals = iter(
        [
            {"type": "http.request", "body": b'{"apiVersion": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict:
        return next(arrivals)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mutate", "headers": []}
    asyncio.run(create_app(MeshConfig())(scope, receive, send))
    assert sent == []


def test_server_still_serves_after_bad_requests(webhook) -> None:
    post(webhook, b"{")
    assert webhook.mutate(review(WEB))["response"]["allowed"] is True


def call_app(app, body: bytes | None) -> tuple[int, bytes]:
    """One POST /mutate straight into the ASGI app; a None body never arrives."""
    return asyncio.run(asyncio.wait_for(asgi_call(app, "POST", "/mutate", body), 5))


def test_a_body_that_never_arrives_times_out_with_408() -> None:
    status, _ = call_app(create_app(MeshConfig(), body_timeout=0.2), None)
    assert status == 408


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
CONTAINER_KEYS = ["name", "ports", "env", "volumeMounts", "resources", "securityContext"]
POD_KEYS = ["metadata", "spec"]


def mangled(document: dict, keys: list[str]) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=3).map(
        lambda changes: {**document, **changes}
    )


containers = mangled(
    {"name": "app", "image": "x", "ports": [{"containerPort": 8080}]}, CONTAINER_KEYS
)
pods = st.builds(
    lambda meta, containers_, extra: {
        "metadata": meta,
        "spec": {"containers": containers_, **extra},
    },
    st.fixed_dictionaries(
        {},
        optional={
            "annotations": st.dictionaries(
                st.sampled_from(
                    [
                        "proxy.io/concurrency",
                        "proxy.io/uds-path",
                        "proxy.io/uds-ports",
                        "proxy.io/inject",
                        "proxy.io/shm-size",
                        "proxy.io/exclude-outbound-ip-ranges",
                        "proxy.io/x",
                    ]
                ),
                json_values | st.text(max_size=40),
                max_size=3,
            ),
            "labels": st.dictionaries(st.just("proxy.io/inject"), json_values, max_size=1),
            "name": json_values,
        },
    ),
    st.lists(containers, max_size=3),
    st.dictionaries(
        st.sampled_from(
            ["initContainers", "volumes", "hostNetwork", "terminationGracePeriodSeconds"]
        ),
        json_values,
        max_size=2,
    ),
)
requests = pods.map(review) | json_values.map(
    lambda value: {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": value}
)


APP = create_app(MeshConfig())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_no_request_makes_the_webhook_fail(request) -> None:
    status, body = call_app(APP, json.dumps(request).encode())
    assert status in (200, 400), body
    payload = json.loads(body)
    if status == 200:
        assert payload["response"]["uid"] == request["request"]["uid"]
    else:
        assert payload["error"]
