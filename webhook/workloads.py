"""Where the pods are in a Kubernetes document: a Pod itself, or the pod template of a
workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob), and the items of a ``List``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True, slots=True)
class Template:
    """One pod (template) inside a document."""

    path: tuple[str | int, ...]
    """Where it is in the document: () for a Pod, ("items", 2, "spec", "template")..."""
    kind: str
    name: str
    namespace: str
    pod: dict[str, Any]


def _name(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name") or metadata.get("generateName") or "(unnamed)"
    namespace = metadata.get("namespace") or ""
    return str(name), str(namespace)


def templates(document: Any, at: tuple[str | int, ...] = ()) -> Iterator[Template]:
    """Every pod template in ``document``; other kinds have none."""
    if not isinstance(document, dict):
        return
    kind = document.get("kind")
    if kind == "List" and isinstance(document.get("items"), list):
        for index, item in enumerate(document["items"]):
            yield from templates(item, (*at, "items", index))
        return
    path = TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        return
    node: Any = document
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        name, namespace = _name(document)
        yield Template((*at, *path), str(kind), name, namespace, node)
