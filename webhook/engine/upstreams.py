"""Declared dependencies (``proxy.io/upstreams``): the names the app may use for each, so
Envoy can tell their traffic apart without a control plane."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from webhook.engine.mtls import Peer


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int
    domains: tuple[str, ...]
    """Host headers (with and without namespace, svc and cluster domain) that mean it."""
    peer: Peer | None = None
    """mTLS: who the upstream must prove to be; None calls it in plaintext."""
    plaintext_fallback: bool = False
    """permissive, identity not pinned: plaintext while the upstream does not answer mTLS.
    A pinned identity says the upstream is meshed: mTLS only, whatever the pod's mode."""

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.host}"


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


def resolve(
    declared: tuple[tuple[str, int], ...], namespace: str, cluster_domain: str
) -> tuple[tuple[Upstream, ...], tuple[str, ...]]:
    """Upstreams with their Host-header domains; a name that means the same service as an
    earlier one (``ratings`` and ``ratings.shop`` in namespace shop) is dropped with a warning."""
    taken: dict[str, str] = {}
    result: list[Upstream] = []
    warnings: list[str] = []
    for host, port in declared:
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
        result.append(Upstream(host, port, tuple(domains)))
    return tuple(result), tuple(warnings)
