"""``check``'s look at where injected pods send their traffic: declared upstreams whose
names mean one address (a ClusterIP Service: kube-proxy balances per connection, so the
sidecar's per-request balancing has one host to choose from), and sidecars refusing
egress right now (``declared-only`` pods whose ``envoy_outbound_refused`` is moving)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from webhook.engine import values
from webhook.engine.mtls import service_namespace
from webhook.engine.names import PROMETHEUS_PATH, PROMETHEUS_PORT, STATUS_KEY
from webhook.tools.reading import Reader, Result, injection_status

Pods = Iterable[tuple[str, dict[str, Any]]]
"""(namespace, pod) of the injected pods check looks at."""
_REFUSED = re.compile(r'^envoy_outbound_refused\{port="([^"]+)"\} (\d+)', re.MULTILINE)


def _annotations(pod: dict[str, Any]) -> dict[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _declared(pod: dict[str, Any]) -> list[tuple[str, int]]:
    try:
        return [(host, port) for host, port, _ in values.upstreams(_annotations(pod).get(
            "proxy.io/upstreams", ""))]  # fmt: skip
    except ValueError:
        return []  # denied at admission; the pod cannot have this sidecar


def _addressing(reader: Reader, namespace: str, name: str) -> str:
    """``headless``, ``one address``, ``external`` or ``missing``."""
    service = reader.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    if service is None:
        return "missing"
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return "external"
    return "headless" if spec.get("clusterIP") == "None" else "one address"


def balancing(reader: Reader, pods: Pods, cluster_domain: str) -> Result:
    """Each declared upstream that is a Service of the cluster, by how its name resolves.
    Advisory: a ClusterIP Service works; its requests are only not balanced per request."""
    name = "declared upstreams resolve to every pod (per-request balancing)"
    seen: dict[tuple[str, str, int], str] = {}
    for namespace, pod in pods:
        for host, port in _declared(pod):
            service_ns = service_namespace(host, namespace, cluster_domain)
            key = (service_ns or "", host.split(".")[0], port)
            if service_ns is not None and key not in seen:
                seen[key] = _addressing(reader, service_ns, key[1])
    single = [k for k, way in seen.items() if way == "one address"]
    items = [
        f"{ns}/{service}:{port}: a ClusterIP Service, one address (kube-proxy picks a pod per "
        f"connection); add a headless Service beside it (clusterIP: None) and declare that"
        for ns, service, port in single
    ]
    items += [f"{ns}/{svc}:{port}: no such Service" for (ns, svc, port), way in seen.items()
              if way == "missing"]  # fmt: skip
    headless = sum(way == "headless" for way in seen.values())
    return Result(name, True, f"{headless} of {len(seen)} resolve to every pod", items=items)


def _refused(text: str | None) -> dict[str, int] | None:
    if text is None:
        return None
    return {port: int(count) for port, count in _REFUSED.findall(text)}


def refused_egress(
    reader: Reader, pods: Pods, seconds: float, sleep: Callable[[float], None] = time.sleep
) -> Result:
    """Two reads of each declared-only pod's refused-egress counters, ``seconds`` apart."""
    name = "no sidecar is refusing egress now (declared-only pods)"
    locked = [
        (ns, (pod.get("metadata") or {}).get("name", ""))
        for ns, pod in pods
        if injection_status(_annotations(pod).get(STATUS_KEY, "")).get("outboundPolicy")
        == "declared-only"
    ]
    if not locked:
        return Result(name, True, "no pod has outbound policy declared-only")

    def read(ns: str, pod: str) -> dict[str, int] | None:
        return _refused(reader.pod_port(ns, pod, PROMETHEUS_PORT, PROMETHEUS_PATH))

    first = {key: read(*key) for key in locked}
    sleep(seconds)
    items = []
    for key, before in first.items():
        after = read(*key)
        if before is None or after is None:
            items.append(f"{key[0]}/{key[1]}: its proxy did not answer on :{PROMETHEUS_PORT}")
            continue
        moved = {p: n - before.get(p, 0) for p, n in after.items() if n > before.get(p, 0)}
        items += [
            f"{key[0]}/{key[1]}: port {port}: {count} refused in {seconds:g}s"
            for port, count in sorted(moved.items())
        ]
    if items:
        hint = (
            "the app calls something its proxy.io/upstreams does not declare: declare it, "
            "exclude it (proxy.io/exclude-outbound-ports or -ip-ranges), or fix the app"
        )
        return Result(name, False, f"{len(locked)} declared-only pod(s)", hint, items)
    return Result(name, True, f"{len(locked)} declared-only pod(s), none refusing")
