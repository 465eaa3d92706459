"""RFC 6902 JSON Patch operations, built directly from what is added (never by diffing)."""

from __future__ import annotations

from typing import Any

Op = dict[str, Any]


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON pointer; '~' and '/' inside a part are escaped."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def add(path: str, value: Any) -> Op:
    return {"op": "add", "path": path, "value": value}


def remove(path: str) -> Op:
    return {"op": "remove", "path": path}


def replace(path: str, value: Any) -> Op:
    return {"op": "replace", "path": path, "value": value}


def append(path: str, exists: bool, items: list[Any]) -> list[Op]:
    """Append items to the array at path, creating it when the pod has none."""
    if not items:
        return []
    if not exists:
        return [add(path, items)]
    return [add(path + "/-", item) for item in items]


def prepend(path: str, exists: bool, item: Any) -> Op:
    """Insert item first in the array at path, creating it when the pod has none."""
    return add(path + "/0", item) if exists else add(path, [item])


def set_key(path: str, exists: bool, key: str, value: Any) -> Op:
    """Set one key of the object at path, creating the object when the pod has none."""
    if exists:
        return add(path + pointer(key), value)
    return add(path, {key: value})


def set_nested(parent: dict[str, Any], path: tuple[str, ...], key: str, value: Any) -> Op:
    """Set ``key`` in the object at ``path`` below ``parent`` (the pod), creating every
    object on the way that the pod lacks or has as null."""
    node: Any = parent
    for depth, part in enumerate(path):
        child = node.get(part)
        if not isinstance(child, dict):
            created: Any = {key: value}
            for missing in reversed(path[depth + 1 :]):
                created = {missing: created}
            return add(pointer(*path[: depth + 1]), created)
        node = child
    return add(pointer(*path, key), value)
