"""The outbound side: the listener iptables redirects the app's egress to (15001), the
optional egress Unix socket, and a cluster per declared upstream."""

from __future__ import annotations

from collections.abc import Iterable

from webhook.engine.bootstrap import tls
from webhook.engine.bootstrap.objects import (
    CONNECT_TIMEOUT,
    ENVOY_DEFAULT_THRESHOLDS,
    Json,
    chain,
    duration,
    http_connection_manager,
    listener,
    only_on_ports,
    original_dst,
    original_dst_cluster,
    pipe_address,
    previous_priorities,
    route_to,
    socket_address,
    tcp_proxy,
    typed,
    virtual_host,
)
from webhook.engine.config import UpstreamPolicy
from webhook.engine.names import OUTBOUND_PORT
from webhook.engine.upstreams import Upstream

PASSTHROUGH = "outbound|passthrough"
FORWARD_PROXY = "outbound|forward-proxy"
UDS_MODE = 0o666
"""The app runs as its own UID: anyone in the pod may connect to the egress socket."""
_DNS_CACHE = {"name": "egress", "dns_lookup_family": "V4_PREFERRED"}


def _circuit_breakers(policy: UpstreamPolicy) -> Json:
    """Thresholds, unless they are Envoy's defaults: an explicit copy costs ~0.5 KiB of
    memory per cluster and changes nothing."""
    thresholds = {key: getattr(policy, key) for key in ENVOY_DEFAULT_THRESHOLDS}
    if thresholds == ENVOY_DEFAULT_THRESHOLDS:
        return {}
    return {"circuit_breakers": {"thresholds": [thresholds]}}


MTLS_CHECK = {"interval": "5s", "unhealthy_interval": "2s", "timeout": "1s"}
"""permissive: how often each upstream's mTLS endpoint is tried (a TLS handshake), and
again after it failed: a service that becomes meshed is called over mTLS within 2 s."""


def _endpoints(upstream: Upstream) -> list[Json]:
    """One endpoint, reached over mTLS when the upstream has a peer identity; with a
    plaintext fallback (permissive, identity not pinned) the same address again as
    priority 1, in plaintext, for while the mTLS one fails its check (not meshed)."""
    endpoint = {"endpoint": {"address": socket_address(upstream.host, upstream.port)}}
    if not upstream.plaintext_fallback:
        return [{"lb_endpoints": [endpoint]}]
    return [
        {"lb_endpoints": [tls.mtls_endpoint(endpoint)]},
        {"priority": 1, "lb_endpoints": [endpoint]},
    ]


def _mtls_options(upstream: Upstream) -> Json:
    if upstream.peer is None:
        return {}
    if not upstream.plaintext_fallback:
        return {"transport_socket": tls.upstream_tls(upstream.peer)}
    check = {
        **MTLS_CHECK,
        "no_traffic_interval": MTLS_CHECK["interval"],
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "tcp_health_check": {},
    }
    return {
        "transport_socket_matches": [tls.transport_socket_match(upstream.peer)],
        "health_checks": [check],
    }


def upstream_cluster(upstream: Upstream, policy: UpstreamPolicy) -> Json:
    return {
        **_circuit_breakers(policy),
        "name": upstream.cluster,
        "type": "STRICT_DNS",
        "lb_policy": policy.lb_policy,
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": duration(policy.connect_timeout),
        "load_assignment": {
            "cluster_name": upstream.cluster,
            "endpoints": _endpoints(upstream),
        },
        **_mtls_options(upstream),
        "outlier_detection": {
            "consecutive_5xx": policy.consecutive_5xx,
            "interval": duration(policy.outlier_interval),
            "base_ejection_time": duration(policy.base_ejection_time),
            "max_ejection_percent": policy.max_ejection_percent,
        },
    }


def upstream_host(upstream: Upstream, policy: UpstreamPolicy) -> Json:
    retry: Json = {"retry_on": policy.retry_on, "num_retries": policy.retries}
    if upstream.plaintext_fallback:
        # A retry goes to the other priority: plaintext after a failed mTLS connection.
        retry["retry_priority"] = previous_priorities()
    route = route_to(upstream.cluster, timeout="0s", retry_policy=retry)
    return virtual_host(upstream.cluster, list(upstream.domains), [route])


def _routes(upstreams: Iterable[Upstream], policy: UpstreamPolicy, default: str) -> list[Json]:
    hosts = [upstream_host(u, policy) for u in upstreams]
    return [*hosts, virtual_host("default", ["*"], [route_to(default, timeout="0s")])]


def _http_inspector(ports: list[int]) -> Json:
    """Sniff for HTTP only on declared upstreams' ports."""
    inspector = typed(
        "envoy.filters.listener.http_inspector", "filters.listener.http_inspector.v3.HttpInspector"
    )
    return only_on_ports(inspector, ports)


def outbound_listener(upstreams: tuple[Upstream, ...], policy: UpstreamPolicy) -> Json:
    ports = sorted({u.port for u in upstreams})
    chains = [
        chain(
            http_connection_manager(
                f"outbound_{port}",
                _routes((u for u in upstreams if u.port == port), policy, PASSTHROUGH),
            ),
            match={"destination_port": port, "application_protocols": ["http/1.1", "h2c"]},
        )
        for port in ports
    ]
    filters = [original_dst(), *([_http_inspector(ports)] if ports else [])]
    return listener(
        "outbound",
        socket_address("0.0.0.0", OUTBOUND_PORT),
        chains,
        listener_filters=filters,
        default_filter_chain=chain(tcp_proxy(PASSTHROUGH, PASSTHROUGH)),
        traffic_direction="OUTBOUND",
    )


def outbound_uds_listener(
    path: str, upstreams: tuple[Upstream, ...], policy: UpstreamPolicy
) -> Json:
    """HTTP egress over a Unix socket: declared upstreams by Host header, anything else
    through a dynamic forward proxy that resolves the Host header itself."""
    forward = typed(
        "envoy.filters.http.dynamic_forward_proxy",
        "filters.http.dynamic_forward_proxy.v3.FilterConfig",
        dns_cache_config=_DNS_CACHE,
    )
    hcm = http_connection_manager(
        "outbound_uds", _routes(upstreams, policy, FORWARD_PROXY), [forward]
    )
    return listener(
        "outbound_uds", pipe_address(path, UDS_MODE), [chain(hcm)], traffic_direction="OUTBOUND"
    )


def passthrough_cluster() -> Json:
    return original_dst_cluster(PASSTHROUGH)


def forward_proxy_cluster() -> Json:
    return {
        "name": FORWARD_PROXY,
        "connect_timeout": CONNECT_TIMEOUT,
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy"
                ".v3.ClusterConfig",
                "dns_cache_config": _DNS_CACHE,
            },
        },
    }


def clusters(upstreams: tuple[Upstream, ...], policy: UpstreamPolicy, uds: bool) -> list[Json]:
    return [
        *(upstream_cluster(u, policy) for u in upstreams),
        passthrough_cluster(),
        *([forward_proxy_cluster()] if uds else []),
    ]
