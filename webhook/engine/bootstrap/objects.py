"""Small builders for Envoy v3 objects, shared by every part of the bootstrap."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhook.engine.json_object import Json

_TYPES = "type.googleapis.com/envoy.extensions."
CONNECT_TIMEOUT = "1s"
ADMIN_CLUSTER = "admin"
ENVOY_DEFAULT_THRESHOLDS = {
    "max_connections": 1024,
    "max_pending_requests": 1024,
    "max_requests": 1024,
    "max_retries": 3,
}
"""Envoy's own circuit breaker defaults, per cluster."""


def typed(name: str, type_name: str, **config: Any) -> Json:
    """A filter or extension: ``type_name`` is relative to envoy.extensions."""
    return {"name": name, "typed_config": {"@type": _TYPES + type_name, **config}}


def duration(seconds: float) -> str:
    return f"{seconds:g}s"


def socket_address(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def pipe_address(path: str, mode: int | None = None) -> Json:
    pipe: Json = {"path": path}
    if mode is not None:
        pipe["mode"] = mode
    return {"pipe": pipe}


def static_cluster(name: str, address: Json, **extra: Any) -> Json:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        **extra,
    }


def http2_options() -> Json:
    """Cluster option: speak HTTP/2 (prior knowledge, h2c) to the upstream."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def downstream_protocol_options() -> Json:
    """Cluster option: speak to the upstream as the app spoke to us (HTTP/1.1, or h2c)."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
            "use_downstream_protocol_config": {
                "http_protocol_options": {},
                "http2_protocol_options": {},
            },
        }
    }


def tcp_proxy(stat_prefix: str, cluster: str, **extra: Any) -> Json:
    return typed(
        "envoy.filters.network.tcp_proxy",
        "filters.network.tcp_proxy.v3.TcpProxy",
        stat_prefix=stat_prefix,
        cluster=cluster,
        **extra,
    )


def previous_priorities() -> Json:
    """A retry's priority: another than the one that failed (the TCP endpoint after the
    socket, plaintext after mTLS)."""
    return typed(
        "envoy.retry_priorities.previous_priorities",
        "retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
        update_frequency=1,
    )


def original_dst_cluster(name: str, **extra: Any) -> Json:
    """Connections go on to the address they were sent to (iptables' original one)."""
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": CONNECT_TIMEOUT,
        **extra,
    }


def router() -> Json:
    return typed("envoy.filters.http.router", "filters.http.router.v3.Router")


def http_connection_manager(
    stat_prefix: str,
    virtual_hosts: list[Json],
    http_filters: list[Json] | None = None,
    **extra: Any,
) -> Json:
    """Every HTTP connection manager of the bootstrap (inbound, outbound, the egress
    socket, 15021, 15090) is built here; the data path's access log and tracing are laid
    over them by ``telemetry``."""
    return typed(
        "envoy.filters.network.http_connection_manager",
        "filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=stat_prefix,
        route_config={"name": stat_prefix, "virtual_hosts": virtual_hosts},
        http_filters=[*(http_filters or []), router()],
        **extra,
    )


def virtual_host(name: str, domains: list[str], routes: list[Json]) -> Json:
    return {"name": name, "domains": domains, "routes": routes}


def route_to(cluster: str, match: Json | None = None, **route: Any) -> Json:
    return {"match": match or {"prefix": "/"}, "route": {"cluster": cluster, **route}}


def exact_path(path: str) -> Json:
    return {"path": path}


def original_dst() -> Json:
    return typed(
        "envoy.filters.listener.original_dst", "filters.listener.original_dst.v3.OriginalDst"
    )


def _any_port(ports: Iterable[int]) -> Json:
    wanted = [{"destination_port_range": {"start": p, "end": p + 1}} for p in ports]
    return wanted[0] if len(wanted) == 1 else {"or_match": {"rules": wanted}}


def only_on_ports(listener_filter: Json, ports: list[int]) -> Json:
    """A listener filter that runs only for connections to ``ports``: elsewhere it would
    make a server-first protocol wait for a client that never speaks first."""
    listener_filter["filter_disabled"] = {"not_match": _any_port(ports)}
    return listener_filter


def except_on_ports(listener_filter: Json, ports: Iterable[int]) -> Json:
    """A listener filter that runs for connections to any port but ``ports``."""
    listener_filter["filter_disabled"] = _any_port(ports)
    return listener_filter


def listener(name: str, address: Json, filter_chains: list[Json], **extra: Any) -> Json:
    """Its stats are under listener.<name>. rather than the address."""
    return {
        "name": name,
        "stat_prefix": name,
        "address": address,
        "filter_chains": filter_chains,
        **extra,
    }


def also_ipv6(item: Json) -> Json:
    """Listen on [::]:port as well (a second, IPv6-only socket), for dual-stack pods."""
    port = item["address"]["socket_address"]["port_value"]
    item["additional_addresses"] = [{"address": socket_address("::", port)}]
    return item


def chain(*filters: Json, match: Json | None = None) -> Json:
    result: Json = {"filters": list(filters)}
    if match:
        result["filter_chain_match"] = match
    return result
