"""Declared dependencies (``proxy.io/upstreams``): the names the app may use for each, its
protocol, and the policy each is called with (the mesh config's ``upstreamPolicy``, each
field overridden per upstream by a ``proxy.io/upstream-*`` annotation), so Envoy can tell
their traffic apart and treat each its own way without a control plane."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

from webhook.engine.annotations import ANNOTATIONS, Overrides
from webhook.engine.config import UpstreamPolicy

if TYPE_CHECKING:
    from webhook.engine.mtls import Peer

HTTP, GRPC, TCP = "http", "grpc", "tcp"


@dataclass(frozen=True, slots=True)
class Policy:
    """What can differ from one upstream to the next (the rest is the mesh config's)."""

    request_timeout: float
    """Seconds a request may take, retries included; 0: no limit."""
    per_try_timeout: float
    retries: int
    """Per request: how many times it is retried."""
    max_connections: int
    max_pending_requests: int
    max_requests: int


PER_UPSTREAM: tuple[tuple[str, str], ...] = (
    ("upstream_timeouts", "request_timeout"),
    ("upstream_per_try_timeouts", "per_try_timeout"),
    ("upstream_retries", "retries"),
    ("upstream_max_connections", "max_connections"),
    ("upstream_max_pending_requests", "max_pending_requests"),
    ("upstream_max_requests", "max_requests"),
)
"""Each per-upstream annotation (its Overrides field; its key is the annotation table's)
and the Policy field it overrides."""
_KEYS = {annotation.attr: annotation.key for annotation in ANNOTATIONS}


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int
    domains: tuple[str, ...]
    """Host headers (with and without namespace, svc and cluster domain) that mean it."""
    protocol: str | None
    """http, grpc, tcp, or None: sniffed (HTTP if it looks like it, else TCP)."""
    policy: Policy
    peer: Peer | None = None
    """mTLS: who the upstream must prove to be; None calls it in plaintext."""
    plaintext_fallback: bool = False
    """permissive, identity not pinned: plaintext while the upstream does not answer mTLS.
    A pinned identity says the upstream is meshed: mTLS only, whatever the pod's mode."""

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.host}"

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_tcp(self) -> bool:
        return self.protocol == TCP


@dataclass(frozen=True, slots=True)
class Resolved:
    upstreams: tuple[Upstream, ...]
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _names(host: str, namespace: str, cluster_domain: str) -> list[str]:
    labels = host.split(".")
    if len(labels) == 1:
        service = f"{host}.{namespace}"
        return [host, service, f"{service}.svc", f"{service}.svc.{cluster_domain}"]
    if len(labels) == 2:
        return [host, f"{host}.svc", f"{host}.svc.{cluster_domain}"]
    if len(labels) == 3 and labels[2] == "svc":
        return [host, f"{host}.{cluster_domain}"]
    return [host]


@lru_cache(maxsize=8)
def mesh_policy(policy: UpstreamPolicy) -> Policy:
    """The mesh config's values of every field an annotation can override."""
    return Policy(**{field: getattr(policy, field) for _, field in PER_UPSTREAM})


def _policies(
    overrides: Overrides, declared: set[tuple[str, int]], default: Policy
) -> tuple[dict[tuple[str, int], Policy], list[str]]:
    """Each upstream's policy where an annotation changes it; errors for entries that name
    no declared upstream."""
    changed: dict[tuple[str, int], dict[str, object]] = {}
    errors = []
    for attr, policy_field in PER_UPSTREAM:
        for target, value in getattr(overrides, attr) or ():
            if target not in declared:
                errors.append(
                    f"annotation {_KEYS[attr]}: {target[0]}:{target[1]} is not in "
                    "proxy.io/upstreams"
                )
                continue
            changed.setdefault(target, {})[policy_field] = value
    policies = {target: replace(default, **fields) for target, fields in changed.items()}
    return policies, errors


def by_port(upstreams: Iterable[Upstream]) -> dict[int, list[Upstream]]:
    """The upstreams on each port, ports in order."""
    ports: dict[int, list[Upstream]] = {}
    for upstream in upstreams:
        ports.setdefault(upstream.port, []).append(upstream)
    return dict(sorted(ports.items()))


def _port_clashes(upstreams: Iterable[Upstream]) -> list[str]:
    """A TCP upstream is known only by the port the app connects to: it must have the port
    to itself (the address, a ClusterIP, is not known at admission)."""
    errors = []
    for port, sharing in by_port(upstreams).items():
        tcp = [u for u in sharing if u.is_tcp]
        if tcp and len(sharing) > 1:
            others = ", ".join(u.name for u in sharing if u is not tcp[0])
            errors.append(
                f"annotation proxy.io/upstreams: {tcp[0].name}/tcp shares port {port} with "
                f"{others}: a TCP upstream is told apart only by its port, so it needs the port "
                "to itself (leave the others out, or call them on another port)"
            )
    return errors


def resolve(
    overrides: Overrides, namespace: str, cluster_domain: str, policy: UpstreamPolicy
) -> Resolved:
    """Upstreams with their Host-header domains and policies; a name that means the same
    service as an earlier one (``ratings`` and ``ratings.shop`` in namespace shop) is
    dropped with a warning."""
    declared = overrides.upstreams or ()
    if not declared:
        return Resolved(())
    default = mesh_policy(policy)
    policies, errors = _policies(overrides, {(h, p) for h, p, _ in declared}, default)
    taken: dict[str, str] = {}
    result: list[Upstream] = []
    warnings: list[str] = []
    for host, port, protocol in declared:
        domains = []
        for name in _names(host, namespace, cluster_domain):
            domains.append(f"{name}:{port}")
            if port == 80:
                domains.append(name)
        clash = next((taken[d] for d in domains if d in taken), None)
        if clash:
            warnings.append(f"proxy.io/upstreams: {host}:{port} is the same service as {clash}")
            continue
        taken.update((d, f"{host}:{port}") for d in domains)
        chosen = policies.get((host, port), default)
        result.append(Upstream(host, port, tuple(domains), protocol, chosen))
    errors += _port_clashes(result)
    return Resolved(tuple(result), tuple(errors), tuple(warnings))


def _transport(upstream: Upstream) -> str:
    if upstream.peer is None:
        return "plaintext"
    return "mtls, else plaintext" if upstream.plaintext_fallback else "mtls"


def summary(upstream: Upstream) -> dict[str, object]:
    """One upstream's effective protocol, transport and policy, for ``explain`` and
    ``bootstrap``; HTTP-only settings are left out for TCP upstreams."""
    chosen = upstream.policy
    shown: dict[str, object] = {
        "upstream": upstream.name,
        "protocol": upstream.protocol or "sniffed",
        "transport": _transport(upstream),
        "maxConnections": chosen.max_connections,
    }
    if not upstream.is_tcp:
        shown |= {
            "timeout": chosen.request_timeout,
            "perTryTimeout": chosen.per_try_timeout,
            "retries": chosen.retries,
            "maxPendingRequests": chosen.max_pending_requests,
            "maxRequests": chosen.max_requests,
        }
    return shown
