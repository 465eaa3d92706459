"""The static Envoy bootstrap of an injected pod, built from its ``AppPort``s.

There is no control plane: this document is all the sidecar ever knows. It travels in the
proxy container's args as JSON (``--config-yaml`` takes JSON, a subset of YAML).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from webhook.names import (
    ADMIN_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROMETHEUS_PATH,
    PROMETHEUS_PORT,
    READINESS_PATH,
    READINESS_PORT,
)
from webhook.sockets import AppPort

Json = dict[str, Any]

_TYPES = "type.googleapis.com/envoy.extensions."
ADMIN_CLUSTER = "admin"
INBOUND_PASSTHROUGH = "inbound|passthrough"
OUTBOUND_PASSTHROUGH = "outbound|passthrough"
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"
"""Source of inbound passthrough connections (as in Istio), so rules can tell them apart."""
CONNECT_TIMEOUT = "1s"


def socket_address(address: str, port: int) -> Json:
    return {"socket_address": {"address": address, "port_value": port}}


def pipe_address(path: str) -> Json:
    return {"pipe": {"path": path}}


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}"


def static_cluster(name: str, address: Json) -> Json:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def app_cluster(port: AppPort) -> Json:
    """The cluster for one app port: its Unix socket, or TCP on loopback."""
    address = pipe_address(port.socket) if port.socket else socket_address("127.0.0.1", port.number)
    return static_cluster(inbound_cluster_name(port.number), address)


def passthrough_cluster(name: str, source: str | None = None) -> Json:
    cluster: Json = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": CONNECT_TIMEOUT,
    }
    if source:
        cluster["upstream_bind_config"] = {"source_address": {"address": source, "port_value": 0}}
    return cluster


def tcp_proxy(stat_prefix: str, cluster: str) -> Json:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": _TYPES + "filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        },
    }


def _router() -> Json:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _TYPES + "filters.http.router.v3.Router"},
    }


def admin_path_listener(name: str, port: int, path: str, admin_path: str) -> Json:
    """A listener that serves exactly one path of the loopback-only admin API."""
    route = {
        "match": {"path": path},
        "route": {"cluster": ADMIN_CLUSTER, "prefix_rewrite": admin_path},
    }
    hcm = {
        "@type": _TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
        "http_filters": [_router()],
    }
    return {
        "name": name,
        "address": socket_address("0.0.0.0", port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _original_dst() -> Json:
    return {
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": _TYPES + "filters.listener.original_dst.v3.OriginalDst"},
    }


def inbound_listener(ports: Iterable[AppPort]) -> Json:
    """The target of the inbound redirect: one filter chain per app port."""
    chains = [
        {
            "filter_chain_match": {"destination_port": port.number},
            "filters": [
                tcp_proxy(inbound_cluster_name(port.number), inbound_cluster_name(port.number))
            ],
        }
        for port in ports
    ]
    return {
        "name": "inbound",
        "address": socket_address("0.0.0.0", INBOUND_PORT),
        "listener_filters": [_original_dst()],
        "filter_chains": chains,
        "default_filter_chain": {"filters": [tcp_proxy(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH)]},
    }


def outbound_listener() -> Json:
    """The target of the outbound redirect: whatever the app dialled, unchanged."""
    return {
        "name": "outbound",
        "address": socket_address("0.0.0.0", OUTBOUND_PORT),
        "listener_filters": [_original_dst()],
        "default_filter_chain": {
            "filters": [tcp_proxy(OUTBOUND_PASSTHROUGH, OUTBOUND_PASSTHROUGH)]
        },
    }


def build(ports: tuple[AppPort, ...]) -> Json:
    return {
        "admin": {"address": socket_address("127.0.0.1", ADMIN_PORT)},
        "static_resources": {
            "listeners": [
                admin_path_listener("readiness", READINESS_PORT, READINESS_PATH, "/ready"),
                admin_path_listener(
                    "prometheus", PROMETHEUS_PORT, PROMETHEUS_PATH, PROMETHEUS_PATH
                ),
                inbound_listener(ports),
                outbound_listener(),
            ],
            "clusters": [
                static_cluster(ADMIN_CLUSTER, socket_address("127.0.0.1", ADMIN_PORT)),
                *(app_cluster(port) for port in ports),
                passthrough_cluster(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH_SOURCE),
                passthrough_cluster(OUTBOUND_PASSTHROUGH),
            ],
        },
    }


def encode(bootstrap: Json) -> str:
    return orjson.dumps(bootstrap).decode()
