"""Which app ports Envoy fronts, how it speaks to each (TCP, HTTP/1.1 or HTTP/2), and
whether it reaches each over a Unix socket or TCP loopback.

This is where the app's socket paths and the env vars that tell the app about them are
decided; the bootstrap and the container patches only read the resulting ``AppPort``s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from webhook.engine import values
from webhook.engine.annotations import Overrides
from webhook.engine.names import PROXY_PORTS, SHM_MOUNT_PATH, SUN_PATH_MAX, UDS_PATH_ENV
from webhook.engine.pod import Container, Port
from webhook.engine.settings import Settings
from webhook.engine.values import quote

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
    tcp_fallback: bool = False
    """Auto mode: 127.0.0.1:number whenever nothing listens on the socket."""
    tcp_hinted: bool = False
    """Hinted as TCP (proxy.io/tcp-ports, or named tcp or tcp-*): its clients may wait
    for the server to speak first, so its connections are never held to sniff them
    where the mTLS mode does not need it."""

    @property
    def is_http(self) -> bool:
        return self.protocol != TCP


@dataclass(frozen=True, slots=True)
class AppPorts:
    ports: tuple[AppPort, ...]
    warnings: tuple[str, ...]
    annotation_errors: tuple[str, ...]
    pod_errors: tuple[str, ...]
    by_key: dict[tuple[str, int], AppPort]
    sockets: dict[str, list[AppPort]]
    """Each container's ports that Envoy reaches over a socket, in order."""

    def of(self, container: str, number: int) -> AppPort | None:
        return self.by_key.get((container, number))

    def env_for(self, container: str) -> list[dict[str, str]]:
        """Env vars telling one app container where to listen: the first port, then each."""
        own = self.sockets.get(container)
        if not own:
            return []
        env = [{"name": UDS_PATH_ENV, "value": own[0].socket or ""}]
        env += [{"name": f"{UDS_PATH_ENV}_{p.number}", "value": p.socket or ""} for p in own]
        return env


@dataclass
class _Planner:
    overrides: Overrides
    settings: Settings
    ports: list[AppPort] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    annotation_errors: list[str] = field(default_factory=list)
    pod_errors: list[str] = field(default_factory=list)
    owners: dict[int, str] = field(default_factory=dict)
    by_path: dict[str, AppPort] = field(default_factory=dict)
    matched: set[int | str] = field(default_factory=set)
    # The annotations' lists as sets, made once: a pod may have tens of thousands of ports.
    include: frozenset[int] | None = None
    """None: every port."""
    exclude: frozenset[int] = frozenset()
    http_refs: frozenset[int | str] = frozenset()
    tcp_refs: frozenset[int | str] = frozenset()
    uds_refs: frozenset[int | str] | None = None
    """None: every port."""
    mode: str = "auto"
    socket_root: str = SHM_MOUNT_PATH
    """Where sockets live: the template's /dev/shm/ stands for it (proxy.io/shm: host)."""

    def __post_init__(self) -> None:
        self.include, self.exclude = _inbound(self.settings)
        self.http_refs = frozenset(self.overrides.http_ports or ())
        self.tcp_refs = frozenset(self.overrides.tcp_ports or ())
        refs = self.overrides.uds_ports
        self.uds_refs = None if refs is None else frozenset(refs)
        self.mode = self.settings.upstream

    def intercepted(self, number: int) -> bool:
        return (self.include is None or number in self.include) and number not in self.exclude

    def protocol(self, port: Port) -> str:
        named = {port.number, port.name} & self.http_refs
        self.matched.update(named)
        if port.name.startswith(_HTTP2_NAMES):
            return HTTP2
        if port.name.startswith("http") or named:
            return HTTP
        return TCP

    def tcp_hinted(self, port: Port, protocol: str) -> bool:
        named = {port.number, port.name} & self.tcp_refs
        self.matched.update(named)
        if named and protocol != TCP:
            self.annotation_errors.append(
                f"annotation proxy.io/tcp-ports: port {port.number} ({port.name or 'unnamed'}) "
                "is HTTP (proxy.io/http-ports, or its name); a port is either"
            )
        return protocol == TCP and (
            bool(named) or port.name == "tcp" or port.name.startswith("tcp-")
        )

    def socket(self, container: Container, port: Port) -> str | None:
        named = {port.number, port.name} & (self.uds_refs or frozenset())
        self.matched.update(named)
        if self.mode == "tcp" or (self.uds_refs is not None and not named):
            return None
        template = self.settings.uds_path
        path = relocate(
            template.format(container=container.name, port=port.number), self.socket_root
        )
        problem = _socket_problem(path, self.by_path)
        if problem:
            from_annotation = "proxy.io/uds-path" in self.overrides.raw
            source = "annotation proxy.io/uds-path" if from_annotation else "mesh config udsPath"
            if self.socket_root != SHM_MOUNT_PATH:
                source += " under mesh config socketDir"
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
        socket = self.socket(container, port)
        protocol = self.protocol(port)
        app_port = AppPort(
            container.name,
            port.number,
            port.name,
            socket,
            protocol,
            tcp_fallback=bool(socket) and self.mode == "auto",
            tcp_hinted=self.tcp_hinted(port, protocol),
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


def _inbound(settings: Settings) -> tuple[frozenset[int] | None, frozenset[int]]:
    """The inbound ports intercepted (None: every one) and those excluded."""
    include, exclude = settings.include_inbound_ports, settings.exclude_inbound_ports
    return (None if include == values.ALL else frozenset(include)), frozenset(exclude)


def least_ports(containers: Iterable[Container], settings: Settings) -> int:
    """How many ports ``plan`` will hold at the least: one per intercepted port number."""
    include, exclude = _inbound(settings)
    numbers = {port.number for container in containers for port in container.ports}
    numbers.difference_update(PROXY_PORTS, exclude)
    if include is not None:
        numbers.intersection_update(include)
    return len(numbers)


def app_ports(
    containers: Iterable[Container],
    overrides: Overrides,
    settings: Settings,
    socket_root: str = SHM_MOUNT_PATH,
) -> AppPorts:
    """``overrides``: for the annotations only a pod sets (uds-ports, http-ports) and for
    naming where a socket path template came from."""
    planner = _Planner(overrides, settings, socket_root=socket_root)
    for container in containers:
        for port in container.ports:
            planner.add(container, port)
    planner.unmatched("proxy.io/uds-ports", overrides.uds_ports)
    planner.unmatched("proxy.io/http-ports", overrides.http_ports)
    planner.unmatched("proxy.io/tcp-ports", overrides.tcp_ports)
    by_key = {(p.container, p.number): p for p in planner.ports}
    sockets: dict[str, list[AppPort]] = {}
    for port in planner.ports:
        if port.socket:
            sockets.setdefault(port.container, []).append(port)
    return AppPorts(
        tuple(planner.ports),
        tuple(planner.warnings),
        tuple(planner.annotation_errors),
        tuple(planner.pod_errors),
        by_key,
        sockets,
    )


def relocate(path: str, root: str) -> str:
    """A socket path under /dev/shm (where the udsPath template puts it) under ``root``
    instead: the pod's socket directory when its /dev/shm is the node's."""
    return path if root == SHM_MOUNT_PATH else root + path[len(SHM_MOUNT_PATH) :]


def _socket_problem(socket: str, taken: dict[str, AppPort]) -> str | None:
    if len(socket.encode()) > SUN_PATH_MAX:
        return f"which is longer than the {SUN_PATH_MAX} bytes a socket path may have"
    if socket in taken:
        other = taken[socket]
        return f"the same path as container {other.container} port {other.number}"
    return None
