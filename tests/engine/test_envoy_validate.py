"""Every annotation combination the tests rely on yields a bootstrap real Envoy accepts."""

from __future__ import annotations

import pytest

from tests.support import CORPUS, apply, bootstrap_of, envoy_validate, load_case
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig

COMBINATIONS = {
    "tcp upstream": {"proxy.io/upstream": "tcp"},
    "uds subset": {"proxy.io/uds-ports": "http"},
    "inbound list": {"proxy.io/include-inbound-ports": "8080"},
    "exclusions": {
        "proxy.io/exclude-inbound-ports": "9090",
        "proxy.io/exclude-outbound-ports": "5432",
        "proxy.io/exclude-outbound-ip-ranges": "10.0.0.0/8,fd00::/8",
    },
    "egress socket alone": {"proxy.io/outbound-uds": "true"},
    "one upstream": {"proxy.io/upstreams": "reviews:9080"},
    "upstreams on two ports": {"proxy.io/upstreams": "reviews:9080,web.front:80,db.data.svc:5432"},
    "upstreams and egress": {
        "proxy.io/upstreams": "ratings.shop:9080",
        "proxy.io/outbound-uds": "true",
    },
    "http ports": {"proxy.io/http-ports": "8080,metrics"},
    "protocols and per-upstream policy": {
        "proxy.io/upstreams": "a:8080/http,b:9090/grpc,db:5432/tcp,c:8080,d:80",
        "proxy.io/upstream-timeouts": "a:8080=2s,b:9090=0s",
        "proxy.io/upstream-per-try-timeouts": "c:8080=250ms",
        "proxy.io/upstream-retries": "a:8080=5,c:8080=0",
        "proxy.io/upstream-max-connections": "db:5432=10",
        "proxy.io/upstream-max-pending-requests": "a:8080=5",
        "proxy.io/upstream-max-requests": "b:9090=100",
        "proxy.io/tcp-ports": "metrics",
    },
    "declared-only with the egress socket": {
        "proxy.io/upstreams": "a:8080,db:5432/tcp",
        "proxy.io/outbound-policy": "declared-only",
        "proxy.io/outbound-uds": "true",
    },
    "declared-only, nothing declared": {"proxy.io/outbound-policy": "declared-only"},
    "probes untouched": {"proxy.io/rewrite-probes": "false"},
    "no drain": {"proxy.io/drain-duration": "0s"},
    "custom socket path": {"proxy.io/uds-path": "/dev/shm/s/{container}.{port}"},
    "everything": {
        "proxy.io/concurrency": "8",
        "proxy.io/log-level": "debug",
        "proxy.io/cpu-limit": "4",
        "proxy.io/memory-limit": "2Gi",
        "proxy.io/upstreams": "a:1,b.c:2",
        "proxy.io/outbound-uds": "true",
        "proxy.io/http-ports": "9090",
        "proxy.io/drain-duration": "1m",
    },
}


@pytest.mark.envoy
@pytest.mark.parametrize("annotations", COMBINATIONS.values(), ids=COMBINATIONS)
def test_annotation_combination_passes_envoy_validate(annotations) -> None:
    pod = load_case(CORPUS / "08-probes.yaml")["pod"]
    pod["spec"]["containers"][0]["ports"].append({"name": "metrics", "containerPort": 9090})
    pod["metadata"]["annotations"] = annotations
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    checked = envoy_validate(bootstrap_of(apply(pod, list(result.patch))))
    assert checked.returncode == 0, checked.stderr[-3000:]


def test_too_many_upstreams_for_one_argument_are_denied_with_the_figures() -> None:
    pod = load_case(CORPUS / "01-web-single.yaml")["pod"]
    names = ",".join(f"service-{i}.apps:8080" for i in range(200))
    pod["metadata"]["annotations"] = {"proxy.io/upstreams": names}
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.DENY
    assert "more than the 131,071 bytes Linux allows in one container argument" in result.message
    assert "this pod declares 200 in proxy.io/upstreams" in result.message
