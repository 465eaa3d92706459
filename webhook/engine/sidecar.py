"""The objects added to an injected pod: the proxy container, the init container and the
shared /dev/shm volume, resolved from annotations, the mesh config and the pod."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from webhook.engine import values
from webhook.engine.annotations import Overrides, quote
from webhook.engine.config import MeshConfig
from webhook.engine.json_object import Json
from webhook.engine.names import (
    ADMIN_DIR,
    ADMIN_VOLUME,
    APP_HEALTH_PATH,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROMETHEUS_PORT,
    PROXY_CONTAINER,
    PROXY_GID,
    PROXY_UID,
    READINESS_PATH,
    READINESS_PORT,
    SHM_VOLUME,
)
from webhook.engine.pod import Container
from webhook.engine.settings import Settings

MIN_DEFAULT_CONCURRENCY = 2


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: Decimal
    memory: Decimal
    cpu_limit: Decimal
    memory_limit: Decimal

    def spec(self) -> Json:
        return {
            "requests": {
                "cpu": values.format_cpu(self.cpu),
                "memory": values.format_bytes(self.memory),
            },
            "limits": {
                "cpu": values.format_cpu(self.cpu_limit),
                "memory": values.format_bytes(self.memory_limit),
            },
        }


@dataclass(frozen=True, slots=True)
class Sized:
    resources: Resources
    errors: list[str]
    """A request above a limit the pod sets too."""
    warnings: list[str]
    """A request above the mesh config's default limit, which was raised to it."""


def resources(settings: Settings, overrides: Overrides) -> Sized:
    """The proxy's requests and limits. A request annotation above the default limit
    raises the limit to it (with a warning), as Istio does; a request above a limit the
    pod sets as well is an error. ``overrides``: which of them the pod's annotations set."""
    chosen = {
        "cpu": settings.cpu,
        "memory": settings.memory,
        "cpu_limit": settings.cpu_limit,
        "memory_limit": settings.memory_limit,
    }
    errors, warnings = [], []
    for request, limit in (("cpu", "cpu_limit"), ("memory", "memory_limit")):
        if chosen[request] <= chosen[limit]:
            continue
        limit_set = getattr(overrides, limit) is not None
        if limit_set or getattr(overrides, request) is None:
            errors.append(_over_limit(overrides, request, limit))
            continue
        chosen[limit] = chosen[request]
        warnings.append(_raised(overrides, request, limit))
    return Sized(Resources(**chosen), errors, warnings)


def _raised(overrides: Overrides, request: str, limit: str) -> str:
    key = "proxy.io/" + request
    return (
        f"annotation {key} {quote(overrides.raw[key])} is above the default "
        f"{limit.replace('_', ' ')} (mesh config resources.{limit.replace('_l', 'L')}): "
        f"the proxy's {limit.replace('_', ' ')} is raised to it; set "
        f"proxy.io/{limit.replace('_', '-')} to choose another"
    )


def _over_limit(overrides: Overrides, request: str, limit: str) -> str:
    def described(attr: str) -> str:
        key = "proxy.io/" + attr.replace("_", "-")
        if key in overrides.raw:
            return f"annotation {key} {quote(overrides.raw[key])}"
        return f"mesh config resources.{attr.replace('_l', 'L')}"

    return (
        f"{described(request)} is greater than {described(limit)}; a request may not "
        f"exceed its limit (set proxy.io/{limit.replace('_', '-')})"
    )


def concurrency(settings: Settings, cpu_limit: Decimal) -> int:
    """Envoy's workers: as set, else one per CPU of the limit (at least 2, at most 64)."""
    if settings.concurrency is not None:
        return settings.concurrency
    return min(64, max(MIN_DEFAULT_CONCURRENCY, math.ceil(cpu_limit)))


def shm_size(apps: Iterable[Container], overrides: Overrides, config: MeshConfig) -> str:
    """sizeLimit of the shared volume: the annotation, else a fraction of the app
    containers' memory limits, else the mesh default."""
    if overrides.shm_size is not None:
        return values.format_bytes(overrides.shm_size)
    limits = sum((c.memory_limit for c in apps if c.memory_limit is not None), Decimal(0))
    if limits == 0:
        return values.format_bytes(config.shm.default_size)
    share = (limits * Decimal(str(config.shm.size_fraction))).to_integral_value("ROUND_FLOOR")
    # Round down to whole KiB so the quantity reads naturally ("256Mi", not "268435456").
    return values.format_bytes(max(share - share % 1024, Decimal(1024)))


def memory_volume(name: str, size: str) -> Json:
    """An emptyDir in memory (tmpfs), counted against the pod's memory up to ``size``."""
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def shm_volume(size: str) -> Json:
    return memory_volume(SHM_VOLUME, size)


SMALL_VOLUME = "1Mi"
"""The proxy's own volumes (the admin socket, the SDS files) hold a few KiB at most."""


def admin_volume() -> Json:
    """Where Envoy's admin socket lives: mounted in the proxy only (``admin_mount``)."""
    return memory_volume(ADMIN_VOLUME, SMALL_VOLUME)


def admin_mount() -> Json:
    return {"name": ADMIN_VOLUME, "mountPath": ADMIN_DIR}


def restricted() -> Json:
    """What Pod Security's restricted profile asks of a container, and a read-only root."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _port(name: str, number: int) -> Json:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def _field_env(name: str, field_path: str) -> Json:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def proxy_container(
    *,
    image: str,
    bootstrap: str,
    workers: int,
    log_level: str,
    limits: Resources,
    mounts: list[Json],
    drain_seconds: float,
    pull_policy: str | None = None,
    env: tuple[tuple[str, str], ...] = (),
) -> Json:
    container: Json = {
        "name": PROXY_CONTAINER,
        "image": image,
        "command": ["envoy"],
        "args": [
            "--config-yaml",
            bootstrap,
            "--concurrency",
            str(workers),
            "--log-level",
            log_level,
            "--disable-hot-restart",
            "--drain-time-s",
            str(math.ceil(drain_seconds)),
            "--drain-strategy",
            "immediate",
            "--service-node",
            "$(POD_NAME).$(POD_NAMESPACE)",
            "--service-cluster",
            "$(POD_NAMESPACE)",
        ],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            *({"name": name, "value": value} for name, value in env),
        ],
        "ports": [
            _port("proxy-inbound", INBOUND_PORT),
            _port("proxy-outbound", OUTBOUND_PORT),
            _port("proxy-ready", READINESS_PORT),
            _port("proxy-metrics", PROMETHEUS_PORT),
        ],
        "readinessProbe": {
            "httpGet": {"path": APP_HEALTH_PATH, "port": READINESS_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "resources": limits.spec(),
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_GID, **restricted()},
        "volumeMounts": mounts,
    }
    return pulled(container, pull_policy)


def pulled(container: Json, pull_policy: str | None) -> Json:
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    return container


def as_native_sidecar(proxy: Json) -> Json:
    """An init container with restartPolicy Always: started (startup probe passed) before
    the app's own init containers and the app, stopped after the app."""
    return {
        **proxy,
        "restartPolicy": "Always",
        "startupProbe": {
            "httpGet": {"path": READINESS_PATH, "port": READINESS_PORT},
            "periodSeconds": 1,
            "failureThreshold": 600,
        },
    }
