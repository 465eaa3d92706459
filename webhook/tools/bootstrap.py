"""``bootstrap``: the Envoy bootstrap of an injected pod (or of the pod the webhook would
make of it), readable: a summary of its listeners and clusters, then the whole of it as
YAML, instead of the one-line JSON argument ``kubectl get pod -o yaml`` shows."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import yaml

from webhook import engine
from webhook.engine.config import MeshConfig
from webhook.engine.names import PROXY_CONTAINER
from webhook.tools.offline import plan_lines
from webhook.tools.workloads import Template


class NoBootstrap(ValueError):
    pass


def _proxy_args(pod: dict[str, Any]) -> list[str] | None:
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict) and container.get("name") == PROXY_CONTAINER:
                args = container.get("args")
                return args if isinstance(args, list) else None
    return None


def plan(template: Template, config: MeshConfig, namespace: str) -> dict[str, Any] | None:
    """The engine's plan for a template not injected yet (None for one that is)."""
    decided = engine.plan(template.as_created(), namespace, config)
    return decided.summary() if isinstance(decided, engine.Plan) else None


def of(template: Template, config: MeshConfig, namespace: str) -> dict[str, Any]:
    """The bootstrap of ``template``'s proxy: its own when it is injected already, else the
    one the webhook would give it. Raises NoBootstrap saying why there is none."""
    pod = template.as_created()
    args = _proxy_args(pod)
    if args is None:
        result = engine.inject_or_deny(pod, namespace, config)
        if result.outcome != engine.Outcome.INJECT:
            raise NoBootstrap(f"not injected: {result.reason.code}: {result.message}")
        args = _proxy_args(jsonpatch.apply_patch(pod, list(result.patch))) or []
    if "--config-yaml" not in args[:-1]:
        raise NoBootstrap("its proxy container has no --config-yaml bootstrap")
    try:
        return json.loads(args[args.index("--config-yaml") + 1])
    except ValueError as exc:
        raise NoBootstrap(f"its bootstrap is not JSON: {exc}") from None


def _address(address: dict[str, Any]) -> str:
    if "pipe" in address:
        return address["pipe"]["path"]
    socket = address.get("socket_address", {})
    return f"{socket.get('address')}:{socket.get('port_value')}"


def _clusters_of(chain: dict[str, Any]) -> str:
    """Where a filter chain sends its traffic: a TCP proxy's cluster, or each HTTP route's
    (``refused`` for a 502 answered by the proxy, declared-only)."""
    found = []
    for network_filter in chain.get("filters", []):
        config = network_filter.get("typed_config", {})
        if "cluster" in config:
            return f"{config['cluster']} (tcp)"
        for host in config.get("route_config", {}).get("virtual_hosts", []):
            for route in host.get("routes", []):
                if "cluster" in route.get("route", {}):
                    found.append(f"{route['route']['cluster']} (http)")
                elif "direct_response" in route and host.get("name") == "refused":
                    found.append("refused (http 502)")
    return ", ".join(found) or "?"


def _sniffed(chain: dict[str, Any]) -> str:
    protocols = chain.get("filter_chain_match", {}).get("application_protocols")
    return " if sniffed as HTTP" if protocols and "h2c" in protocols else ""


def summary(bootstrap: dict[str, Any]) -> list[str]:
    """A line per listener and per cluster, with where each listens or sends."""
    resources = bootstrap.get("static_resources", {})
    lines = ["listeners:"]
    for listener in resources.get("listeners", []):
        lines.append(f"  {listener['name']}: {_address(listener['address'])}")
        for chain in listener.get("filter_chains", []):
            port = chain.get("filter_chain_match", {}).get("destination_port")
            if port is not None:
                lines.append(f"    port {port}{_sniffed(chain)} -> {_clusters_of(chain)}")
        default = listener.get("default_filter_chain")
        if default:
            lines.append(f"    any other -> {_clusters_of(default)}")
    lines.append("clusters:")
    for cluster in resources.get("clusters", []):
        endpoints = [
            f"{_address(lb['endpoint']['address'])}"
            + (f" (priority {group['priority']})" if group.get("priority") else "")
            for group in cluster.get("load_assignment", {}).get("endpoints", [])
            for lb in group.get("lb_endpoints", [])
        ]
        target = ", ".join(endpoints) or cluster.get("type", "").lower()
        lines.append(f"  {cluster['name']}: {target}")
    return lines


def text(bootstrap: dict[str, Any], planned: dict[str, Any] | None = None) -> str:
    lines = [f"plan: {line}" for line in plan_lines(planned)] if planned else []
    head = "".join(f"# {line}\n" for line in [*lines, *summary(bootstrap)])
    return head + yaml.safe_dump(bootstrap, sort_keys=False, width=100)
