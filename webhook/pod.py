"""Reading the parts of a Pod the engine needs, checking their types on the way.

The API server only sends well-formed pods, but the webhook also serves curl and the
offline ``inject`` command: a wrong type becomes ``InvalidPod`` naming the field, never a
crash. Only the fields used are read; the pod is never converted to a model and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from webhook import values
from webhook.names import SHM_MOUNT_PATH


class InvalidPod(ValueError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"pod field {path}: {problem}")
        self.path = path


def mapping(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPod(f"{path}.{key}", f"expected an object, got {type(value).__name__}")
    return value


def array(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidPod(f"{path}.{key}", f"expected a list, got {type(value).__name__}")
    return value


def objects(parent: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    items = array(parent, key, path)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidPod(f"{path}.{key}[{index}]", "expected an object")
    return items


def string_map(parent: dict[str, Any], key: str, path: str) -> dict[str, str]:
    items = mapping(parent, key, path)
    for name, value in items.items():
        if not isinstance(value, str):
            raise InvalidPod(f"{path}.{key}[{name}]", "expected a string")
    return items


def text(parent: dict[str, Any], key: str, path: str, default: str = "") -> str:
    value = parent.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidPod(f"{path}.{key}", f"expected a string, got {type(value).__name__}")
    return value


PROBE_KINDS = ("livenessProbe", "readinessProbe", "startupProbe")


@dataclass(frozen=True, slots=True)
class Port:
    number: int
    name: str
    protocol: str


@dataclass(frozen=True, slots=True)
class Container:
    index: int
    name: str
    ports: tuple[Port, ...]
    memory_limit: Decimal | None
    shm_volume: str | None
    """Volume this container already mounts at /dev/shm, if any."""
    has_mounts: bool
    has_env: bool
    env_names: tuple[str, ...]
    run_as_user: int | None
    probes: dict[str, dict[str, Any]]
    """livenessProbe / readinessProbe / startupProbe, as the pod gives them."""


def _port(raw: dict[str, Any], path: str) -> Port:
    number = raw.get("containerPort")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
        raise InvalidPod(f"{path}.containerPort", f"expected a port 1..65535, got {number!r}")
    return Port(
        number,
        text(raw, "name", path),
        text(raw, "protocol", path, "TCP") or "TCP",
    )


def _memory_limit(raw: dict[str, Any], path: str) -> Decimal | None:
    limits = mapping(mapping(raw, "resources", path), "limits", f"{path}.resources")
    value = limits.get("memory")
    if value is None:
        return None
    try:
        return values.quantity(str(value))
    except ValueError as exc:
        raise InvalidPod(f"{path}.resources.limits.memory", f"{value!r}: {exc}") from None


def _shm_volume(raw: dict[str, Any], path: str) -> str | None:
    for index, mount in enumerate(objects(raw, "volumeMounts", path)):
        if text(mount, "mountPath", f"{path}.volumeMounts[{index}]").rstrip("/") == SHM_MOUNT_PATH:
            return text(mount, "name", f"{path}.volumeMounts[{index}]")
    return None


def _run_as_user(raw: dict[str, Any], path: str) -> int | None:
    user = mapping(raw, "securityContext", path).get("runAsUser")
    return user if isinstance(user, int) and not isinstance(user, bool) else None


def container(raw: dict[str, Any], index: int, path: str) -> Container:
    here = f"{path}[{index}]"
    env = objects(raw, "env", here)
    return Container(
        index=index,
        name=text(raw, "name", here),
        ports=tuple(
            _port(p, f"{here}.ports[{i}]") for i, p in enumerate(objects(raw, "ports", here))
        ),
        memory_limit=_memory_limit(raw, here),
        shm_volume=_shm_volume(raw, here),
        has_mounts="volumeMounts" in raw and raw["volumeMounts"] is not None,
        has_env="env" in raw and raw["env"] is not None,
        env_names=tuple(text(e, "name", f"{here}.env") for e in env),
        run_as_user=_run_as_user(raw, here),
        probes={kind: mapping(raw, kind, here) for kind in PROBE_KINDS if raw.get(kind)},
    )


def pod_run_as_user(spec: dict[str, Any]) -> int | None:
    return _run_as_user(spec, "spec")


DEFAULT_GRACE_SECONDS = 30


def termination_grace_seconds(spec: dict[str, Any]) -> int:
    """spec.terminationGracePeriodSeconds, with the API server's default."""
    value = spec.get("terminationGracePeriodSeconds")
    if value is None:
        return DEFAULT_GRACE_SECONDS
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidPod(
            "spec.terminationGracePeriodSeconds", f"expected seconds >= 0, got {value!r}"
        )
    return value


def containers(spec: dict[str, Any], key: str = "containers") -> tuple[Container, ...]:
    path = f"spec.{key}"
    return tuple(container(raw, i, path) for i, raw in enumerate(objects(spec, key, "spec")))
