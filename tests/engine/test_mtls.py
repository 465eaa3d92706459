"""mTLS in the injected pod: mesh config and annotations, the identity volume (proxy only,
read-only), strict schemas and Envoy's own validation for each identity source, probes in
strict mode, and what explain and the status annotation say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import pod_security
from tests.identity import ProjectedVolume, create_ca, leaf, spiffe
from tests.remap import moved_identity
from tests.support import (
    ENVOY,
    POD_CERTIFICATE_VERSIONS,
    apply,
    bootstrap_of,
    container,
    schema_errors,
)
from tests.support import (
    orders_pod as pod,
)
from webhook.engine import Outcome, inject
from webhook.engine.config import ConfigError, from_mapping
from webhook.engine.names import SDS_IDENTITY_KEY, SDS_TRUST_BUNDLE_KEY
from webhook.node import sds

POD_CERTIFICATE = from_mapping({"mtls": {"identity": "pod-certificate"}})
CSI = from_mapping({"mtls": {"identity": "csi-spiffe", "trustDomain": "prod.example"}})


def injected(document: dict, config=POD_CERTIFICATE) -> dict:
    result = inject(document, "shop", config)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(document, list(result.patch))


def denial(document: dict, config=POD_CERTIFICATE) -> str:
    result = inject(document, "shop", config)
    assert result.outcome == Outcome.DENY
    return result.message


def test_mesh_config_defaults_and_refusals() -> None:
    assert from_mapping({}).mtls.default_mode == "off"
    assert POD_CERTIFICATE.mtls.default_mode == "permissive"
    settings = POD_CERTIFICATE.mtls
    assert (settings.trust_domain, settings.signer_name, settings.key_type) == (
        "cluster.local",
        "proxy.io/spiffe",
        "ECDSAP256",
    )
    assert (settings.max_expiration_seconds, settings.csi_driver) == (
        86400,
        "spiffe.csi.cert-manager.io",
    )
    for bad, named in (
        ({"mode": "strict"}, "mode strict needs an identity source"),
        ({"identity": "pod-certificate", "maxExpirationSeconds": 600}, "maxExpirationSeconds: 600"),
        ({"identity": "spire"}, "mtls.identity"),
        ({"signerName": "no-slash"}, "mtls.signerName"),
        ({"trustDomain": "Not A Domain"}, "mtls.trustDomain"),
    ):
        with pytest.raises(ConfigError, match=named):
            from_mapping({"mtls": bad})


def test_mtls_off_by_default_changes_nothing() -> None:
    plain = injected(pod(), from_mapping({}))
    assert [v["name"] for v in plain["spec"]["volumes"]] == ["proxy-shm", "proxy-admin"]
    assert "--sds-dir" not in container(plain, "proxy-init", "initContainers")["args"]
    assert json.loads(plain["metadata"]["annotations"]["proxy.io/status"])["mtls"] == "off"
    for piece in ("TlsContext", "tls_inspector", "sds_config"):
        assert piece not in bootstrap_of(plain)


@pytest.mark.parametrize(
    ("annotations", "config", "message"),
    [
        (
            {"proxy.io/mtls": "strict"},
            from_mapping({}),
            'proxy.io/mtls: "strict" needs an identity source',
        ),
        (
            {"proxy.io/mtls": "sometimes"},
            POD_CERTIFICATE,
            'annotation proxy.io/mtls: "sometimes" is not valid',
        ),
        ({"proxy.io/allow-from": "ns/front"}, from_mapping({}), "proxy.io/allow-from needs mTLS"),
        ({"proxy.io/allow-from": "front"}, POD_CERTIFICATE, "neither a SPIFFE ID nor ns/NAMESPACE"),
        (
            {"proxy.io/allow-from": "spiffe://cluster.local/ns/../sa/x"},
            POD_CERTIFICATE,
            "no . or .. segments",
        ),
        (
            {
                "proxy.io/upstreams": "ratings:9080",
                "proxy.io/upstream-identities": "orders.shop:8080=ns/shop",
            },
            POD_CERTIFICATE,
            "orders.shop:8080 is not in proxy.io/upstreams",
        ),
        (
            {"proxy.io/upstream-identities": "orders.shop:8080"},
            POD_CERTIFICATE,
            "is not service:port=spiffe://",
        ),
        (
            {"proxy.io/mtls": "strict", "proxy.io/upstreams": "api.example.com:443"},
            POD_CERTIFICATE,
            "api.example.com:443 is not a service of this cluster, and mTLS is strict",
        ),
    ],
)
def test_bad_mtls_settings_deny_the_pod_naming_them(annotations, config, message) -> None:
    assert message in denial(pod(annotations), config)


def test_the_identity_volume_goes_to_the_proxy_only_and_read_only() -> None:
    for config in (POD_CERTIFICATE, CSI):
        out = injected(pod(), config)
        volumes = {v["name"]: v for v in out["spec"]["volumes"]}
        proxy = container(out, "proxy", "initContainers")
        mounts = {m["name"]: m for m in proxy["volumeMounts"]}
        assert mounts["proxy-identity"] == {
            "name": "proxy-identity",
            "mountPath": "/var/run/proxy-identity",
            "readOnly": True,
        }
        assert mounts["proxy-sds"]["readOnly"] is True
        app = container(out, "orders")
        assert {m["name"] for m in app["volumeMounts"]} == {"proxy-shm"}
        assert volumes["proxy-sds"] == {
            "name": "proxy-sds",
            "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
        }
        # The SDS files come from the init container's args, which cannot change after
        # admission; nothing the proxy trusts is read from a pod annotation.
        annotations = out["metadata"]["annotations"]
        assert SDS_IDENTITY_KEY not in annotations and SDS_TRUST_BUNDLE_KEY not in annotations
        assert not any("downwardAPI" in v for v in volumes.values())
        init = container(out, "proxy-init", "initContainers")
        assert init["volumeMounts"] == [{"name": "proxy-sds", "mountPath": "/var/run/proxy-sds"}]
        files = sds.parse(
            [a for i, a in enumerate(init["args"]) if init["args"][i - 1] == "--sds-file"]
        )
        assert json.loads(files["identity.json"])["resources"][0]["name"] == "identity"
        assert json.loads(files["trust-bundle.json"])["resources"][0]["name"] == "trust-bundle"
    projected = injected(pod())["spec"]["volumes"][2]["projected"]["sources"]
    assert projected == [
        {
            "podCertificate": {
                "signerName": "proxy.io/spiffe",
                "keyType": "ECDSAP256",
                "maxExpirationSeconds": 86400,
                "certificateChainPath": "certificate-chain.pem",
                "keyPath": "key.pem",
            }
        },
        {
            "clusterTrustBundle": {
                "signerName": "proxy.io/spiffe",
                "labelSelector": {},
                "path": "ca.pem",
                "optional": True,
            }
        },
    ]
    csi = injected(pod(), CSI)["spec"]["volumes"][2]["csi"]
    assert csi["driver"] == "spiffe.csi.cert-manager.io" and csi["readOnly"] is True
    assert csi["volumeAttributes"] == {"spiffe.csi.cert-manager.io/fs-group": "1337"}


@pytest.mark.parametrize("config", [POD_CERTIFICATE, CSI], ids=["pod-certificate", "csi-spiffe"])
@pytest.mark.parametrize("mode", ["permissive", "strict"])
def test_every_injected_pod_is_valid_and_passes_restricted_in_cni_mode(config, mode) -> None:
    annotations = {
        "proxy.io/mtls": mode,
        "proxy.io/interception": "cni",
        "proxy.io/upstreams": "ratings:9080,reviews.books:9080",
        "proxy.io/allow-from": "ns/front,spiffe://prod.example/ns/ops/sa/*",
        "proxy.io/upstream-identities": "ratings:9080=ns/shop/sa/ratings",
    }
    document = pod(annotations)
    document["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    document["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    out = injected(document, config)
    assert schema_errors(out, POD_CERTIFICATE_VERSIONS) == []
    assert pod_security.violations(out, "restricted") == []


def validate_with_identity(out: dict, folder: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` with the SDS files where the init container writes them."""
    directory = folder / "proxy-sds"
    directory.mkdir(parents=True, exist_ok=True)
    init = container(out, "proxy-init", "initContainers")["args"]
    documents = [
        moved_identity(a, folder) for i, a in enumerate(init) if init[i - 1] == "--sds-file"
    ]
    sds.write(directory, sds.parse(documents))
    (folder / "proxy-identity").mkdir(exist_ok=True)
    bootstrap = moved_identity(bootstrap_of(out), folder)
    command = [ENVOY, "--mode", "validate", "--service-node", "orders-0.shop"]
    command += ["--service-cluster", "shop", "--config-yaml", bootstrap]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.envoy
@pytest.mark.parametrize("config", [POD_CERTIFICATE, CSI], ids=["pod-certificate", "csi-spiffe"])
@pytest.mark.parametrize("mode", ["permissive", "strict"])
def test_every_bootstrap_passes_envoy_validate(config, mode, tmp_path) -> None:
    annotations = {
        "proxy.io/mtls": mode,
        "proxy.io/upstreams": "ratings:9080,reviews.books.svc:9080/grpc,db.data:5432/tcp",
        "proxy.io/upstream-retries": "ratings:9080=0",
        "proxy.io/allow-from": "ns/front",
        "proxy.io/outbound-uds": "true",
        "proxy.io/outbound-policy": "declared-only",
        "proxy.io/tcp-ports": "9000",
    }
    done = validate_with_identity(
        injected(pod(annotations, readinessProbe={"tcpSocket": {"port": 9000}}), config), tmp_path
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_strict_moves_every_probe_to_the_proxy() -> None:
    probes = {
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS"}},
        "livenessProbe": {"tcpSocket": {"port": 9000}},
        "startupProbe": {"httpGet": {"path": "/started", "port": 8080}},
    }
    out = injected(pod({"proxy.io/mtls": "strict", "proxy.io/upstream": "tcp"}, **probes))
    app = container(out, "orders")
    for kind in probes:
        assert app[kind]["httpGet"]["port"] == 15021, kind
        assert "tcpSocket" not in app[kind]
    # Permissive leaves TCP ports' probes to the kubelet, as before.
    plain = injected(pod({"proxy.io/upstream": "tcp"}, **probes))
    assert container(plain, "orders")["livenessProbe"] == probes["livenessProbe"]


@pytest.mark.parametrize(
    ("annotations", "probe", "message"),
    [
        ({"proxy.io/mtls": "strict"}, {"grpc": {"port": 9090}}, "plaintext gRPC probe"),
        (
            {"proxy.io/allow-from": "ns/front", "proxy.io/rewrite-probes": "false"},
            {"tcpSocket": {"port": 9000}},
            'proxy.io/rewrite-probes is "false"',
        ),
    ],
)
def test_a_probe_that_cannot_pass_when_plaintext_is_refused_denies(
    annotations, probe, message
) -> None:
    assert message in denial(pod(annotations, livenessProbe=probe))


def test_an_upstream_outside_the_cluster_stays_plaintext_in_permissive_with_a_warning() -> None:
    result = inject(
        pod({"proxy.io/upstreams": "api.example.com:443,ratings:9080"}), "shop", POD_CERTIFICATE
    )
    assert result.outcome == Outcome.INJECT
    assert any("api.example.com:443 is not a service of this cluster" in w for w in result.warnings)
    clusters = json.loads(bootstrap_of(apply(pod(), list(result.patch))))["static_resources"][
        "clusters"
    ]
    by_name = {c["name"]: c for c in clusters}
    assert "transport_socket_matches" not in by_name["outbound|443||api.example.com"]
    ratings = by_name["outbound|9080||ratings"]
    sans = ratings["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    matcher = sans["common_tls_context"]["combined_validation_context"][
        "default_validation_context"
    ]
    assert matcher["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/ns/shop/sa/"}}
    ]


def test_a_pinned_upstream_identity_is_exact() -> None:
    annotations = {
        "proxy.io/mtls": "strict",
        "proxy.io/upstreams": "orders.shop:8080",
        "proxy.io/upstream-identities": "orders.shop:8080=spiffe://cluster.local/ns/shop/sa/orders",
    }
    clusters = json.loads(bootstrap_of(injected(pod(annotations))))["static_resources"]["clusters"]
    (orders,) = [c for c in clusters if c["name"] == "outbound|8080||orders.shop"]
    context = orders["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["combined_validation_context"]["default_validation_context"] == {
        "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/orders"}}
        ]
    }
    assert context["alpn_protocols"] == ["proxy.io-mtls"]


def _clusters(out: dict) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(bootstrap_of(out))["static_resources"]["clusters"]}


def test_a_pinned_upstream_is_mtls_only_in_permissive_too() -> None:
    annotations = {
        "proxy.io/upstreams": "orders.shop:8080,ratings:9080",
        "proxy.io/upstream-identities": "orders.shop:8080=ns/shop/sa/orders",
    }
    clusters = _clusters(injected(pod(annotations)))
    orders, ratings = clusters["outbound|8080||orders.shop"], clusters["outbound|9080||ratings"]
    # The pin: one endpoint, always over mTLS, no plaintext priority to fall back to.
    assert "transport_socket" in orders and "transport_socket_matches" not in orders
    assert len(orders["load_assignment"]["endpoints"]) == 1 and "health_checks" not in orders
    # Unpinned, permissive: mTLS while the upstream answers it, plaintext otherwise.
    assert "transport_socket_matches" in ratings
    assert [e.get("priority", 0) for e in ratings["load_assignment"]["endpoints"]] == [0, 1]
    outbound = next(
        item
        for item in json.loads(bootstrap_of(injected(pod(annotations))))["static_resources"][
            "listeners"
        ]
        if item["name"] == "outbound"
    )
    retries = {
        host["name"]: host["routes"][0]["route"]["retry_policy"]
        for chain in outbound["filter_chains"]
        for host in chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
        if host["name"].startswith("outbound|")
    }
    # Only the unpinned upstream retries to the other priority (plaintext).
    assert "retry_priority" not in retries["outbound|8080||orders.shop"]
    assert "retry_priority" in retries["outbound|9080||ratings"]


def test_no_tls_session_is_resumed_either_way() -> None:
    out = injected(pod({"proxy.io/upstreams": "ratings:9080"}))
    bootstrap = json.loads(bootstrap_of(out))
    inbound = next(
        item for item in bootstrap["static_resources"]["listeners"] if item["name"] == "inbound"
    )
    contexts = [
        c["transport_socket"]["typed_config"]
        for c in inbound["filter_chains"]
        if "transport_socket" in c
    ]
    assert contexts and all(
        c["disable_stateless_session_resumption"] and c["disable_stateful_session_resumption"]
        for c in contexts
    )
    ratings = _clusters(out)["outbound|9080||ratings"]
    upstream = ratings["transport_socket_matches"][0]["transport_socket"]["typed_config"]
    assert upstream["max_session_keys"] == 0


def test_every_mtls_chain_reads_exactly_one_uri_san() -> None:
    """With or without allow-from, and on the ports the pod does not declare: a caller's
    identity is its one URI SAN (Envoy joins several with commas, which no ID holds)."""
    for asked, allowed in (
        ({}, r"(?:spiffe://cluster\.local/[^,]*)"),
        (
            {"proxy.io/allow-from": "ns/front,ns/ops/sa/deployer"},
            r"(?:spiffe://cluster\.local/ns/front/sa/[^,]*|spiffe://cluster\.local/ns/ops/sa/deployer)",
        ),
    ):
        text = bootstrap_of(injected(pod(asked)))
        chains = [
            c
            for item in json.loads(text)["static_resources"]["listeners"]
            if item["name"] == "inbound"
            for c in item["filter_chains"]
            if "transport_socket" in c
        ]
        assert len(chains) == 4  # the three ports, and any other
        for chain in chains:
            http = chain["filters"][0]["typed_config"].get("http_filters", [])
            rbac = next(f for f in [*chain["filters"], *http] if "rbac" in f["name"])
            matcher = rbac["typed_config"]["matcher"]
            predicate = matcher["matcher_list"]["matchers"][0]["predicate"]["single_predicate"]
            assert predicate["input"]["name"] == "envoy.matching.inputs.uri_san"
            assert predicate["value_match"]["safe_regex"]["regex"] == allowed
            assert matcher["on_no_match"]["action"]["typed_config"]["action"] == "DENY"
        assert "principal_name" not in text


def test_nothing_the_proxy_trusts_can_be_changed_by_patching_the_pod() -> None:
    """Annotations and labels can be patched after admission; args, env and volumes
    cannot. No volume of the pod reads a pod field, and the proxy's bootstrap and SDS
    files are in container args."""
    out = injected(pod({"proxy.io/mtls": "strict"}))
    text = json.dumps(out["spec"]["volumes"])
    assert "fieldRef" not in text and "metadata.annotations" not in text
    for annotation in (SDS_IDENTITY_KEY, SDS_TRUST_BUNDLE_KEY):
        assert annotation not in out["metadata"]["annotations"]
    init = container(out, "proxy-init", "initContainers")
    assert init["args"].count("--sds-file") == 2


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"proxy.io/allow-from": "ns/shop\n/sa/web"}, "proxy.io/allow-from"),
        (
            {
                "proxy.io/upstreams": "orders.shop:8080",
                "proxy.io/upstream-identities": "orders.shop:8080=ns/shop\n/sa/orders",
            },
            "proxy.io/upstream-identities",
        ),
        ({"proxy.io/upstreams": "orders\n.shop:8080"}, "proxy.io/upstreams"),
        ({"proxy.io/allow-from": "spiffe://cluster.local/ns/shop\n/sa/web"}, "allow-from"),
    ],
)
def test_a_newline_inside_a_value_is_refused_naming_the_field(annotations, named) -> None:
    message = denial(pod(annotations))
    assert named in message and "\\n" in message  # quoted, so it cannot forge a line


def test_a_trust_domain_with_a_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"mtls\.trustDomain"):
        from_mapping({"mtls": {"identity": "pod-certificate", "trustDomain": "cluster.local\n"}})


def test_status_records_mode_and_identity_and_explain_shows_them(tmp_path) -> None:
    out = injected(pod({"proxy.io/mtls": "strict"}), CSI)
    status = json.loads(out["metadata"]["annotations"]["proxy.io/status"])
    assert (status["mtls"], status["identity"]) == (
        "strict",
        "spiffe://prod.example/ns/shop/sa/orders",
    )
    assert {"proxy-identity", "proxy-sds"} <= set(status["volumes"])
    config = tmp_path / "mesh.yaml"
    config.write_text(
        yaml.safe_dump({"mtls": {"identity": "csi-spiffe", "trustDomain": "prod.example"}})
    )
    document = pod({"proxy.io/mtls": "strict", "proxy.io/allow-from": "ns/front"})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "explain",
            "-f",
            "-",
            "--namespace",
            "shop",
            "--config",
            str(config),
        ],
        input=yaml.safe_dump(document),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "mTLS strict as spiffe://prod.example/ns/shop/sa/orders (from csi-spiffe); plaintext "
        "refused; callers allowed: spiffe://prod.example/ns/front/sa/*"
    ) in done.stdout


def test_a_changed_mtls_config_makes_injected_pods_stale() -> None:
    assert POD_CERTIFICATE.sidecar_generation != from_mapping({}).sidecar_generation
    stricter = from_mapping({"mtls": {"identity": "pod-certificate", "mode": "strict"}})
    assert stricter.sidecar_generation != POD_CERTIFICATE.sidecar_generation


def test_the_test_certificates_are_what_a_signer_issues(tmp_path) -> None:
    """The harness's own check: the PKCS#8 key and the chain in files apart (keyPath,
    certificateChainPath), and a rotation swaps ..data atomically."""
    ca = create_ca()
    volume = ProjectedVolume(tmp_path / "id")
    volume.pod_certificate(leaf(ca, spiffe("shop", "web")), ca)
    first = (tmp_path / "id" / "..data").resolve()
    assert (tmp_path / "id" / "key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    chain = (tmp_path / "id" / "certificate-chain.pem").read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 1 and b"PRIVATE KEY" not in chain
    volume.pod_certificate(leaf(ca, spiffe("shop", "web")), ca)
    assert (tmp_path / "id" / "..data").resolve() != first and not first.exists()
