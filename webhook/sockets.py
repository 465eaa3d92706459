"""Which app ports Envoy fronts, how it speaks to each (TCP, HTTP/1.1 or HTTP/2), and
whether it reaches each over a Unix socket or TCP loopback.

This is where the app's socket paths and the env vars that tell the app about them are
decided; the bootstrap and the container patches only read the resulting ``AppPort``s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from webhook import values
from webhook.annotations import Overrides, pick, quote
from webhook.config import MeshConfig
from webhook.names import PROXY_PORTS, SUN_PATH_MAX, UDS_PATH_ENV
from webhook.pod import Container, Port

TCP, HTTP, HTTP2 = "tcp", "http", "h2"
_HTTP2_NAMES = ("http2", "grpc", "h2c")


@dataclass(frozen=True, slots=True)
class AppPort:
    container: str
    number: int
    name: str
    socket: str | None
    """Socket path Envoy connects to; None when Envoy uses 127.0.0.1:number."""
    protocol: str = TCP

    @property
    def is_http(self) -> bool:
        return self.protocol != TCP


@dataclass(frozen=True, slots=True)
class PortPlan:
    ports: tuple[AppPort, ...]
    warnings: tuple[str, ...]
    annotation_errors: tuple[str, ...]
    pod_errors: tuple[str, ...]

    def of(self, container: str, number: int) -> AppPort | None:
        return next(
            (p for p in self.ports if p.container == container and p.number == number), None
        )


@dataclass
class _Planner:
    overrides: Overrides
    config: MeshConfig
    ports: list[AppPort] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    annotation_errors: list[str] = field(default_factory=list)
    pod_errors: list[str] = field(default_factory=list)
    owners: dict[int, str] = field(default_factory=dict)
    by_path: dict[str, AppPort] = field(default_factory=dict)
    matched: set[int | str] = field(default_factory=set)

    def intercepted(self, number: int) -> bool:
        include = pick(self.overrides.include_inbound_ports, self.config.include_inbound_ports)
        exclude = pick(self.overrides.exclude_inbound_ports, self.config.exclude_inbound_ports)
        return (include == values.ALL or number in include) and number not in exclude

    def protocol(self, port: Port) -> str:
        listed = self.overrides.http_ports or ()
        self.matched.update({port.number, port.name} & set(listed))
        if port.name.startswith(_HTTP2_NAMES):
            return HTTP2
        if port.name.startswith("http") or {port.number, port.name} & set(listed):
            return HTTP
        return TCP

    def socket(self, container: Container, port: Port) -> str | None:
        refs = self.overrides.uds_ports
        self.matched.update({port.number, port.name} & set(refs or ()))
        uds = pick(self.overrides.upstream, self.config.upstream) == "uds"
        if not uds or (refs is not None and not {port.number, port.name} & set(refs)):
            return None
        template = self.overrides.uds_path or self.config.uds_path
        path = template.format(container=container.name, port=port.number)
        problem = _socket_problem(path, self.by_path)
        if problem:
            from_annotation = "proxy.io/uds-path" in self.overrides.raw
            source = "annotation proxy.io/uds-path" if from_annotation else "mesh config udsPath"
            errors = self.annotation_errors if from_annotation else self.pod_errors
            errors.append(
                f"{source}: {quote(template)} gives {quote(path)} for container "
                f"{container.name} port {port.number}, {problem}"
            )
        return path

    def add(self, container: Container, port: Port) -> None:
        if port.protocol != "TCP":
            return
        if port.number in PROXY_PORTS:
            self.pod_errors.append(
                f"container {container.name} declares port {port.number}, which the proxy "
                f"uses ({', '.join(map(str, PROXY_PORTS))})"
            )
            return
        owner = self.owners.setdefault(port.number, container.name)
        if owner != container.name:
            self.warnings.append(
                f"port {port.number} is declared by containers {owner} and "
                f"{container.name}; inbound traffic goes to {owner}"
            )
            return
        if not self.intercepted(port.number):
            return
        app_port = AppPort(
            container.name,
            port.number,
            port.name,
            self.socket(container, port),
            self.protocol(port),
        )
        if app_port.socket:
            self.by_path[app_port.socket] = app_port
        self.ports.append(app_port)

    def unmatched(self, key: str, refs: tuple[int | str, ...] | None) -> None:
        for ref in refs or ():
            if ref not in self.matched:
                self.annotation_errors.append(
                    f"annotation {key}: {quote(str(ref))} names no TCP container port that "
                    "Envoy intercepts; accepted: comma-separated container port numbers or names"
                )


def plan(containers: Iterable[Container], overrides: Overrides, config: MeshConfig) -> PortPlan:
    planner = _Planner(overrides, config)
    for container in containers:
        for port in container.ports:
            planner.add(container, port)
    planner.unmatched("proxy.io/uds-ports", overrides.uds_ports)
    planner.unmatched("proxy.io/http-ports", overrides.http_ports)
    return PortPlan(
        tuple(planner.ports),
        tuple(planner.warnings),
        tuple(planner.annotation_errors),
        tuple(planner.pod_errors),
    )


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
