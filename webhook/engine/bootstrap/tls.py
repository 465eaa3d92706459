"""mTLS pieces of the bootstrap: the certificate and trust bundle from file-based SDS
(reloaded when the kubelet swaps the volume's ``..data`` symlink), the TLS contexts that
check SPIFFE IDs, and the RBAC filters that read a caller's one URI SAN (against
``proxy.io/allow-from``, or the trust domain)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from webhook.engine.bootstrap.objects import Json, except_on_ports, typed
from webhook.engine.mtls import (
    CERTIFICATE_SECRET,
    SDS_FILES,
    TRUST_BUNDLE_SECRET,
    Peer,
    PodMtls,
)
from webhook.engine.names import MTLS_ALPN, SDS_DIR

TLS_INSPECTOR_TIMEOUT = "0.2s"
"""How long the inbound listener waits for a client's first bytes to tell TLS from
plaintext; a server-first protocol's plaintext client goes on as plaintext after it. A
meshed client's sidecar sends its ClientHello the moment its TCP handshake completes, so it
arrives one network hop after the connection (well under a millisecond in a cluster, a few
across zones); 0.2 s leaves room for a loaded node's scheduling delays while costing a
server-first plaintext client at most that, once per connection."""
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


def downstream_tls(plan: PodMtls) -> Json:
    """Inbound: a client certificate of the trust domain is required; who among those
    may call is the RBAC filter's (``_peer_matcher``), which can answer with a reason.

    No session resumption (tickets or a session cache): a resumed session skips the
    certificate check, so a client whose certificate has expired would go on calling."""
    return typed(
        "envoy.transport_sockets.tls",
        "transport_sockets.tls.v3.DownstreamTlsContext",
        require_client_certificate=True,
        common_tls_context=_common([plan.trust_domain_peers]),
        disable_stateless_session_resumption=True,
        disable_stateful_session_resumption=True,
    )


def upstream_tls(peer: Peer) -> Json:
    """No session kept for resumption: every connection checks the server's certificate."""
    return typed(
        "envoy.transport_sockets.tls",
        "transport_sockets.tls.v3.UpstreamTlsContext",
        common_tls_context=_common([peer]),
        max_session_keys=0,
    )


def tls_inspector(skipped: Iterable[int]) -> Json:
    """On every port but ``skipped`` (the proxy's own, which are dropped anyway): a
    plaintext client of a server-first protocol waits ``TLS_INSPECTOR_TIMEOUT``."""
    inspector = typed(
        "envoy.filters.listener.tls_inspector", "filters.listener.tls_inspector.v3.TlsInspector"
    )
    return except_on_ports(inspector, skipped)


def _peer_pattern(peers: Iterable[Peer]) -> str:
    """A regex over the certificate's URI SANs as Envoy joins them (``a,b``): it matches
    only a certificate with exactly one URI SAN, that is one of ``peers``. SPIFFE IDs
    hold no comma, so none can end early inside a second SAN."""
    parts = [re.escape(p.value) + ("[^,]*" if p.kind == "prefix" else "") for p in peers]
    return "(?:" + "|".join(parts) + ")"


def _action(name: str, action: str) -> Json:
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
            "name": name,
            "action": action,
        },
    }


def _peer_matcher(plan: PodMtls) -> Json:
    """Allow a caller whose certificate has exactly one URI SAN (SPIFFE: one ID per
    certificate) and that one in ``allow-from``, or in the trust domain without it.
    DNS SANs and the subject are never read as an identity."""
    uri_san = typed("envoy.matching.inputs.uri_san", "matching.common_inputs.ssl.v3.UriSanInput")
    allowed = plan.allow_from or (plan.trust_domain_peers,)
    predicate = {
        "single_predicate": {
            "input": uri_san,
            "value_match": {"safe_regex": {"google_re2": {}, "regex": _peer_pattern(allowed)}},
        }
    }
    return {
        "matcher_list": {
            "matchers": [
                {"predicate": predicate, "on_match": {"action": _action("allow", "ALLOW")}}
            ]
        },
        "on_no_match": {"action": _action("deny", "DENY")},
    }


def http_rbac(plan: PodMtls) -> list[Json]:
    """HTTP ports with ``allow-from``: a caller refused by ``_peer_matcher`` gets 403
    "RBAC: access denied", counted in http.<stat prefix>.rbac.denied. Without it the
    check is the connection's (``http_connection_rbac``), not every request's."""
    if not plan.allow_from:
        return []
    return [
        typed("envoy.filters.http.rbac", "filters.http.rbac.v3.RBAC", matcher=_peer_matcher(plan))
    ]


def http_connection_rbac(plan: PodMtls, stat_prefix: str) -> list[Json]:
    """HTTP ports without ``allow-from``: the one-URI-SAN check once per connection (a
    caller refused has its connection closed), so requests pay nothing for it."""
    return [] if plan.allow_from else network_rbac(plan, stat_prefix)


def network_rbac(plan: PodMtls, stat_prefix: str) -> list[Json]:
    """TCP ports: a caller refused by ``_peer_matcher`` has its connection closed, counted
    in <stat_prefix>.rbac.denied."""
    return [
        typed(
            "envoy.filters.network.rbac",
            "filters.network.rbac.v3.RBAC",
            stat_prefix=stat_prefix,
            matcher=_peer_matcher(plan),
        )
    ]


def mtls_endpoint(endpoint: Json) -> Json:
    """An endpoint that the cluster's ``mtls`` transport socket match applies to."""
    return {**endpoint, "metadata": {"filter_metadata": {TRANSPORT_SOCKET_MATCH: MTLS_ENDPOINT}}}


def transport_socket_match(peer: Peer) -> Json:
    return {"name": "mtls", "match": MTLS_ENDPOINT, "transport_socket": upstream_tls(peer)}
