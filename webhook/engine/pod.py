"""Reading the parts of a Pod the engine needs, checking their types on the way.

The API server only sends well-formed pods, but the webhook also serves curl and the
offline ``inject`` command: a wrong type becomes ``InvalidPod`` naming the field, never a
crash. Only the fields used are read; the pod is never converted to a model and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from webhook.engine import quantity
from webhook.engine.limits import KEY_CHARS, PROBLEM_CHARS, clip
from webhook.engine.names import SHM_MOUNT_PATH
from webhook.engine.values import cached, quote


class InvalidPod(ValueError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"pod field {clip(path, KEY_CHARS)}: {clip(problem, PROBLEM_CHARS)}")
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
        if type(item) is not dict:
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


# Not frozen: one is made per port and per container, and frozen dataclasses are slow to
# make. Nothing changes them after ``container`` returns.
@dataclass(slots=True)
class Port:
    number: int
    name: str
    protocol: str


@dataclass(slots=True)
class Container:
    index: int
    name: str
    ports: tuple[Port, ...]
    """TCP ports only: nothing else is proxied or probed."""
    memory_limit: Decimal | None
    mounts: dict[str, str]
    """Volume mounted at each path (without a trailing /)."""
    has_mounts: bool
    has_env: bool
    env: list[dict[str, Any]]
    run_as_user: int | None
    run_as_group: int | None
    probes: dict[str, dict[str, Any]]
    """livenessProbe / readinessProbe / startupProbe, as the pod gives them."""

    @property
    def shm_volume(self) -> str | None:
        """Volume this container already mounts at /dev/shm, if any."""
        return self.mounts.get(SHM_MOUNT_PATH)

    def env_positions(self, names: set[str] | frozenset[str]) -> dict[str, int]:
        """Where each of ``names`` first appears in env; one pass, read only when needed."""
        found: dict[str, int] = {}
        for position, var in enumerate(self.env):
            name = var.get("name")
            if type(name) is not str:
                if name is None:
                    continue
                raise InvalidPod(
                    f"spec.containers[{self.index}].env[{position}].name", "expected a string"
                )
            if name in names and name not in found:
                found[name] = position
        return found


def _tcp_ports(raw: dict[str, Any], here: str) -> tuple[Port, ...]:
    found = []
    for position, port in enumerate(objects(raw, "ports", here)):
        number, name, protocol = port.get("containerPort"), port.get("name"), port.get("protocol")
        if type(number) is not int or not 1 <= number <= 65535:
            where = f"{here}.ports[{position}].containerPort"
            raise InvalidPod(where, f"expected a port 1..65535, got {number!r}")
        for key, value in (("name", name), ("protocol", protocol)):
            if value is not None and type(value) is not str:
                where = f"{here}.ports[{position}].{key}"
                raise InvalidPod(where, f"expected a string, got {type(value).__name__}")
        if not protocol or protocol == "TCP":
            found.append(Port(number, name or "", "TCP"))
    return tuple(found)


def _memory_limit(raw: dict[str, Any], path: str) -> Decimal | None:
    """The limit in bytes; 0 (no limit for the kubelet) reads as none, and one beyond an
    int64, which the API server accepts, as the int64 maximum."""
    limits = mapping(mapping(raw, "resources", path), "limits", f"{path}.resources")
    value = limits.get("memory")
    if value is None:
        return None
    where = f"{path}.resources.limits.memory"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidPod(where, f"expected a quantity, got {type(value).__name__}")
    try:
        return _limit(str(value))
    except ValueError as exc:
        raise InvalidPod(where, f"{quote(str(value))}: {exc}") from None


@cached(maxsize=256)
def _limit(text: str) -> Decimal | None:
    try:
        return quantity.parse(text) or None
    except quantity.TooLarge:
        return quantity.MAX


def _mounts(raw: dict[str, Any], path: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for position, mount in enumerate(objects(raw, "volumeMounts", path)):
        mount_path = mount.get("mountPath")
        if type(mount_path) is not str:
            if mount_path is None:
                continue
            raise InvalidPod(f"{path}.volumeMounts[{position}].mountPath", "expected a string")
        where = mount_path.rstrip("/") or "/"
        if where not in found:
            found[where] = text(mount, "name", f"{path}.volumeMounts[{position}]")
    return found


def _run_as(raw: dict[str, Any], path: str, key: str) -> int | None:
    """``runAsUser`` or ``runAsGroup`` of a container's or the pod's securityContext."""
    value = mapping(raw, "securityContext", path).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def container(raw: dict[str, Any], index: int, path: str) -> Container:
    here = f"{path}[{index}]"
    return Container(
        index,
        text(raw, "name", here),
        _tcp_ports(raw, here),
        _memory_limit(raw, here),
        _mounts(raw, here),
        raw.get("volumeMounts") is not None,
        raw.get("env") is not None,
        objects(raw, "env", here),
        _run_as(raw, here, "runAsUser"),
        _run_as(raw, here, "runAsGroup"),
        {kind: mapping(raw, kind, here) for kind in PROBE_KINDS if raw.get(kind)},
    )


def pod_run_as(spec: dict[str, Any]) -> tuple[int | None, int | None]:
    """The pod's default ``runAsUser`` and ``runAsGroup``."""
    return _run_as(spec, "spec", "runAsUser"), _run_as(spec, "spec", "runAsGroup")


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


def service_account(spec: dict[str, Any]) -> str:
    """The pod's service account, as the API server will set it (``default`` when unset)."""
    return (
        text(spec, "serviceAccountName", "spec")
        or text(spec, "serviceAccount", "spec")
        or "default"
    )
