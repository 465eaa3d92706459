"""What a pod's telemetry settings make of its sidecar: the access log it writes, and,
with a collector in the mesh config, the tracer: the collector as an upstream (over mTLS
while it answers mTLS, when the pod has mTLS), the service name its spans carry, and the
resource attributes its proxy container is given."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

from webhook.engine import upstreams
from webhook.engine.bootstrap.telemetry import Telemetry, Tracing
from webhook.engine.config import MeshConfig, UpstreamPolicy
from webhook.engine.mtls import Peer, PodMtls, service_namespace
from webhook.engine.settings import Settings

SERVICE_LABELS = ("app.kubernetes.io/name", "app")
RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
RESOURCE_VALUE = "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
"""Read by Envoy's environment resource detector; the variables are the proxy's own."""


def service_name(metadata: Mapping[str, Any]) -> str:
    """The pod's ``app.kubernetes.io/name``, else ``app`` label, else its workload's name
    (a ReplicaSet's less its pod-template-hash), else its own."""
    labels = metadata.get("labels") or {}
    for key in SERVICE_LABELS:
        if isinstance(labels.get(key), str) and labels[key]:
            return str(labels[key])
    owners = [o for o in metadata.get("ownerReferences") or [] if isinstance(o, dict)]
    if owners and isinstance(owners[0].get("name"), str):
        name = str(owners[0]["name"])
        template_hash = labels.get("pod-template-hash")
        return name.removesuffix(f"-{template_hash}") if template_hash else name
    generated = metadata.get("generateName")
    if isinstance(generated, str) and generated:
        return generated.rstrip("-")
    return str(metadata.get("name") or "unknown")


def collector(
    config: MeshConfig, namespace: str, pod_mtls: PodMtls | None
) -> upstreams.Upstream | None:
    """The collector as an upstream: OTLP is gRPC; over mTLS (else plaintext) when the pod
    has mTLS and the collector is a Service of this cluster."""
    if config.tracing.collector is None:
        return None
    found = _upstream(config.tracing.collector, config.upstream_policy)
    service_ns = service_namespace(found.host, namespace, config.cluster_domain)
    if pod_mtls is None or service_ns is None:
        return found
    who = Peer("prefix", f"spiffe://{pod_mtls.trust_domain}/ns/{service_ns}/sa/")
    return replace(found, peer=who, plaintext_fallback=True)


@lru_cache(maxsize=8)
def _upstream(address: str, policy: UpstreamPolicy) -> upstreams.Upstream:
    """Parsed once per mesh config, not per admission."""
    host, _, port = address.rpartition(":")
    return upstreams.Upstream(host, int(port), (), upstreams.GRPC, upstreams.mesh_policy(policy))


def telemetry(
    settings: Settings, config: MeshConfig, metadata: Mapping[str, Any], to: str | None
) -> Telemetry:
    """``to``: the collector's cluster, None without tracing."""
    tracing = None
    if to is not None:
        tracing = Tracing(to, settings.trace_sampling, service_name(metadata))
    logs = config.access_log
    return Telemetry(settings.access_log, logs.outbound, logs.tcp, tracing)


def proxy_env(chosen: Telemetry) -> tuple[tuple[str, str], ...]:
    """The proxy container's extra environment: the resource attributes, when traced."""
    return () if chosen.tracing is None else ((RESOURCE_ATTRIBUTES, RESOURCE_VALUE),)
