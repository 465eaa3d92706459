"""Kubernetes Events about admissions, through the real kubernetes client to the fake API
(tests/fake_kube.py): made for injections, skips and denials, never for dry runs, and
never in the way of an admission when the API stalls or fails."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
from kubernetes import client

from tests.fake_kube import FakeKube
from tests.processes import wait_for
from tests.support import CORPUS, asgi_call, load_case, review
from webhook.engine.config import MeshConfig, from_mapping
from webhook.server.app import create_app
from webhook.server.events import EventSender, kube_post
from webhook.server.metrics import Metrics

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]


def pod(annotations: dict[str, str] | None = None, owned: bool = False) -> dict:
    result = copy.deepcopy(WEB)
    result["metadata"]["annotations"] = annotations or {}
    if owned:
        result["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7c9d8f",
                "uid": "0a1b2c3d-0000-4000-8000-000000000001",
                "controller": True,
            }
        ]
    return result


@pytest.fixture
def fake():
    api = FakeKube()
    yield api
    api.events_open.set()
    api.close()


def sender(fake: FakeKube, metrics: Metrics, capacity: int = 1000) -> EventSender:
    configuration = client.Configuration()
    configuration.host = fake.url
    return EventSender(kube_post(client.ApiClient(configuration)), metrics.event, capacity)


async def post(app, body: dict) -> dict:
    status_code, answer = await asgi_call(app, "POST", "/mutate", json.dumps(body).encode())
    assert status_code == 200
    return json.loads(answer)["response"]


def admit(app, *bodies: dict) -> list[dict]:
    async def all_of() -> list[dict]:
        return [await post(app, body) for body in bodies]

    return asyncio.run(asyncio.wait_for(all_of(), 30))


def test_events_for_inject_skip_and_deny_and_none_for_dry_runs(fake) -> None:
    metrics = Metrics()
    app = create_app(MeshConfig(), events=sender(fake, metrics))
    answers = admit(
        app,
        review(pod(owned=True)),
        review(pod({"proxy.io/inject": "false"})),
        review(pod({"proxy.io/concurrency": "lots"})),
        review(pod(), dryRun=True),
    )
    assert [a["allowed"] for a in answers] == [True, True, False, True]
    wait_for(lambda: len(fake.events) == 3, 10, "three events")
    reasons = {e["reason"]: e for e in fake.events}
    assert set(reasons) == {"injected", "opted_out_by_annotation", "invalid_annotation"}
    injected = reasons["injected"]
    assert injected["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-7c9d8f",
        "uid": "0a1b2c3d-0000-4000-8000-000000000001",
        "namespace": "shop",
    }
    assert injected["type"] == "Normal"
    assert reasons["invalid_annotation"]["type"] == "Warning"
    assert reasons["invalid_annotation"]["involvedObject"]["kind"] == "Pod"
    assert "proxy.io/concurrency" in reasons["invalid_annotation"]["message"]
    assert metrics.events.labels("sent")._value.get() == 3


def test_a_stalled_api_never_holds_an_admission(fake) -> None:
    fake.events_open.clear()
    metrics = Metrics()
    app = create_app(MeshConfig(), events=sender(fake, metrics, capacity=5))
    answers = admit(app, *(review(pod()) for _ in range(20)))
    # Every admission was answered while the API still held the first Event.
    assert all(a["allowed"] for a in answers)
    assert fake.events == []
    assert metrics.events.labels("dropped")._value.get() >= 14
    fake.events_open.set()
    wait_for(lambda: len(fake.events) >= 5, 10, "the queued events")


def test_a_failing_api_is_counted_and_admissions_go_on(fake) -> None:
    fake.events_fail = True
    metrics = Metrics()
    app = create_app(MeshConfig(), events=sender(fake, metrics))
    answers = admit(app, review(pod()), review(pod()))
    assert all(a["allowed"] for a in answers)
    wait_for(lambda: metrics.events.labels("failed")._value.get() == 2, 10, "failures counted")


def test_events_can_be_switched_off_in_the_mesh_config(fake) -> None:
    metrics = Metrics()
    app = create_app(from_mapping({"events": False}), events=sender(fake, metrics))
    admit(app, review(pod()))
    assert fake.events == []
    assert metrics.events.labels("sent")._value.get() == 0
