"""Kubelet probes of app ports that now listen on a Unix socket, or refuse plaintext.

The kubelet can only probe TCP, so each ``httpGet`` or ``tcpSocket`` probe on a socket port
becomes an ``httpGet`` on the proxy's port 15021 at ``/app-health/<container>/<kind>``,
which Envoy forwards to the app's socket (or, for ``tcpSocket``, answers from a connect
check of it). Probes on ports that stay TCP are left alone, unless mTLS refuses plaintext
there: then every probe of an intercepted port goes the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from webhook.engine.names import READINESS_PORT
from webhook.engine.pod import Container, objects, text
from webhook.engine.sockets import AppPort, AppPorts

KIND_PATHS = {"livenessProbe": "livez", "readinessProbe": "readyz", "startupProbe": "startupz"}
_HANDLERS = ("httpGet", "tcpSocket", "grpc", "exec")


@dataclass(frozen=True, slots=True)
class ProbeRoute:
    path: str
    """Path on the proxy's readiness port the rewritten probe asks for."""
    port: AppPort
    connect_only: bool = False
    original_path: str = "/"
    tls: bool = False
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The probe's handlers other than httpGet are removed and httpGet is set; the rest of
    the probe (timings, thresholds) stays where it is, never copied into the patch."""

    container_index: int
    kind: str
    removed: tuple[str, ...]
    http_get: dict[str, Any]


@dataclass
class ProbeChanges:
    routes: list[ProbeRoute] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _port_number(container: Container, port: Any) -> int | None:
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    if isinstance(port, str):
        return next((p.number for p in container.ports if p.name == port), None)
    return None


def _route(path: str, port: AppPort, handler: str, spec: dict[str, Any], where: str) -> ProbeRoute:
    """``where`` is the handler's field path, for errors about its contents."""
    if handler == "tcpSocket":
        return ProbeRoute(path, port, connect_only=True)
    listed = objects(spec, "httpHeaders", where)
    headers = tuple(
        (name, text(h, "value", f"{where}.httpHeaders[{i}]"))
        for i, h in enumerate(listed)
        if (name := text(h, "name", f"{where}.httpHeaders[{i}]"))
    )
    return ProbeRoute(
        path,
        port,
        original_path=text(spec, "path", where) or "/",
        tls=text(spec, "scheme", where, "HTTP").upper() == "HTTPS",
        headers=headers,
    )


def _rewrite(container: Container, kind: str, probe: dict[str, Any], path: str) -> Rewrite:
    removed = tuple(h for h in _HANDLERS if h in probe and h != "httpGet")
    target = {"path": path, "port": READINESS_PORT, "scheme": "HTTP"}
    return Rewrite(container.index, kind, removed, target)


def changes(
    apps: Iterable[Container], ports: AppPorts, enabled: bool, refuses_plaintext: bool = False
) -> ProbeChanges:
    """``refuses_plaintext``: mTLS refuses the kubelet's own connections to every app
    port, so every probe of one goes through 15021, not only those of socket ports."""
    result = ProbeChanges()
    for container in apps:
        for kind, probe in container.probes.items():
            handler = next((h for h in _HANDLERS if isinstance(probe.get(h), dict)), None)
            if handler in (None, "exec"):
                continue
            spec = probe[handler]
            number = _port_number(container, spec.get("port"))
            app_port = ports.of(container.name, number) if number else None
            if app_port is None or spec.get("host"):
                continue
            if app_port.socket is None and not refuses_plaintext:
                continue
            if handler == "grpc" and app_port.tcp_fallback and not refuses_plaintext:
                # Auto mode: the kubelet's gRPC check is intercepted like any traffic to
                # the port and Envoy forwards it to the app, over its socket or TCP.
                continue
            _add(result, container, kind, probe, handler, app_port, enabled, refuses_plaintext)
    return result


def _add(
    result: ProbeChanges,
    container: Container,
    kind: str,
    probe: dict[str, Any],
    handler: str,
    app_port: AppPort,
    enabled: bool,
    refuses_plaintext: bool,
) -> None:
    where = f"container {container.name} {kind} ({handler} on port {app_port.number})"
    if not enabled and refuses_plaintext:
        result.errors.append(
            f"{where} would fail: mTLS refuses the kubelet's plaintext probe on the port and "
            'proxy.io/rewrite-probes is "false"'
        )
    elif not enabled:
        result.warnings.append(
            f"{where} will fail: the port listens on a socket and "
            'proxy.io/rewrite-probes is "false"'
        )
    elif handler == "grpc" and refuses_plaintext:
        result.errors.append(
            f"{where}: mTLS refuses the kubelet's plaintext gRPC probe on the port, and a gRPC "
            "probe cannot be rewritten; use an httpGet or tcpSocket probe, or leave the port "
            "out with proxy.io/exclude-inbound-ports"
        )
    elif handler == "grpc":
        result.errors.append(
            f"{where}: the port now listens on a socket, which the kubelet cannot "
            "probe; leave it out of proxy.io/uds-ports or set proxy.io/upstream: tcp"
        )
    else:
        path = f"/app-health/{container.name}/{KIND_PATHS[kind]}"
        field = f"spec.containers[{container.index}].{kind}.{handler}"
        result.routes.append(_route(path, app_port, handler, probe[handler], field))
        result.rewrites.append(_rewrite(container, kind, probe, path))
