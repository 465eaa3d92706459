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
    claim_volumes: tuple[dict[str, Any], ...] = ()
    """A StatefulSet's volumeClaimTemplates as the volumes its controller puts in each pod
    (the first pod's claim names)."""

    def as_created(self) -> dict[str, Any]:
        """The pod its controller makes, as far as the engine's decisions go: a
        StatefulSet's claim volumes replace template volumes of the same name."""
        if not self.claim_volumes:
            return self.pod
        spec = self.pod.get("spec")
        if not isinstance(spec, dict):
            return self.pod
        claims = {volume["name"] for volume in self.claim_volumes}
        volumes = spec.get("volumes") if isinstance(spec.get("volumes"), list) else []
        kept = [v for v in volumes if not (isinstance(v, dict) and v.get("name") in claims)]
        return {**self.pod, "spec": {**spec, "volumes": [*kept, *self.claim_volumes]}}

    def from_created(self, created: dict[str, Any]) -> dict[str, Any]:
        """``created`` (the pod as made, changed) as the template it comes from: the claim
        volumes the controller adds taken out again, the template's own put back."""
        if not self.claim_volumes or not isinstance(created.get("spec"), dict):
            return created
        claims = {volume["name"] for volume in self.claim_volumes}
        original = self.pod["spec"].get("volumes")
        own = [v for v in original or [] if isinstance(v, dict) and v.get("name") in claims]
        spec = dict(created["spec"])
        volumes = [v for v in spec.get("volumes", []) if v not in self.claim_volumes] + own
        if volumes or original is not None:
            spec["volumes"] = volumes
        else:
            spec.pop("volumes", None)
        return {**created, "spec": spec}


def _name(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name") or metadata.get("generateName") or "(unnamed)"
    namespace = metadata.get("namespace") or ""
    return str(name), str(namespace)


def _is_pod_spec(node: Any) -> bool:
    containers = node.get("containers") if isinstance(node, dict) else None
    return (
        isinstance(containers, list)
        and bool(containers)
        and all(isinstance(c, dict) and "image" in c for c in containers)
    )


def embedded(document: dict[str, Any]) -> tuple[list[tuple[str | int, ...]], list[str]]:
    """In a document of a kind not in TEMPLATE_PATHS: the paths of what looks like a pod
    template (``{metadata, spec: {containers}}``), and where a pod spec stands bare (which
    has no metadata to carry what the injector writes)."""
    found: list[tuple[str | int, ...]] = []
    bare: list[str] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        node, path = stack.pop()
        children: list[tuple[Any, tuple[str | int, ...]]] = []
        if isinstance(node, dict):
            if path and _is_pod_spec(node.get("spec")):
                found.append(path)
                continue
            if path and path[-1] != "spec" and _is_pod_spec(node):
                bare.append(dotted(path))
                continue
            children = [(v, (*path, k)) for k, v in node.items() if isinstance(k, str)]
        elif isinstance(node, list):
            children = [(v, (*path, i)) for i, v in enumerate(node)]
        stack += reversed(children)
    return found, bare


def dotted(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def unknown_kind(document: Any, all_kinds: bool = False) -> str | None:
    """A sentence about a document of a kind inject does not know that holds pod
    templates, or None; with ``all_kinds`` (which injects the templates) only about the bare
    pod specs it still leaves alone."""
    if not isinstance(document, dict) or document.get("kind") in (*TEMPLATE_PATHS, "List"):
        return None
    found, bare = embedded(document)
    parts = []
    if found and not all_kinds:
        parts.append(
            f"pod templates at {', '.join(dotted(p) for p in found)} are not injected "
            "(--all-kinds injects them)"
        )
    if bare:
        parts.append(
            f"pod specs at {', '.join(bare)} have no metadata to carry what the injector "
            "writes and are left alone"
        )
    if not parts:
        return None
    return f"kind {document.get('kind')} is not one inject knows: {'; '.join(parts)}"


def named(document: dict[str, Any]) -> str:
    """``Kind name``, as messages about a document say it."""
    return f"{document.get('kind')} {_name(document)[0]}"


def templates(
    document: Any, at: tuple[str | int, ...] = (), all_kinds: bool = False
) -> Iterator[Template]:
    """Every pod template in ``document``; with ``all_kinds`` also the template-shaped
    parts of kinds not in TEMPLATE_PATHS."""
    if not isinstance(document, dict):
        return
    kind = document.get("kind")
    if kind == "List" and isinstance(document.get("items"), list):
        for index, item in enumerate(document["items"]):
            yield from templates(item, (*at, "items", index), all_kinds)
        return
    path = TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        if all_kinds:
            name, namespace = _name(document)
            for found in embedded(document)[0]:
                node: Any = document
                for part in found:
                    node = node[part]
                yield Template((*at, *found), str(kind), name, namespace, node)
        return
    node: Any = document
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        name, namespace = _name(document)
        claims = _claim_volumes(document, name) if kind == "StatefulSet" else ()
        yield Template((*at, *path), str(kind), name, namespace, node, claims)


def _claim_volumes(statefulset: dict[str, Any], name: str) -> tuple[dict[str, Any], ...]:
    spec = statefulset.get("spec")
    claims = spec.get("volumeClaimTemplates") if isinstance(spec, dict) else None
    volumes = []
    for claim in claims if isinstance(claims, list) else []:
        metadata = claim.get("metadata") if isinstance(claim, dict) else None
        claim_name = metadata.get("name") if isinstance(metadata, dict) else None
        if isinstance(claim_name, str):
            volumes.append(
                {
                    "name": claim_name,
                    "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}-0"},
                }
            )
    return tuple(volumes)
