"""The static Envoy bootstrap of an injected pod, built from the engine's ``SidecarPlan``.

There is no control plane: this document is all the sidecar ever knows. It travels in the
proxy container's args as JSON (``--config-yaml`` takes JSON, a subset of YAML).

Where things are: ``inbound`` (the app's clusters and the 15006 listener), ``outbound``
(15001, egress socket, declared upstreams), ``health`` (15021 readiness and probes, 15090
metrics), ``stats`` (which stats are kept), ``tls`` (SDS, TLS contexts, RBAC); running a
bootstrap outside a pod is the tests' ``tests/remap.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import orjson

from webhook.engine.bootstrap import health, inbound, outbound, telemetry
from webhook.engine.bootstrap.objects import (
    ADMIN_CLUSTER,
    Json,
    also_ipv6,
    pipe_address,
    static_cluster,
)
from webhook.engine.bootstrap.stats import stats_config
from webhook.engine.config import UpstreamPolicy
from webhook.engine.mtls import PodMtls
from webhook.engine.names import ADMIN_SOCKET
from webhook.engine.probes import ProbeRoute
from webhook.engine.sockets import AppPort
from webhook.engine.upstreams import Upstream

ADMIN_SOCKET_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarPlan:
    """Keyword-only: a field given by position was once lost on its way here (dualStack)."""

    ports: tuple[AppPort, ...]
    probes: tuple[ProbeRoute, ...]
    upstreams: tuple[Upstream, ...]
    policy: UpstreamPolicy
    outbound_socket: str | None
    """Egress Unix socket path, when proxy.io/outbound-uds is on."""
    dual_stack: bool = True
    """Mesh config dualStack: each listener also on [::]."""
    mtls: PodMtls | None = None
    drain_hook: bool = False
    """A regular proxy container's preStop hook drains it through :15021/drain."""
    declared_only: bool = False
    """Outbound policy declared-only: what proxy.io/upstreams does not declare is refused."""
    telemetry: telemetry.Telemetry = telemetry.DEFAULT
    collector: Upstream | None = None
    """The tracing collector, when it is not a declared upstream already."""


def build(plan: SidecarPlan) -> Json:
    socket_ports = tuple(p for p in plan.ports if p.socket)
    tls_ports = {p.port.number: p.port for p in plan.probes if p.tls}
    checked = frozenset(p.port.number for p in plan.probes if p.connect_only)
    listeners = [
        health.readiness_listener(
            plan.ports, socket_ports, plan.probes, plan.mtls, plan.upstreams, plan.drain_hook
        ),
        health.prometheus_listener(),
        inbound.inbound_listener(plan.ports, plan.mtls),
        outbound.outbound_listener(plan.upstreams, plan.policy, plan.declared_only),
    ]
    egress = []  # the socket has no IPv6 twin
    if plan.outbound_socket:
        egress.append(
            outbound.outbound_uds_listener(
                plan.outbound_socket, plan.upstreams, plan.policy, plan.declared_only
            )
        )
    telemetry.apply([*listeners, *egress], plan.telemetry)
    if plan.dual_stack:
        listeners = [also_ipv6(item) for item in listeners]
    listeners += egress
    return {
        # Only the proxy's UID may open the socket; its volume is mounted in the proxy only.
        "admin": {"address": pipe_address(ADMIN_SOCKET, ADMIN_SOCKET_MODE)},
        "stats_config": stats_config(),
        "deferred_stat_options": {"enable_deferred_creation_stats": True},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                static_cluster(ADMIN_CLUSTER, pipe_address(ADMIN_SOCKET)),
                *inbound.clusters(plan.ports, tls_ports.values(), checked),
                *outbound.clusters(
                    plan.upstreams, plan.policy, bool(plan.outbound_socket), plan.declared_only
                ),
                *(
                    [outbound.upstream_cluster(plan.collector, plan.policy)]
                    if plan.collector
                    else []
                ),
            ],
        },
    }


def encode(bootstrap: Json) -> str:
    return orjson.dumps(bootstrap).decode()


@lru_cache(maxsize=512)
def encoded(plan: SidecarPlan) -> str:
    """The bootstrap as the proxy's argument. Pods of one Deployment share a plan, so a
    scale-up builds it once (a SidecarPlan is immutable and hashable; at most ~5 MB held)."""
    return encode(build(plan))


# What the smallest of each item adds to the encoded bootstrap, rounded down (the
# tests measure them): enough to refuse a pod that cannot fit before building anything.
LEAST_BYTES = 6000
LEAST_BYTES_PER_PORT = 450
LEAST_BYTES_PER_PROBE = 250
LEAST_BYTES_PER_UPSTREAM = 650


def least_size(ports: int, probes: int, upstreams: int) -> int:
    """A lower bound on the size of the encoded bootstrap of a plan with these counts."""
    return (
        LEAST_BYTES
        + ports * LEAST_BYTES_PER_PORT
        + probes * LEAST_BYTES_PER_PROBE
        + upstreams * LEAST_BYTES_PER_UPSTREAM
    )
