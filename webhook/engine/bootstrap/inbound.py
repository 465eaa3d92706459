"""The inbound side: the listener iptables redirects to (15006), and one cluster per app
port, which reaches the app over its Unix socket or TCP loopback."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhook.engine.bootstrap.objects import (
    CONNECT_TIMEOUT,
    Json,
    chain,
    http2_options,
    http_connection_manager,
    listener,
    original_dst,
    pipe_address,
    route_to,
    socket_address,
    static_cluster,
    stdout_access_log,
    tcp_proxy,
    typed,
    virtual_host,
)
from webhook.engine.names import INBOUND_PORT, PROXY_PORTS
from webhook.engine.sockets import HTTP2, AppPort

PASSTHROUGH = "inbound|passthrough"
BLACKHOLE = "inbound|blackhole"
PASSTHROUGH_SOURCE = "127.0.0.6"
"""Source of passthrough connections (as in Istio), so the app and rules can tell them apart."""
SOCKET_CHECK_SECONDS = 1
UNHEALTHY_CHECK_SECONDS = 0.1
"""Auto mode: an endpoint nothing answers on is checked this often, so an app that starts
listening is seen within a tenth of a second (at most ten connect attempts a second)."""
FALLBACK_RETRIES = 8
FALLBACK_BACKOFF = ("0.025s", "0.25s")
"""Auto mode: connect failures retried with fully jittered backoff (25 ms doubling to
250 ms): together well past one unhealthy check, so a request that comes while no
endpoint has been seen healthy yet waits for the check rather than failing."""
ENVOY_MAX_REQUESTS = 1024
"""Envoy's default limit of requests in flight per cluster."""


def cluster_name(port: int) -> str:
    return f"inbound|{port}"


def tls_cluster_name(port: int) -> str:
    return f"inbound|{port}|tls"


def _socket_check(auto: bool) -> Json:
    """Connect-only health check: what makes an unreachable socket fail readiness."""
    every = f"{SOCKET_CHECK_SECONDS}s"
    check = {
        "timeout": every,
        "interval": every,
        "no_traffic_interval": every,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "tcp_health_check": {},
    }
    if auto:
        # Also before the cluster's first connection (Envoy's "no traffic" intervals),
        # when the app has just started; a healthy endpoint stays at once a second.
        fast = f"{UNHEALTHY_CHECK_SECONDS}s"
        check |= {
            "unhealthy_interval": fast,
            "no_traffic_interval": fast,
            "no_traffic_healthy_interval": every,
        }
    return check


def _app_address(port: AppPort) -> Json:
    return pipe_address(port.socket) if port.socket else socket_address("127.0.0.1", port.number)


def _app_cluster(name: str, port: AppPort, **extra: Any) -> Json:
    """A cluster reaching the app's port: its socket, or 127.0.0.1:port, or in auto mode
    both as two priorities. The connect-only health check, every second, marks the socket
    down while nothing listens there, and traffic moves to the next priority, TCP; back
    to the socket within a second of the app listening on it again. Every endpoint keeps
    its own stats, so operators can see which way traffic goes."""
    if port.socket:
        extra["health_checks"] = [_socket_check(port.tcp_fallback)]
    cluster = static_cluster(name, _app_address(port), **extra)
    if port.tcp_fallback:
        tcp = {"endpoint": {"address": socket_address("127.0.0.1", port.number)}}
        cluster["load_assignment"]["endpoints"].append({"priority": 1, "lb_endpoints": [tcp]})
        cluster["track_cluster_stats"] = {"per_endpoint_stats": True}
        # Envoy allows 3 retries in flight per cluster by default: while the socket goes
        # away every request in flight retries to TCP at once, so allow one per request.
        cluster["circuit_breakers"] = {"thresholds": [{"max_retries": ENVOY_MAX_REQUESTS}]}
    return cluster


def app_cluster(port: AppPort) -> Json:
    """The cluster for one app port (see ``_app_cluster``)."""
    extra: Json = {}
    if port.protocol == HTTP2:
        extra["typed_extension_protocol_options"] = http2_options()
    return _app_cluster(cluster_name(port.number), port, **extra)


def tls_probe_cluster(port: AppPort) -> Json:
    """For HTTPS probes: TLS to the app like the kubelet does it, without verification."""
    tls = typed("envoy.transport_sockets.tls", "transport_sockets.tls.v3.UpstreamTlsContext")
    return _app_cluster(tls_cluster_name(port.number), port, transport_socket=tls)


def fallback_retry(port: AppPort) -> Json:
    """Route option for auto mode: a request whose connection to the socket is refused
    (the app stopped listening there, and the health check has not seen it yet) is sent
    again, to TCP. Right after the app starts, neither endpoint has been seen healthy and
    Envoy's panic routing keeps choosing the first priority (previous_priorities falls
    back to it when no other is healthy): the backoff then outlasts the next check."""
    if not port.tcp_fallback:
        return {}
    return {
        "retry_policy": {
            "retry_on": "connect-failure",
            "num_retries": FALLBACK_RETRIES,
            "retry_back_off": {
                "base_interval": FALLBACK_BACKOFF[0],
                "max_interval": FALLBACK_BACKOFF[1],
            },
            "retry_priority": typed(
                "envoy.retry_priorities.previous_priorities",
                "retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                update_frequency=1,
            ),
        }
    }


def _http_filter(port: AppPort) -> Json:
    name = f"inbound_{port.number}"
    route = route_to(cluster_name(port.number), timeout="0s", **fallback_retry(port))
    return http_connection_manager(
        name,
        [virtual_host(name, ["*"], [route])],
        access_log=[stdout_access_log()],
        upgrade_configs=[{"upgrade_type": "websocket"}],
    )


def _chain(port: AppPort) -> Json:
    name = cluster_name(port.number)
    network_filter = _http_filter(port) if port.is_http else tcp_proxy(name, name)
    return chain(network_filter, match={"destination_port": port.number})


def passthrough_chain() -> Json:
    """Traffic to a port the pod did not declare goes to that port on loopback. Envoy's
    own connections are never redirected, so this cannot loop back into the listener."""
    to_loopback = typed(
        "envoy.filters.network.set_filter_state",
        "filters.network.set_filter_state.v3.Config",
        on_new_connection=[
            {
                "object_key": "envoy.network.transport_socket.original_dst_address",
                "format_string": {
                    "text_format_source": {"inline_string": "127.0.0.1:%DOWNSTREAM_LOCAL_PORT%"}
                },
            }
        ],
    )
    return chain(to_loopback, tcp_proxy(PASSTHROUGH, PASSTHROUGH))


def _blackhole_chain(port: int) -> Json:
    """Traffic that reaches 15006 for one of the proxy's own ports is dropped: passing it
    through to loopback would reach Envoy itself (a loop) or its admin API."""
    return chain(tcp_proxy(BLACKHOLE, BLACKHOLE), match={"destination_port": port})


def blackhole_cluster() -> Json:
    return {
        "name": BLACKHOLE,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {"cluster_name": BLACKHOLE, "endpoints": []},
    }


def passthrough_cluster() -> Json:
    return {
        "name": PASSTHROUGH,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": CONNECT_TIMEOUT,
        "upstream_bind_config": {
            "source_address": socket_address(PASSTHROUGH_SOURCE, 0)["socket_address"]
        },
    }


def inbound_listener(ports: Iterable[AppPort]) -> Json:
    return listener(
        "inbound",
        socket_address("0.0.0.0", INBOUND_PORT),
        [*(_chain(port) for port in ports), *(_blackhole_chain(p) for p in PROXY_PORTS)],
        listener_filters=[original_dst()],
        default_filter_chain=passthrough_chain(),
        traffic_direction="INBOUND",
    )


def clusters(ports: Iterable[AppPort], tls_ports: Iterable[AppPort]) -> list[Json]:
    return [
        *(app_cluster(p) for p in ports),
        *(tls_probe_cluster(p) for p in tls_ports),
        passthrough_cluster(),
    ]
