"""Probe rewriting, declared upstreams, drain and the socket group, as the engine does them."""

from __future__ import annotations

import json

import pytest

from tests.support import CORPUS, apply, bootstrap_of, container, envoy_validate, load_case
from webhook.engine import Outcome, inject
from webhook.engine.annotations import Overrides
from webhook.engine.config import MeshConfig, UpstreamPolicy
from webhook.engine.upstreams import resolve

DEFAULTS = MeshConfig()


def injected(pod: dict, namespace: str = "shop") -> tuple[dict, tuple[str, ...]]:
    result = inject(pod, namespace, DEFAULTS)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch)), result.warnings


def case(name: str) -> dict:
    return load_case(CORPUS / f"{name}.yaml")["pod"]


def routes_of(pod: dict) -> list[dict]:
    listeners = json.loads(bootstrap_of(pod))["static_resources"]["listeners"]
    readiness = next(item for item in listeners if item["name"] == "readiness")
    hcm = readiness["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"]


def test_http_probes_on_named_and_numbered_socket_ports_go_through_the_proxy() -> None:
    pod, _ = injected(case("08-probes"))
    cart = container(pod, "cart")
    assert cart["livenessProbe"] == {
        "httpGet": {"path": "/app-health/cart/livez", "port": 15021, "scheme": "HTTP"},
        "periodSeconds": 10,
    }
    assert cart["readinessProbe"]["httpGet"]["path"] == "/app-health/cart/readyz"
    assert cart["startupProbe"]["httpGet"]["path"] == "/app-health/cart/startupz"
    assert cart["startupProbe"]["failureThreshold"] == 30
    routes = {r["match"].get("path"): r for r in routes_of(pod)}
    live = routes["/app-health/cart/livez"]["route"]
    assert (live["cluster"], live["prefix_rewrite"]) == ("inbound|8081", "/livez")
    ready = routes["/app-health/cart/readyz"]["route"]
    assert (ready["cluster"], ready["prefix_rewrite"]) == ("inbound|8080", "/readyz")


def test_https_probe_keeps_scheme_and_headers_and_tcp_probe_becomes_a_connect_check() -> None:
    pod, _ = injected(case("32-https-and-tcp-probes"))
    secure = container(pod, "secure")
    assert secure["livenessProbe"] == {"exec": {"command": ["/bin/check"]}}
    routes = {r["match"].get("path"): r for r in routes_of(pod)}
    started = routes["/app-health/secure/startupz"]
    assert started["route"]["cluster"] == "inbound|8443|tls"
    assert started["route"]["host_rewrite_literal"] == "secure.shop"
    assert started["request_headers_to_add"][0]["header"] == {"key": "X-Probe", "value": "startup"}
    bootstrap = json.loads(bootstrap_of(pod))
    readiness = bootstrap["static_resources"]["listeners"][0]
    checks = readiness["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    connect = [c["typed_config"] for c in checks if c["name"] == "envoy.filters.http.health_check"]
    by_path = {c["headers"][0]["string_match"]["exact"]: c for c in connect}
    # Auto mode (the default): one of the port's two hosts, its socket or TCP, suffices.
    assert by_path["/app-health/secure/readyz"]["cluster_min_healthy_percentages"] == {
        "inbound|9090": {"value": 50}
    }
    assert set(by_path["/healthz/app"]["cluster_min_healthy_percentages"]) == {
        "inbound|8443",
        "inbound|9090",
    }


def test_probes_on_tcp_ports_are_left_alone() -> None:
    original = case("36-tcp-mode-probes")
    pod, _ = injected(original)
    assert container(pod, "app")["readinessProbe"] == container(original, "app")["readinessProbe"]


def test_rewrite_probes_false_warns_about_each_probe_that_will_fail() -> None:
    pod, warnings = injected(case("34-rewrite-probes-off"))
    assert container(pod, "manual")["readinessProbe"]["httpGet"]["port"] == 8080
    assert warnings == (
        "container manual readinessProbe (httpGet on port 8080) will fail: the "
        'port listens on a socket and proxy.io/rewrite-probes is "false"',
    )


def test_upstream_names_cover_the_ways_the_app_may_call_them() -> None:
    resolved = resolve(
        Overrides(
            upstreams=(
                ("ratings", 9080, None),
                ("reviews.shop", 9080, None),
                ("payments.billing.svc", 443, None),
                ("api.example.com", 80, None),
            )
        ),
        "shop",
        "cluster.local",
        UpstreamPolicy(),
    )
    upstreams = resolved.upstreams
    assert resolved.warnings == resolved.errors == ()
    domains = {u.host: u.domains for u in upstreams}
    assert domains["ratings"] == (
        "ratings:9080",
        "ratings.shop:9080",
        "ratings.shop.svc:9080",
        "ratings.shop.svc.cluster.local:9080",
    )
    assert domains["reviews.shop"][-1] == "reviews.shop.svc.cluster.local:9080"
    assert domains["payments.billing.svc"] == (
        "payments.billing.svc:443",
        "payments.billing.svc.cluster.local:443",
    )
    assert domains["api.example.com"] == ("api.example.com:80", "api.example.com")
    assert upstreams[0].cluster == "outbound|9080||ratings"


def test_the_same_service_declared_twice_is_kept_once_with_a_warning() -> None:
    resolved = resolve(
        Overrides(upstreams=(("ratings", 9080, None), ("ratings.shop", 9080, None))),
        "shop",
        "cluster.local",
        UpstreamPolicy(),
    )
    assert [u.host for u in resolved.upstreams] == ["ratings"]
    assert resolved.warnings == (
        "proxy.io/upstreams: ratings.shop:9080 is the same service as ratings:9080",
    )


def test_declared_upstreams_get_clusters_with_the_mesh_policy() -> None:
    pod, _ = injected(case("31-declared-upstreams"))
    clusters = {c["name"]: c for c in json.loads(bootstrap_of(pod))["static_resources"]["clusters"]}
    reviews = clusters["outbound|9080||reviews.shop"]
    assert reviews["cluster_type"]["name"] == "envoy.cluster.dns"  # every address an endpoint
    assert reviews["cluster_type"]["typed_config"]["respect_dns_ttl"] is True
    assert reviews["outlier_detection"]["consecutive_5xx"] == 5
    assert reviews["lb_policy"] == "RANDOM"
    assert "circuit_breakers" not in reviews  # the mesh defaults are Envoy's own
    assert "outbound|forward-proxy" in clusters
    env = {e["name"]: e["value"] for e in container(pod, "productpage")["env"]}
    assert env["PROXY_OUTBOUND_UDS"] == "/dev/shm/proxy-outbound.sock"


def test_http_ports_by_name_or_annotation_get_http_chains_and_grpc_gets_http2() -> None:
    pod, _ = injected(case("35-grpc-server-drain"))
    bootstrap = json.loads(bootstrap_of(pod))
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert "typed_extension_protocol_options" in clusters["inbound|7000"]
    assert "typed_extension_protocol_options" not in clusters["inbound|7001"]
    inbound = next(x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "inbound")
    names = {
        c["filter_chain_match"]["destination_port"]: c["filters"][0]["name"]
        for c in inbound["filter_chains"]
    }
    assert names[7000] == names[7001] == "envoy.filters.network.http_connection_manager"
    assert names[15001] == "envoy.filters.network.tcp_proxy"


def test_drain_duration_sets_envoys_drain_time_and_the_classic_proxys_shortest_stay() -> None:
    native, _ = injected(case("35-grpc-server-drain"))
    proxy = container(native, "proxy")
    assert proxy["args"][proxy["args"].index("--drain-time-s") + 1] == "30"
    assert "lifecycle" not in proxy  # the kubelet stops it after the app
    pod = case("35-grpc-server-drain")
    pod["metadata"]["annotations"]["proxy.io/native-sidecar"] = "false"
    classic, _ = injected(pod)
    script = container(classic, "proxy")["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "(( i > 60 ))" in script and "i <= 90;" in script  # 30 s drain, 45 s grace


@pytest.mark.parametrize(
    ("name", "fs_group"),
    [
        ("01-web-single", 1337),
        ("09-security-context", 10001),
        ("24-statefulset", None),
        ("02-worker-no-ports", None),
    ],
)
def test_socket_group_is_added_only_where_it_is_safe(name, fs_group) -> None:
    pod, _ = injected(case(name), "data" if name.startswith("24") else "shop")
    assert pod["spec"].get("securityContext", {}).get("fsGroup") == fs_group


def test_circuit_breakers_other_than_envoys_defaults_are_set_per_upstream() -> None:
    from webhook.engine.config import from_mapping

    pod = case("31-declared-upstreams")
    config = from_mapping({"upstreamPolicy": {"maxConnections": 64, "lbPolicy": "ROUND_ROBIN"}})
    result = inject(pod, "shop", config)
    clusters = {
        c["name"]: c
        for c in json.loads(bootstrap_of(apply(pod, list(result.patch))))["static_resources"][
            "clusters"
        ]
    }
    reviews = clusters["outbound|9080||reviews.shop"]
    assert reviews["circuit_breakers"]["thresholds"] == [
        {
            "max_connections": 64,
            "max_pending_requests": 1024,
            "max_requests": 1024,
            "max_retries": 3,
        }
    ]
    assert reviews["lb_policy"] == "ROUND_ROBIN"
    checked = envoy_validate(bootstrap_of(apply(pod, list(result.patch))))
    assert checked.returncode == 0, checked.stderr[-2000:]


def test_a_grpc_probe_is_left_alone_in_auto_mode() -> None:
    """Not a needless denial: the kubelet's gRPC check is intercepted and reaches the app
    through Envoy, over its socket or TCP."""
    original = case("38-grpc-probe-auto")
    pod, _ = injected(original)
    assert container(pod, "greeter")["readinessProbe"] == {
        "grpc": {"port": 50051},
        "periodSeconds": 5,
    }
