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
    downstream_protocol_options,
    duration,
    http2_options,
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
from webhook.engine.upstreams import GRPC, Upstream, by_port

PASSTHROUGH = "outbound|passthrough"
FORWARD_PROXY = "outbound|forward-proxy"
UDS_MODE = 0o666
"""The app runs as its own UID: anyone in the pod may connect to the egress socket."""
_DNS_CACHE = {"name": "egress", "dns_lookup_family": "V4_PREFERRED"}


SNIFF_TIMEOUT = "0.1s"
"""How long the outbound listener waits for the app's first bytes on a port whose upstream
gives no protocol, to tell HTTP from anything else. The app is on the same host (loopback):
a client-first protocol's bytes are there within microseconds of connecting, so only a
server-first protocol (MySQL's greeting, SMTP) waits, and then goes on as TCP."""
HTTP_PROTOCOLS = ["http/1.1", "h2c"]
REFUSED = "outbound|refused"
"""No such cluster: a connection sent there is closed at once."""
REFUSED_PREFIX = "outbound_refused"
REFUSED_HEADER = "x-proxy-refused"
REFUSED_REASON = "undeclared-destination"
REFUSED_BODY = (
    "proxy.io: this destination is not in the pod's proxy.io/upstreams, and its outbound "
    "policy is declared-only\n"
)
ENVOY_DNS_REFRESH = 5.0
"""Envoy's own dns_refresh_rate: left out of each cluster when it is the mesh config's."""
REFUSED_PORTS_COUNTED = 1024
"""Distinct ports counted in outbound.refused (envoy_outbound_refused{port}); the app
chooses the ports, so their number is bounded."""


def _circuit_breakers(upstream: Upstream, policy: UpstreamPolicy) -> Json:
    """Thresholds, unless they are Envoy's defaults: an explicit copy costs ~0.5 KiB of
    memory per cluster and changes nothing."""
    chosen = upstream.policy
    thresholds = {
        "max_connections": chosen.max_connections,
        "max_pending_requests": chosen.max_pending_requests,
        "max_requests": chosen.max_requests,
        "max_retries": policy.max_active_retries,
    }
    if thresholds == ENVOY_DEFAULT_THRESHOLDS:
        return {}
    return {"circuit_breakers": {"thresholds": [thresholds]}}


MTLS_CHECK = {"interval": "5s", "unhealthy_interval": "2s", "timeout": "1s"}
"""permissive: how often each upstream's mTLS endpoint is tried (a TLS handshake), and
again after it failed: a service that becomes meshed is called over mTLS within 2 s."""


def _endpoints(upstream: Upstream) -> list[Json]:
    """One endpoint (a DNS name: every address it resolves to), reached over mTLS when the
    upstream has a peer identity; with a plaintext fallback (permissive, identity not
    pinned) the same name again as priority 1, in plaintext, for while the mTLS one fails
    its check (not meshed)."""
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


def _protocol_options(upstream: Upstream) -> Json:
    """gRPC: HTTP/2. HTTP and sniffed: as the app spoke it (HTTP/1.1, or h2c as HTTP/2), so
    an HTTP/2 client's requests are multiplexed and balanced per request. TCP: none."""
    if upstream.is_tcp:
        return {}
    if upstream.protocol == GRPC:
        return {"typed_extension_protocol_options": http2_options()}
    return {"typed_extension_protocol_options": downstream_protocol_options()}


def _dns_cluster(policy: UpstreamPolicy) -> Json:
    """Envoy's DNS cluster (what STRICT_DNS was, without the deprecated Cluster fields)."""
    refresh = (
        {}
        if policy.dns_refresh == ENVOY_DNS_REFRESH
        else {"dns_refresh_rate": duration(policy.dns_refresh)}
    )
    return typed(
        "envoy.cluster.dns",
        "clusters.dns.v3.DnsCluster",
        dns_lookup_family="V4_PREFERRED",
        respect_dns_ttl=True,
        **refresh,
    )


def upstream_cluster(upstream: Upstream, policy: UpstreamPolicy) -> Json:
    """A DNS cluster: every address the name resolves to is an endpoint of its own (a headless
    Service: each ready pod), balanced per request and ejected on its own; resolved again
    as the answer's TTL says, so pods that come and go are followed."""
    return {
        **_circuit_breakers(upstream, policy),
        "name": upstream.cluster,
        "cluster_type": _dns_cluster(policy),
        "lb_policy": policy.lb_policy,
        "connect_timeout": duration(policy.connect_timeout),
        "load_assignment": {
            "cluster_name": upstream.cluster,
            "endpoints": _endpoints(upstream),
        },
        **_protocol_options(upstream),
        **_mtls_options(upstream),
        "outlier_detection": {
            "consecutive_5xx": policy.consecutive_5xx,
            "interval": duration(policy.outlier_interval),
            "base_ejection_time": duration(policy.base_ejection_time),
            "max_ejection_percent": policy.max_ejection_percent,
        },
    }


def retry_policy(upstream: Upstream, policy: UpstreamPolicy) -> Json | None:
    """The upstream's retries on ``retryOn``. With a plaintext fallback a failed mTLS
    connection is retried on the other priority (plaintext) whatever the count: with 0
    retries, that one retry and only on connect failure (the request never left)."""
    chosen = upstream.policy
    retry_on, count = policy.retry_on, chosen.retries
    if upstream.plaintext_fallback:
        if count == 0:
            retry_on, count = "connect-failure", 1
        elif "connect-failure" not in retry_on.split(","):
            retry_on += ",connect-failure"
    if count == 0 and not chosen.per_try_timeout:
        return None
    retry: Json = {"retry_on": retry_on, "num_retries": count}
    if chosen.per_try_timeout:
        retry["per_try_timeout"] = duration(chosen.per_try_timeout)
    if upstream.plaintext_fallback:
        retry["retry_priority"] = previous_priorities()
    return retry


def upstream_host(upstream: Upstream, policy: UpstreamPolicy) -> Json:
    chosen = upstream.policy
    options: Json = {"timeout": duration(chosen.request_timeout)}
    retry = retry_policy(upstream, policy)
    if retry is not None:
        options["retry_policy"] = retry
    route = route_to(upstream.cluster, **options)
    return virtual_host(upstream.cluster, list(upstream.domains), [route])


def _refused_counter(port_format: str) -> Json:
    """Counts refused connections and requests per destination port: outbound.refused,
    tagged port (envoy_outbound_refused{port="5432"} in Prometheus): every chain that
    refuses counts into the same stats, each chain at most REFUSED_PORTS_COUNTED ports. (A
    shared scope, ``sharing_name``, crashes Envoy 1.40's --mode validate.)"""
    return typed(
        "envoy.access_loggers.stats",
        "access_loggers.stats.v3.Config",
        stats_scope={"prefix": "outbound", "max_counters": REFUSED_PORTS_COUNTED},
        counters=[
            {
                "stat": {
                    "name": "refused",
                    "tags": [{"name": "port", "value_format": port_format}],
                },
                "value_fixed": 1,
            }
        ],
    )


def _refused_requests(port_format: str) -> Json:
    """The counter, for the HTTP refusals only: on the outbound HTTP connection managers,
    only they are answered directly."""
    counter = _refused_counter(port_format)
    expression = "response.code_details == 'direct_response'"
    counter["filter"] = {
        "extension_filter": typed(
            "envoy.access_loggers.extension_filters.cel",
            "access_loggers.filters.cel.v3.ExpressionFilter",
            expression=expression,
        )
    }
    return counter


def _default_host(default: str | None) -> Json:
    """Hosts not declared: on to ``default`` (the address the app called, or the forward
    proxy), or with ``default`` None (declared-only) refused with a 502 that says why."""
    if default is not None:
        return virtual_host("default", ["*"], [route_to(default, timeout="0s")])
    refused = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 502, "body": {"inline_string": REFUSED_BODY}},
        "response_headers_to_add": [{"header": {"key": REFUSED_HEADER, "value": REFUSED_REASON}}],
    }
    return virtual_host("refused", ["*"], [refused])


def _http_manager(
    stat_prefix: str,
    upstreams: Iterable[Upstream],
    policy: UpstreamPolicy,
    default: str | None,
    port_format: str,
    http_filters: list[Json] | None = None,
) -> Json:
    hosts = [upstream_host(u, policy) for u in upstreams if not u.is_tcp]
    extra: Json = {}
    if default is None:
        extra["access_log"] = [_refused_requests(port_format)]
    return http_connection_manager(
        stat_prefix, [*hosts, _default_host(default)], http_filters, **extra
    )


def _http_inspector(ports: list[int]) -> Json:
    """Sniff for HTTP only on the ports of upstreams that give no protocol."""
    inspector = typed(
        "envoy.filters.listener.http_inspector", "filters.listener.http_inspector.v3.HttpInspector"
    )
    return only_on_ports(inspector, ports)


def _sniffed(upstreams: list[Upstream]) -> bool:
    return any(u.protocol is None for u in upstreams)


def _tcp_chain(upstream: Upstream) -> Json:
    """Opaque bytes to the upstream's own cluster (stats tcp.outbound_<port>.)."""
    proxy = tcp_proxy(f"outbound_{upstream.port}", upstream.cluster)
    return chain(proxy, match={"destination_port": upstream.port})


def _port_chains(
    port: int, upstreams: list[Upstream], policy: UpstreamPolicy, default: str | None
) -> list[Json]:
    """One port's chains. A TCP upstream has the port to itself. HTTP and gRPC ones are
    told apart by Host header. A port with an upstream that gives no protocol is sniffed:
    HTTP to the HTTP chain; anything else (or nothing within SNIFF_TIMEOUT) to the default
    chain, as if undeclared: the address alone cannot tell a declared upstream's TLS or
    database connection from another host's on the same port, so only ``/tcp`` claims a
    port's non-HTTP traffic."""
    if upstreams[0].is_tcp:
        return [_tcp_chain(upstreams[0])]
    match: Json = {"destination_port": port}
    if _sniffed(upstreams):
        match["application_protocols"] = HTTP_PROTOCOLS
    hcm = _http_manager(f"outbound_{port}", upstreams, policy, default, "%DOWNSTREAM_LOCAL_PORT%")
    return [chain(hcm, match=match)]


def _refused_chain() -> Json:
    """declared-only: anything not declared is closed at once, and counted per port."""
    proxy = tcp_proxy(
        REFUSED_PREFIX, REFUSED, access_log=[_refused_counter("%DOWNSTREAM_LOCAL_PORT%")]
    )
    return chain(proxy)


def outbound_listener(
    upstreams: tuple[Upstream, ...], policy: UpstreamPolicy, declared_only: bool = False
) -> Json:
    ports = by_port(upstreams)
    default = None if declared_only else PASSTHROUGH
    chains = [
        c for port, on_port in ports.items() for c in _port_chains(port, on_port, policy, default)
    ]
    sniffed = [port for port, on_port in ports.items() if _sniffed(on_port)]
    filters = [original_dst()]
    extra: Json = {}
    if sniffed:
        filters.append(_http_inspector(sniffed))
        extra = {
            "listener_filters_timeout": SNIFF_TIMEOUT,
            "continue_on_listener_filters_timeout": True,
        }
    passthrough = chain(tcp_proxy(PASSTHROUGH, PASSTHROUGH))
    return listener(
        "outbound",
        socket_address("0.0.0.0", OUTBOUND_PORT),
        chains,
        listener_filters=filters,
        default_filter_chain=_refused_chain() if declared_only else passthrough,
        traffic_direction="OUTBOUND",
        **extra,
    )


def outbound_uds_listener(
    path: str, upstreams: tuple[Upstream, ...], policy: UpstreamPolicy, declared_only: bool = False
) -> Json:
    """HTTP egress over a Unix socket: declared upstreams by Host header, anything else
    through a dynamic forward proxy that resolves the Host header itself (or, with
    declared-only, refused: counted as port "uds")."""
    forward = typed(
        "envoy.filters.http.dynamic_forward_proxy",
        "filters.http.dynamic_forward_proxy.v3.FilterConfig",
        dns_cache_config=_DNS_CACHE,
    )
    default = None if declared_only else FORWARD_PROXY
    filters = [] if declared_only else [forward]
    hcm = _http_manager("outbound_uds", upstreams, policy, default, "uds", filters)
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
        "cluster_type": typed(
            "envoy.clusters.dynamic_forward_proxy",
            "clusters.dynamic_forward_proxy.v3.ClusterConfig",
            dns_cache_config=_DNS_CACHE,
        ),
    }


def clusters(
    upstreams: tuple[Upstream, ...], policy: UpstreamPolicy, uds: bool, declared_only: bool = False
) -> list[Json]:
    """With declared-only nothing goes to the address the app called: no passthrough."""
    return [
        *(upstream_cluster(u, policy) for u in upstreams),
        *([] if declared_only else [passthrough_cluster()]),
        *([forward_proxy_cluster()] if uds and not declared_only else []),
    ]
