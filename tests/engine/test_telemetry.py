"""The access log and tracing a pod's sidecar gets, from the mesh config and its
annotations, in bootstraps real Envoy accepts."""

from __future__ import annotations

import json

import pytest

from tests.engine.test_mtls import validate_with_identity
from tests.support import CORPUS, apply, bootstrap_of, container, envoy_validate, load_case
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping

SERVER = load_case(CORPUS / "40-protocols-and-policy.yaml")["pod"]
TRACED = {"tracing": {"collector": "otel-collector.observability:4317", "samplingPercent": 10}}
EVERYTHING = {"accessLog": {"format": "json", "outbound": True, "tcp": True}, **TRACED}


def injected(config: dict, annotations: dict | None = None) -> tuple[dict, dict]:
    pod = json.loads(json.dumps(SERVER))
    pod["metadata"].setdefault("annotations", {}).update(annotations or {})
    result = inject(pod, "shop", from_mapping(config))
    assert result.outcome == Outcome.INJECT, result.message
    done = apply(pod, list(result.patch))
    return done, json.loads(bootstrap_of(done))


def managers(bootstrap: dict) -> dict[str, dict]:
    """Each data-path filter's typed config by stat prefix (the first of each)."""
    found: dict[str, dict] = {}
    for item in bootstrap["static_resources"]["listeners"]:
        for chain in [
            *item["filter_chains"],
            *([item["default_filter_chain"]] if "default_filter_chain" in item else []),
        ]:
            for network_filter in chain["filters"]:
                config = network_filter["typed_config"]
                if "stat_prefix" in config:
                    found.setdefault(config["stat_prefix"], config)
    return found


def stdout_logs(config: dict) -> list[dict]:
    return [
        log["typed_config"].get("log_format", {})
        for log in config.get("access_log", [])
        if log["name"] == "envoy.access_loggers.stdout"
    ]


def test_the_default_is_the_inbound_http_line_as_before_and_no_tracing() -> None:
    pod, bootstrap = injected({})
    found = managers(bootstrap)
    assert stdout_logs(found["inbound_8080"]) == [{}]  # Envoy's default line
    assert stdout_logs(found["outbound_8080"]) == []
    assert stdout_logs(found["inbound|3306"]) == []
    assert not any("tracing" in config for config in found.values())
    assert "OTEL_RESOURCE_ATTRIBUTES" not in json.dumps(container(pod, "proxy")["env"])
    assert (
        MeshConfig().sidecar_generation
        == from_mapping({"accessLog": {"format": "text"}}).sidecar_generation
    )


def test_json_everywhere_with_bounded_client_values_and_the_trace_id() -> None:
    _, bootstrap = injected(EVERYTHING)
    found = managers(bootstrap)
    (inbound,) = stdout_logs(found["inbound_8080"])
    fields = inbound["json_format"]
    assert fields["direction"] == "inbound"
    assert fields["path"] == "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):1024%"
    assert fields["authority"].endswith(":256%") and fields["user_agent"].endswith(":256%")
    assert fields["method"] == "%REQ(:METHOD):32%"
    assert fields["trace_id"] == "%TRACE_ID%"
    assert fields["request_id"] == "%REQ(X-REQUEST-ID):128%"
    assert fields["peer_identity"] == "%DOWNSTREAM_PEER_URI_SAN%"
    (outbound,) = stdout_logs(found["outbound_8080"])
    assert outbound["json_format"]["peer_identity"] == "%UPSTREAM_PEER_URI_SAN%"
    (tcp,) = stdout_logs(found["inbound|3306"])
    assert tcp["json_format"]["protocol"] == "tcp"
    (tcp_out,) = stdout_logs(found["outbound_5432"])
    assert tcp_out["json_format"]["direction"] == "outbound"
    # The refused-egress counter is kept beside the log.
    assert len(found["outbound_refused"]["access_log"]) == 2
    assert not stdout_logs(found["readiness"]) and "tracing" not in found["readiness"]


def test_tracing_sends_spans_to_the_collector_named_after_the_workload() -> None:
    pod, bootstrap = injected(TRACED, {"proxy.io/trace-sampling": "0.5"})
    found = managers(bootstrap)
    for prefix in ("inbound_8080", "outbound_8080", "outbound_9090"):
        tracing = found[prefix]["tracing"]
        assert tracing["random_sampling"] == {"value": 0.5}
        provider = tracing["provider"]["typed_config"]
        assert provider["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            "outbound|4317||otel-collector.observability"
        )
        assert provider["service_name"] == "checkout"  # its app label
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    collector = clusters["outbound|4317||otel-collector.observability"]
    assert "http2_protocol_options" in json.dumps(collector)
    assert "transport_socket" not in json.dumps(collector)  # mTLS is off for this pod
    env = {e["name"]: e.get("value") for e in container(pod, "proxy")["env"]}
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
    )


def test_the_egress_socket_is_traced_and_logged_like_the_outbound_port() -> None:
    _, bootstrap = injected(EVERYTHING, {"proxy.io/outbound-uds": "true"})
    found = managers(bootstrap)
    egress, outbound = found["outbound_uds"], found["outbound_8080"]
    assert egress["tracing"] == outbound["tracing"]
    (line,) = stdout_logs(egress)
    assert line["json_format"]["direction"] == "outbound"


def test_the_collector_is_called_over_mtls_while_it_answers_mtls() -> None:
    mtls = {"mtls": {"identity": "pod-certificate", "mode": "strict"}, **TRACED}
    _, bootstrap = injected(mtls)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    collector = json.dumps(clusters["outbound|4317||otel-collector.observability"])
    assert "spiffe://cluster.local/ns/observability/sa/" in collector
    assert "transport_socket_matches" in collector  # mTLS, else plaintext


def test_off_writes_no_line() -> None:
    _, bootstrap = injected({}, {"proxy.io/access-log": "off"})
    assert all(not stdout_logs(config) for config in managers(bootstrap).values())


@pytest.mark.parametrize(
    ("annotation", "value", "said"),
    [
        ("proxy.io/access-log", "yaml", '"off", "text" or "json"'),
        ("proxy.io/trace-sampling", "150", "a percentage from 0 to 100"),
        ("proxy.io/trace-sampling", "often", "a percentage from 0 to 100"),
    ],
)
def test_bad_values_are_denied_naming_the_annotation(annotation, value, said) -> None:
    pod = json.loads(json.dumps(SERVER))
    pod["metadata"]["annotations"][annotation] = value
    result = inject(pod, "shop", from_mapping(TRACED))
    assert result.outcome == Outcome.DENY
    assert annotation in result.message and value in result.message and said in result.message


@pytest.mark.envoy
@pytest.mark.parametrize(
    "config",
    [EVERYTHING, {"accessLog": {"format": "text", "outbound": True, "tcp": True}},
     {**EVERYTHING, "mtls": {"identity": "pod-certificate"}}],
    ids=["json and tracing", "text everywhere", "json, tracing and mtls"],
)  # fmt: skip
def test_envoy_accepts_every_telemetry_setting(config, tmp_path) -> None:
    pod, _ = injected(config, {"proxy.io/outbound-uds": "true"})
    if "mtls" in config:
        checked = validate_with_identity(pod, tmp_path)
    else:
        checked = envoy_validate(bootstrap_of(pod))
    assert checked.returncode == 0, checked.stderr[-3000:]


def test_explain_and_bootstrap_say_what_each_pod_logs_and_traces(tmp_path) -> None:
    from tests.support import proxy_injector

    manifest = tmp_path / "web.yaml"
    manifest.write_text(json.dumps(SERVER))
    config = tmp_path / "mesh.yaml"
    config.write_text(json.dumps(EVERYTHING))
    wanted = (
        "access log json: inbound, outbound HTTP and TCP; tracing 10% of requests to "
        "otel-collector.observability:4317 (OTLP/gRPC) as service checkout"
    )
    for command in ("explain", "bootstrap"):
        done = proxy_injector(command, "-f", str(manifest), "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert wanted in done.stdout, command
    plain = proxy_injector("explain", "-f", str(manifest))
    assert "access log text: inbound HTTP; tracing off" in plain.stdout


def test_a_collector_the_app_also_declares_is_one_cluster() -> None:
    declared = SERVER["metadata"]["annotations"]["proxy.io/upstreams"]
    also = f"{declared},otel-collector.observability:4317/grpc"
    _, bootstrap = injected(TRACED, {"proxy.io/upstreams": also})
    names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    assert names.count("outbound|4317||otel-collector.observability") == 1
    checked = envoy_validate(json.dumps(bootstrap))
    assert checked.returncode == 0, checked.stderr[-2000:]
