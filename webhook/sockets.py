"""Which app ports Envoy fronts, and whether it reaches each over a Unix socket or TCP.

This is where the app's socket paths and the env vars that tell the app about them are
decided; the bootstrap and the container patches only read the resulting ``AppPort``s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from webhook import values
from webhook.annotations import Overrides, quote
from webhook.config import MeshConfig
from webhook.names import PROXY_PORTS, SUN_PATH_MAX, UDS_PATH_ENV
from webhook.pod import Container


@dataclass(frozen=True, slots=True)
class AppPort:
    container: str
    number: int
    name: str
    socket: str | None
    """Socket path Envoy connects to; None when Envoy uses 127.0.0.1:number."""


@dataclass(frozen=True, slots=True)
class PortPlan:
    ports: tuple[AppPort, ...]
    warnings: tuple[str, ...]
    annotation_errors: tuple[str, ...]
    pod_errors: tuple[str, ...]


def _intercepted(number: int, overrides: Overrides, config: MeshConfig) -> bool:
    include = (
        config.include_inbound_ports
        if overrides.include_inbound_ports is None
        else overrides.include_inbound_ports
    )
    exclude = (
        config.exclude_inbound_ports
        if overrides.exclude_inbound_ports is None
        else overrides.exclude_inbound_ports
    )
    return (include == values.ALL or number in include) and number not in exclude


def _source(key: str, overrides: Overrides, config_field: str) -> str:
    return f"annotation {key}" if key in overrides.raw else f"mesh config {config_field}"


def plan(containers: Iterable[Container], overrides: Overrides, config: MeshConfig) -> PortPlan:
    uds = (overrides.upstream or config.upstream) == "uds"
    template = overrides.uds_path or config.uds_path
    refs = overrides.uds_ports
    owners: dict[int, str] = {}
    by_path: dict[str, AppPort] = {}
    ports: list[AppPort] = []
    warnings: list[str] = []
    annotation_errors: list[str] = []
    pod_errors: list[str] = []
    matched: set[int | str] = set()
    for container in containers:
        for port in container.ports:
            if port.protocol != "TCP":
                continue
            if port.number in PROXY_PORTS:
                pod_errors.append(
                    f"container {container.name} declares port {port.number}, "
                    f"which the proxy uses ({', '.join(map(str, PROXY_PORTS))})"
                )
                continue
            if port.number in owners:
                warnings.append(
                    f"port {port.number} is declared by containers "
                    f"{owners[port.number]} and {container.name}; inbound traffic "
                    f"goes to {owners[port.number]}"
                )
                continue
            owners[port.number] = container.name
            if not _intercepted(port.number, overrides, config):
                continue
            wanted = refs is None or bool({port.number, port.name} & set(refs))
            matched.update({port.number, port.name} & set(refs or ()))
            socket = None
            if uds and wanted:
                socket = template.format(container=container.name, port=port.number)
                problem = _socket_problem(socket, by_path)
                if problem:
                    source = _source("proxy.io/uds-path", overrides, "udsPath")
                    errors = annotation_errors if source.startswith("annotation") else pod_errors
                    errors.append(
                        f"{source}: {quote(template)} gives {quote(socket)} for "
                        f"container {container.name} port {port.number}, {problem}"
                    )
                    continue
            app_port = AppPort(container.name, port.number, port.name, socket)
            if socket:
                by_path[socket] = app_port
            ports.append(app_port)
    for ref in refs or ():
        if ref not in matched:
            annotation_errors.append(
                f"annotation proxy.io/uds-ports: {quote(str(ref))} names no TCP "
                "container port that Envoy intercepts; accepted: comma-separated "
                "container port numbers or names"
            )
    return PortPlan(tuple(ports), tuple(warnings), tuple(annotation_errors), tuple(pod_errors))


def _socket_problem(socket: str, taken: dict[str, AppPort]) -> str | None:
    if len(socket.encode()) > SUN_PATH_MAX:
        return f"which is longer than the {SUN_PATH_MAX} bytes a socket path may have"
    if socket in taken:
        other = taken[socket]
        return f"the same path as container {other.container} port {other.number}"
    return None


def env_for(container: str, ports: Iterable[AppPort]) -> list[dict[str, str]]:
    """Env vars telling one app container where to listen: the first port, then each."""
    own = [p for p in ports if p.container == container and p.socket]
    if not own:
        return []
    env = [{"name": UDS_PATH_ENV, "value": own[0].socket or ""}]
    env += [{"name": f"{UDS_PATH_ENV}_{p.number}", "value": p.socket or ""} for p in own]
    return env
