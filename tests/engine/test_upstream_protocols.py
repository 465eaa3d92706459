"""Protocols, per-upstream policy and egress control, as the engine writes them into the
bootstrap and as explain says them; the same pods run for real in
tests/test_upstreams_e2e.py and tests/test_databases_e2e.py."""

from __future__ import annotations

import json

import pytest

from tests.support import CORPUS, apply, bootstrap_of, load_case
from webhook.engine import Outcome, inject
from webhook.engine.config import ConfigError, MeshConfig, from_mapping, parse
from webhook.engine.reasons import Reason

DEFAULTS = MeshConfig()
PERMISSIVE = from_mapping({"mtls": {"identity": "pod-certificate"}})
STRICT = from_mapping({"mtls": {"identity": "pod-certificate", "mode": "strict"}})


def pod(annotations: dict[str, str], ports: list[dict] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "checkout-0", "annotations": annotations},
        "spec": {"containers": [{"name": "checkout", "image": "checkout:1", "ports": ports or []}]},
    }


def bootstrap(document: dict, config: MeshConfig = DEFAULTS) -> dict:
    result = inject(document, "shop", config)
    assert result.outcome == Outcome.INJECT, result.message
    return json.loads(bootstrap_of(apply(document, list(result.patch))))


def listener(config: dict, name: str) -> dict:
    return next(x for x in config["static_resources"]["listeners"] if x["name"] == name)


def clusters(config: dict) -> dict[str, dict]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def chains_by_port(outbound: dict) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for chain in outbound["filter_chains"]:
        found.setdefault(chain["filter_chain_match"]["destination_port"], []).append(chain)
    return found


def denied(annotations: dict[str, str], config: MeshConfig = DEFAULTS) -> str:
    result = inject(pod(annotations), "shop", config)
    assert result.outcome == Outcome.DENY
    assert result.reason == Reason.INVALID_ANNOTATION
    return result.message


def test_a_tcp_upstream_gets_its_own_chain_cluster_and_no_sniffing() -> None:
    config = bootstrap(pod({"proxy.io/upstreams": "db.data:5432/tcp,orders.shop:8080"}))
    outbound = listener(config, "outbound")
    by_port = chains_by_port(outbound)
    [tcp] = by_port[5432]
    proxy = tcp["filters"][0]["typed_config"]
    assert proxy["cluster"] == "outbound|5432||db.data"
    assert proxy["stat_prefix"] == "outbound_5432"
    assert "application_protocols" not in tcp["filter_chain_match"]
    inspector = next(f for f in outbound["listener_filters"] if "http_inspector" in f["name"])
    assert inspector["filter_disabled"] == {
        "not_match": {"destination_port_range": {"start": 8080, "end": 8081}}
    }
    # The sniffing that remains is bounded, and gives up into TCP.
    assert outbound["listener_filters_timeout"] == "0.1s"
    assert outbound["continue_on_listener_filters_timeout"] is True
    assert "typed_extension_protocol_options" not in clusters(config)["outbound|5432||db.data"]


def test_tcp_upstreams_get_mtls_as_http_ones_do() -> None:
    annotations = {"proxy.io/upstreams": "db.data:5432/tcp,orders.shop:8080"}
    strict = clusters(bootstrap(pod(annotations), STRICT))
    assert "transport_socket" in strict["outbound|5432||db.data"]
    permissive = clusters(bootstrap(pod(annotations), PERMISSIVE))["outbound|5432||db.data"]
    assert permissive["transport_socket_matches"][0]["name"] == "mtls"
    assert [e.get("priority", 0) for e in permissive["load_assignment"]["endpoints"]] == [0, 1]


def test_http_and_grpc_upstreams_claim_their_ports_without_sniffing() -> None:
    annotations = {"proxy.io/upstreams": "orders.shop:8080/http,inventory:9090/grpc"}
    config = bootstrap(pod(annotations))
    outbound = listener(config, "outbound")
    assert not any("http_inspector" in f["name"] for f in outbound["listener_filters"])
    assert "listener_filters_timeout" not in outbound
    for port in (8080, 9090):
        [chain] = chains_by_port(outbound)[port]
        assert chain["filter_chain_match"] == {"destination_port": port}
    by_name = clusters(config)
    grpc = by_name["outbound|9090||inventory"]["typed_extension_protocol_options"]
    http = by_name["outbound|8080||orders.shop"]["typed_extension_protocol_options"]
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert "http2_protocol_options" in grpc[key]["explicit_http_config"]
    assert "use_downstream_protocol_config" in http[key]


def test_per_upstream_policy_overrides_the_mesh_config_for_that_upstream_only() -> None:
    annotations = {
        "proxy.io/upstreams": "orders.shop:8080,ratings:9080,db.data:5432/tcp",
        "proxy.io/upstream-timeouts": "orders.shop:8080=2s",
        "proxy.io/upstream-per-try-timeouts": "orders.shop:8080=500ms",
        "proxy.io/upstream-retries": "orders.shop:8080=4",
        "proxy.io/upstream-max-connections": "db.data:5432=50",
    }
    config = bootstrap(pod(annotations))
    hosts = {
        host["name"]: host["routes"][0]["route"]
        for chains in chains_by_port(listener(config, "outbound")).values()
        for chain in chains
        for host in chain["filters"][0]["typed_config"]
        .get("route_config", {})
        .get("virtual_hosts", [])
    }
    orders = hosts["outbound|8080||orders.shop"]
    assert orders["timeout"] == "2s"
    assert orders["retry_policy"]["num_retries"] == 4
    assert orders["retry_policy"]["per_try_timeout"] == "0.5s"
    ratings = hosts["outbound|9080||ratings"]
    assert ratings["timeout"] == "60s"  # the mesh config's request timeout, not 0s
    assert ratings["retry_policy"]["num_retries"] == 2
    assert hosts["default"]["timeout"] == "0s"  # undeclared traffic: as without a mesh
    breakers = clusters(config)["outbound|5432||db.data"]["circuit_breakers"]["thresholds"]
    assert breakers[0]["max_connections"] == 50


def test_zero_retries_keep_the_permissive_plaintext_fallback() -> None:
    annotations = {
        "proxy.io/upstreams": "ratings:9080",
        "proxy.io/upstream-retries": "ratings:9080=0",
    }
    plain = bootstrap(pod(annotations))
    [chain] = chains_by_port(listener(plain, "outbound"))[9080]
    route = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    assert "retry_policy" not in route["route"]  # 0 means 0
    secured = bootstrap(pod(annotations), PERMISSIVE)
    [chain] = chains_by_port(listener(secured, "outbound"))[9080]
    route = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    retry = route["route"]["retry_policy"]
    assert (retry["retry_on"], retry["num_retries"]) == ("connect-failure", 1)
    assert retry["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"


def test_declared_only_refuses_the_rest_and_counts_it_per_port() -> None:
    annotations = {
        "proxy.io/upstreams": "orders.shop:8080",
        "proxy.io/outbound-policy": "declared-only",
        "proxy.io/outbound-uds": "true",
    }
    config = bootstrap(pod(annotations))
    outbound = listener(config, "outbound")
    refused = outbound["default_filter_chain"]["filters"][0]["typed_config"]
    assert refused["cluster"] == "outbound|refused"
    counter = refused["access_log"][0]["typed_config"]
    assert counter["stats_scope"]["max_counters"] == 1024
    assert counter["counters"][0]["stat"]["tags"] == [
        {"name": "port", "value_format": "%DOWNSTREAM_LOCAL_PORT%"}
    ]
    [chain] = chains_by_port(outbound)[8080]
    hosts = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
    assert hosts[-1]["routes"][0]["direct_response"]["status"] == 502
    uds = listener(config, "outbound_uds")["filter_chains"][0]["filters"][0]["typed_config"]
    assert uds["http_filters"][0]["name"] == "envoy.filters.http.router"  # no forward proxy
    assert {"outbound|passthrough", "outbound|forward-proxy"}.isdisjoint(clusters(config))


def test_mesh_config_outbound_policy_applies_unless_the_pod_says_otherwise() -> None:
    locked = from_mapping({"outbound": {"policy": "declared-only"}})
    config = bootstrap(pod({}), locked)
    assert (
        listener(config, "outbound")["default_filter_chain"]["filters"][0]["typed_config"][
            "cluster"
        ]
        == "outbound|refused"
    )
    opened = bootstrap(pod({"proxy.io/outbound-policy": "allow-any"}), locked)
    default = listener(opened, "outbound")["default_filter_chain"]["filters"][0]
    assert default["typed_config"]["cluster"] == "outbound|passthrough"


def test_tcp_hinted_ports_are_not_sniffed_where_plaintext_is_refused() -> None:
    ports = [{"name": "mysql", "containerPort": 3306}, {"name": "tcp-admin", "containerPort": 7000}]
    document = pod({"proxy.io/tcp-ports": "mysql"}, ports)
    strict = listener(bootstrap(document, STRICT), "inbound")
    inspector = next(f for f in strict["listener_filters"] if "tls_inspector" in f["name"])
    skipped = {
        r["destination_port_range"]["start"]
        for r in inspector["filter_disabled"]["or_match"]["rules"]
    }
    assert {3306, 7000} <= skipped
    chains = [
        c
        for c in strict["filter_chains"]
        if c["filter_chain_match"].get("destination_port") == 3306
    ]
    assert len(chains) == 1 and "transport_socket" in chains[0]
    assert "application_protocols" not in chains[0]["filter_chain_match"]
    permissive = listener(bootstrap(document, PERMISSIVE), "inbound")
    assert permissive["listener_filters_timeout"] == "0.2s"
    inspector = next(f for f in permissive["listener_filters"] if "tls_inspector" in f["name"])
    skipped = {
        r["destination_port_range"]["start"]
        for r in inspector["filter_disabled"]["or_match"]["rules"]
    }
    assert 3306 not in skipped  # permissive still tells mTLS from plaintext, for 0.2 s


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            {"proxy.io/upstreams": "db.data:5432/udp"},
            "annotation proxy.io/upstreams: \"db.data:5432/udp\" is not valid ('db.data:5432/udp': "
            "the protocol after / is one of http, grpc, tcp)",
        ),
        (
            {"proxy.io/upstreams": "db.data:5432/tcp,db.data:5432/http"},
            "'db.data:5432' is given twice, with different protocols",
        ),
        (
            {"proxy.io/upstreams": "db.data:5432/tcp,cache.data:5432/tcp"},
            "annotation proxy.io/upstreams: db.data:5432/tcp shares port 5432 with "
            "cache.data:5432: a TCP upstream is told apart only by its port",
        ),
        (
            {"proxy.io/upstreams": "orders:8080", "proxy.io/upstream-timeouts": "ratings:9080=2s"},
            "annotation proxy.io/upstream-timeouts: ratings:9080 is not in proxy.io/upstreams",
        ),
        (
            {"proxy.io/upstreams": "orders:8080", "proxy.io/upstream-retries": "orders:8080=11"},
            'annotation proxy.io/upstream-retries: "orders:8080=11" is not valid '
            "(orders:8080: out of range 0..10)",
        ),
        (
            {"proxy.io/upstreams": "orders:8080", "proxy.io/upstream-timeouts": "orders:8080"},
            "is not valid ('orders:8080' is not service:port=2s)",
        ),
        ({"proxy.io/outbound-policy": "registry-only"}, 'accepted: "allow-any" or "declared-only"'),
    ],
)
def test_bad_protocols_and_policies_deny_naming_the_annotation_and_value(
    annotations: dict[str, str], message: str
) -> None:
    assert message in denied(annotations)


def test_a_port_cannot_be_both_http_and_tcp() -> None:
    ports = [{"name": "web", "containerPort": 8080}]
    result = inject(
        pod({"proxy.io/http-ports": "8080", "proxy.io/tcp-ports": "web"}, ports),
        "shop",
        MeshConfig(),
    )
    assert result.outcome == Outcome.DENY
    assert "annotation proxy.io/tcp-ports: port 8080 (web) is HTTP" in result.message


def test_the_retry_cap_keeps_its_old_name_and_bad_policy_fields_are_named() -> None:
    old = parse("upstreamPolicy:\n  maxRetries: 7\n")
    assert old.upstream_policy.max_active_retries == 7
    with pytest.raises(ConfigError, match=r'outbound\.policy: "open" is not valid'):
        parse("outbound:\n  policy: open\n")
    with pytest.raises(
        ConfigError, match=r"upstreamPolicy\.requestTimeout: \"forever\" is not valid"
    ):
        parse("upstreamPolicy:\n  requestTimeout: forever\n")


def test_the_corpus_pod_with_every_protocol_is_explained_upstream_by_upstream() -> None:
    from webhook.engine import plan
    from webhook.tools.offline import plan_lines

    case = load_case(CORPUS / "40-protocols-and-policy.yaml")
    lines = plan_lines(plan(case["pod"], "shop", MeshConfig()).summary())
    assert (
        "upstream orders.shop:8080 (http, plaintext): timeout 2s, per try 0.5s, 3 retries; "
        "max 1024 connections, 1024 pending, 1024 requests"
    ) in lines
    assert (
        "upstream db.data:5432 (tcp, plaintext): max 50 connections; its port's TCP "
        "connections all go to it"
    ) in lines
    ratings = next(line for line in lines if line.startswith("upstream ratings:9080"))
    assert "sniffed for HTTP (at most 0.1 s)" in ratings and "give /tcp" in ratings
    assert any(line.startswith("outbound declared-only") for line in lines)
