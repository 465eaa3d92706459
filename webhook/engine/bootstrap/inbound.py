"""The inbound side: the listener iptables redirects to (15006), and one cluster per app
port, which reaches the app over its Unix socket or TCP loopback."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhook.engine.bootstrap import tls
from webhook.engine.bootstrap.objects import (
    ENVOY_DEFAULT_THRESHOLDS,
    Json,
    chain,
    http2_options,
    http_connection_manager,
    listener,
    original_dst,
    original_dst_cluster,
    pipe_address,
    previous_priorities,
    route_to,
    socket_address,
    static_cluster,
    tcp_proxy,
    typed,
    virtual_host,
)
from webhook.engine.mtls import PodMtls
from webhook.engine.names import INBOUND_PORT, MTLS_ALPN, PROXY_PORTS
from webhook.engine.sockets import HTTP2, AppPort

PASSTHROUGH = "inbound|passthrough"
MTLS_SUFFIX = "_mtls"
"""Ends the stat prefix of every mTLS chain (the access log names the caller there)."""
PASSTHROUGH_MTLS = f"inbound_passthrough{MTLS_SUFFIX}"
PASSTHROUGH_REFUSED = "inbound_passthrough_refused"
"""Stat prefixes of the ports the pod does not declare: over mTLS, and refused plaintext."""
BLACKHOLE = "inbound|blackhole"
PASSTHROUGH_SOURCE = "127.0.0.6"
"""Source of IPv4 passthrough connections (as in Istio), so the app and rules can tell them
apart; IPv6 ones come from ::1."""
PASSTHROUGH_SOURCE_V6 = "::1"
SOCKET_CHECK_SECONDS = 1
UNHEALTHY_CHECK_SECONDS = 0.1
"""Auto mode: an endpoint nothing answers on is checked this often, so an app that starts
listening is seen within a tenth of a second (at most ten connect attempts a second)."""
FALLBACK_RETRIES = 8
FALLBACK_BACKOFF = ("0.025s", "0.25s")
"""Auto mode: connect failures retried with fully jittered backoff (25 ms doubling to
250 ms): together well past one unhealthy check, so a request that comes while no
endpoint has been seen healthy yet waits for the check rather than failing."""


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


def _app_cluster(name: str, port: AppPort, checked: bool = False, **extra: Any) -> Json:
    """A cluster reaching the app's port: its socket, or 127.0.0.1:port, or in auto mode
    both as two priorities. The connect-only health check, every second, marks the socket
    down while nothing listens there, and traffic moves to the next priority, TCP; back
    to the socket within a second of the app listening on it again. Every endpoint keeps
    its own stats, so operators can see which way traffic goes. ``checked``: a tcpSocket
    probe is answered from this check, so a TCP port has it too."""
    if port.socket or checked:
        extra["health_checks"] = [_socket_check(port.tcp_fallback)]
    cluster = static_cluster(name, _app_address(port), **extra)
    if port.tcp_fallback:
        tcp = {"endpoint": {"address": socket_address("127.0.0.1", port.number)}}
        cluster["load_assignment"]["endpoints"].append({"priority": 1, "lb_endpoints": [tcp]})
        cluster["track_cluster_stats"] = {"per_endpoint_stats": True}
        # Envoy allows 3 retries in flight per cluster by default: while the socket goes
        # away every request in flight retries to TCP at once, so allow one per request.
        most = ENVOY_DEFAULT_THRESHOLDS["max_requests"]
        cluster["circuit_breakers"] = {"thresholds": [{"max_retries": most}]}
    return cluster


def app_cluster(port: AppPort, checked: bool = False) -> Json:
    """The cluster for one app port (see ``_app_cluster``)."""
    extra: Json = {}
    if port.protocol == HTTP2:
        extra["typed_extension_protocol_options"] = http2_options()
    return _app_cluster(cluster_name(port.number), port, checked, **extra)


def tls_probe_cluster(port: AppPort) -> Json:
    """For HTTPS probes: TLS to the app like the kubelet does it, without verification."""
    context = typed("envoy.transport_sockets.tls", "transport_sockets.tls.v3.UpstreamTlsContext")
    return _app_cluster(tls_cluster_name(port.number), port, transport_socket=context)


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
            "retry_priority": previous_priorities(),
        }
    }


def _http_filter(port: AppPort, stat_prefix: str, extra_filters: list[Json], peer: bool) -> Json:
    """``peer``: the mTLS chain, whose caller is told to the app in
    x-forwarded-client-cert (``By=<ours>;URI=<the caller's>``), any such header from the
    caller replaced."""
    route = route_to(cluster_name(port.number), timeout="0s", **fallback_retry(port))
    extra: Json = {}
    if peer:
        extra = {
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"uri": True},
        }
    return http_connection_manager(
        stat_prefix,
        [virtual_host(stat_prefix, ["*"], [route])],
        extra_filters,
        upgrade_configs=[{"upgrade_type": "websocket"}],
        **extra,
    )


def _plaintext_chain(port: AppPort, refused: bool) -> Json:
    """Stats: http.inbound_<port>. or tcp.inbound|<port>.; tcp.inbound_<port>_refused.
    where mTLS refuses plaintext (closed at once: no such cluster)."""
    match = {"destination_port": port.number}
    if refused:
        return chain(tcp_proxy(f"inbound_{port.number}_refused", BLACKHOLE), match=match)
    name = cluster_name(port.number)
    if port.is_http:
        return chain(_http_filter(port, f"inbound_{port.number}", [], peer=False), match=match)
    return chain(tcp_proxy(name, name), match=match)


def _mtls_chain(port: AppPort, plan: PodMtls, sniffed: bool = True) -> Json:
    """Our ALPN: TLS with a client certificate of the trust domain, then the port exactly
    as in plaintext. Stats under <http|tcp>.inbound_<port>_mtls. Not ``sniffed`` (a TCP
    port where plaintext is refused): every connection to the port, as TLS."""
    prefix = f"inbound_{port.number}{MTLS_SUFFIX}"
    if port.is_http:
        filters = [
            *tls.http_connection_rbac(plan, f"http.{prefix}."),
            _http_filter(port, prefix, tls.http_rbac(plan), peer=True),
        ]
    else:
        name = cluster_name(port.number)
        filters = [*tls.network_rbac(plan, f"tcp.{prefix}."), tcp_proxy(prefix, name)]
    match: Json = {"destination_port": port.number}
    if sniffed:
        match["application_protocols"] = [MTLS_ALPN]
    result = chain(*filters, match=match)
    result["transport_socket"] = tls.downstream_tls(plan)
    return result


def unsniffed(ports: Iterable[AppPort], plan: PodMtls | None) -> list[int]:
    """The ports whose connections are never held for the TLS inspector: TCP-hinted ones
    where plaintext is refused anyway (their one chain is TLS)."""
    if plan is None or not plan.refuses_plaintext:
        return []
    return [p.number for p in ports if p.tcp_hinted]


def _chains(port: AppPort, plan: PodMtls | None) -> list[Json]:
    if plan is None:
        return [_plaintext_chain(port, refused=False)]
    if port.tcp_hinted and plan.refuses_plaintext:
        return [_mtls_chain(port, plan, sniffed=False)]
    return [_mtls_chain(port, plan), _plaintext_chain(port, refused=plan.refuses_plaintext)]


def passthrough_chain(plan: PodMtls | None = None) -> Json:
    """Traffic to a port the pod did not declare goes to the address it was sent to (the
    pod's IP), never to loopback: a service the app binds to 127.0.0.1 only stays out of
    reach from outside the pod, as without a sidecar. Envoy's own connections are never
    redirected, so this cannot loop back into the listener. Where mTLS refuses plaintext,
    plaintext to such a port is closed at once (``tcp.inbound_passthrough_refused.``)."""
    if plan is not None and plan.refuses_plaintext:
        return chain(tcp_proxy(PASSTHROUGH_REFUSED, BLACKHOLE))
    return chain(tcp_proxy(PASSTHROUGH, PASSTHROUGH))


def _passthrough_mtls_chain(plan: PodMtls) -> Json:
    """Our ALPN to a port the pod did not declare: the same checks as a declared TCP port
    (a client certificate, ``allow-from``), then on to the address it was sent to."""
    filters = [
        *tls.network_rbac(plan, f"tcp.{PASSTHROUGH_MTLS}."),
        tcp_proxy(PASSTHROUGH_MTLS, PASSTHROUGH),
    ]
    result = chain(*filters, match={"application_protocols": [MTLS_ALPN]})
    result["transport_socket"] = tls.downstream_tls(plan)
    return result


def _blackhole_chain(port: int) -> Json:
    """Traffic that reaches 15006 for one of the proxy's own ports is dropped: passing it
    through to loopback would reach Envoy itself (a loop) or its admin API."""
    return chain(tcp_proxy(BLACKHOLE, BLACKHOLE), match={"destination_port": port})


def passthrough_cluster() -> Json:
    return original_dst_cluster(
        PASSTHROUGH,
        upstream_bind_config={
            "source_address": socket_address(PASSTHROUGH_SOURCE, 0)["socket_address"],
            "extra_source_addresses": [
                {"address": socket_address(PASSTHROUGH_SOURCE_V6, 0)["socket_address"]}
            ],
        },
    )


def inbound_listener(ports: tuple[AppPort, ...], plan: PodMtls | None = None) -> Json:
    """With mTLS, the TLS inspector tells our ALPN (the mTLS chain) from anything else
    (plaintext, or the app's own TLS, which passes as it would without a sidecar), on
    every port but the TCP-hinted ones where plaintext is refused (``unsniffed``):
    ``strict`` and ``allow-from`` hold for the ports the pod does not declare too."""
    chains = [c for port in ports for c in _chains(port, plan)]
    filters = [original_dst()]
    extra: Json = {}
    if plan is not None:
        chains.append(_passthrough_mtls_chain(plan))
        filters.append(tls.tls_inspector((*PROXY_PORTS, *unsniffed(ports, plan))))
        extra = {
            "listener_filters_timeout": tls.TLS_INSPECTOR_TIMEOUT,
            "continue_on_listener_filters_timeout": True,
        }
    return listener(
        "inbound",
        socket_address("0.0.0.0", INBOUND_PORT),
        [*chains, *(_blackhole_chain(p) for p in PROXY_PORTS)],
        listener_filters=filters,
        default_filter_chain=passthrough_chain(plan),
        traffic_direction="INBOUND",
        **extra,
    )


def clusters(
    ports: Iterable[AppPort], tls_ports: Iterable[AppPort], checked: frozenset[int]
) -> list[Json]:
    """``checked``: the ports a tcpSocket probe is answered for."""
    return [
        *(app_cluster(p, p.number in checked) for p in ports),
        *(tls_probe_cluster(p) for p in tls_ports),
        passthrough_cluster(),
    ]
