"""mTLS pieces of the bootstrap: the certificate and trust bundle from file-based SDS
(reloaded when the kubelet swaps the volume's ``..data`` symlink), the TLS contexts that
check SPIFFE IDs, and the RBAC filters of ``proxy.io/allow-from``."""

from __future__ import annotations

from collections.abc import Iterable

from webhook.engine.bootstrap.objects import Json, only_on_ports, typed
from webhook.engine.mtls import (
    CERTIFICATE_SECRET,
    SDS_FILES,
    TRUST_BUNDLE_SECRET,
    MtlsPlan,
    Peer,
)
from webhook.engine.names import MTLS_ALPN, SDS_DIR

TLS_INSPECTOR_TIMEOUT = "1s"
"""How long the inbound listener waits for a client's first bytes to tell TLS from
plaintext; a server-first protocol's plaintext client goes on as plaintext after it."""
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
MTLS_ENDPOINT = {"mtls": True}


def _sds(name: str) -> Json:
    source = {
        "path_config_source": {
            "path": f"{SDS_DIR}/{SDS_FILES[name]}",
            "watched_directory": {"path": SDS_DIR},
        },
        "resource_api_version": "V3",
        "initial_fetch_timeout": "5s",
    }
    return {"name": name, "sds_config": source}


def _common(peers: Iterable[Peer]) -> Json:
    sans = [{"san_type": "URI", "matcher": p.matcher()} for p in peers]
    return {
        "tls_certificate_sds_secret_configs": [_sds(CERTIFICATE_SECRET)],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": sans},
            "validation_context_sds_secret_config": _sds(TRUST_BUNDLE_SECRET),
        },
        "alpn_protocols": [MTLS_ALPN],
    }


def downstream_tls(plan: MtlsPlan) -> Json:
    """Inbound: a client certificate of the trust domain is required; who among those
    may call is ``allow-from``'s RBAC, which can answer with a reason."""
    return typed(
        "envoy.transport_sockets.tls",
        "transport_sockets.tls.v3.DownstreamTlsContext",
        require_client_certificate=True,
        common_tls_context=_common([plan.trust_domain_peers]),
    )


def upstream_tls(peer: Peer) -> Json:
    return typed(
        "envoy.transport_sockets.tls",
        "transport_sockets.tls.v3.UpstreamTlsContext",
        common_tls_context=_common([peer]),
    )


def tls_inspector(ports: list[int]) -> Json:
    """Only on the app's ports: other ports pass through without waiting for bytes."""
    inspector = typed(
        "envoy.filters.listener.tls_inspector", "filters.listener.tls_inspector.v3.TlsInspector"
    )
    return only_on_ports(inspector, ports)


def _policy(plan: MtlsPlan) -> Json:
    principals = [{"authenticated": {"principal_name": p.matcher()}} for p in plan.allow_from]
    return {"policies": {"allow-from": {"permissions": [{"any": True}], "principals": principals}}}


def http_rbac(plan: MtlsPlan) -> list[Json]:
    """HTTP ports: a caller outside allow-from gets 403 "RBAC: access denied", counted in
    http.<stat prefix>.rbac.denied."""
    if not plan.allow_from:
        return []
    return [typed("envoy.filters.http.rbac", "filters.http.rbac.v3.RBAC", rules=_policy(plan))]


def network_rbac(plan: MtlsPlan, stat_prefix: str) -> list[Json]:
    """TCP ports: a caller outside allow-from has its connection closed, counted in
    <stat_prefix>.rbac.denied."""
    if not plan.allow_from:
        return []
    return [
        typed(
            "envoy.filters.network.rbac",
            "filters.network.rbac.v3.RBAC",
            stat_prefix=stat_prefix,
            rules=_policy(plan),
        )
    ]


def mtls_endpoint(endpoint: Json) -> Json:
    """An endpoint that the cluster's ``mtls`` transport socket match applies to."""
    return {**endpoint, "metadata": {"filter_metadata": {TRANSPORT_SOCKET_MATCH: MTLS_ENDPOINT}}}


def transport_socket_match(peer: Peer) -> Json:
    return {"name": "mtls", "match": MTLS_ENDPOINT, "transport_socket": upstream_tls(peer)}
