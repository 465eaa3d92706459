"""Whether a pod is selected for a sidecar at all, and by which input: its labels and
annotations, its namespace's labels, the mesh config; every decision carries its code
from ``reasons.Reason``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.engine import values
from webhook.engine.annotations import invalid
from webhook.engine.config import MeshConfig
from webhook.engine.names import (
    DEFAULT_REVISION,
    INJECT_KEY,
    PROXY_CONTAINER,
    REVISION_KEY,
    STATUS_KEY,
)
from webhook.engine.pod import objects
from webhook.engine.reasons import Reason


class InvalidInjectValue(ValueError):
    pass


def _inject_flag(source: Mapping[str, Any], what: str) -> bool | None:
    raw = source.get(INJECT_KEY)
    if raw is None:
        return None
    try:
        return values.boolean(str(raw))
    except ValueError as exc:
        message = invalid(INJECT_KEY, str(raw), str(exc))
        raise InvalidInjectValue(message.replace("annotation", what, 1)) from None


def _windows(spec: dict[str, Any]) -> bool:
    os, selector = spec.get("os"), spec.get("nodeSelector")
    return (isinstance(os, dict) and os.get("name") == "windows") or (
        isinstance(selector, dict) and selector.get("kubernetes.io/os") == "windows"
    )


OTHER_MESHES: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    (
        "Istio",
        frozenset({"istio-proxy", "istio-init", "istio-validation"}),
        frozenset({"sidecar.istio.io/status"}),
    ),
    (
        "Linkerd",
        frozenset({"linkerd-proxy", "linkerd-init", "linkerd-network-validator"}),
        frozenset({"linkerd.io/proxy-version"}),
    ),
)
"""What another mesh's injector leaves in a pod: its containers (app or init) and its
status annotations. Such a pod is skipped: Istio's proxy holds the ports ours needs
(15000-15090), and two init containers would rewrite the same iptables."""


def container_names(spec: dict[str, Any]) -> set[str]:
    return {
        str(container.get("name"))
        for key in ("containers", "initContainers")
        for container in objects(spec, key, "spec")
    }


_ANY_CONTAINER = frozenset().union(*(containers for _, containers, _ in OTHER_MESHES))
_ANY_KEY = tuple(key for _, _, keys in OTHER_MESHES for key in keys)


def other_mesh(annotations: Mapping[str, str], names: set[str]) -> str | None:
    """What of another mesh the pod carries, for people (``check`` and the warning). On
    every admission: the common answer, nothing, is found without building one."""
    if names.isdisjoint(_ANY_CONTAINER) and not any(key in annotations for key in _ANY_KEY):
        return None
    for mesh, containers, keys in OTHER_MESHES:
        found = sorted(names & containers) + sorted(k for k in keys if k in annotations)
        if found:
            return f"{mesh}'s {', '.join(found)}"
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    reason: Reason
    rule: str
    """Which input decided, for people: "annotation proxy.io/inject=false", ..."""
    warning: str | None = None
    """For a skip the pod's owner did not ask for: said back in the answer."""


def decide(
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    spec: dict[str, Any],
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> Decision:
    """The decision, in order; ``namespace_labels`` is None in the webhook, where the
    MutatingWebhookConfiguration's selectors have already applied the namespace rule."""
    by_annotation = _inject_flag(annotations, "annotation")
    by_label = _inject_flag(labels, "label")
    if by_annotation is False:
        return Decision(Reason.OPTED_OUT_BY_ANNOTATION, f"pod annotation {INJECT_KEY}=false")
    if by_label is False:
        return Decision(Reason.OPTED_OUT_BY_LABEL, f"pod label {INJECT_KEY}=false")
    if spec.get("hostNetwork") is True:
        return Decision(Reason.HOST_NETWORK, "spec.hostNetwork=true")
    if _windows(spec):
        return Decision(Reason.WINDOWS, "spec.os.name or nodeSelector kubernetes.io/os=windows")
    if STATUS_KEY in annotations:
        return Decision(Reason.ALREADY_INJECTED, f"annotation {STATUS_KEY}")
    names = container_names(spec)
    other = other_mesh(annotations, names)
    if other is not None:
        return Decision(
            Reason.OTHER_MESH,
            other,
            f"not injected: the pod carries {other}; two meshes' proxies cannot share a pod "
            "(remove the other mesh's injection for this namespace, then restart the pod)",
        )
    if PROXY_CONTAINER in names:
        return Decision(
            Reason.PROXY_NAME_TAKEN,
            f"a container named {PROXY_CONTAINER} without annotation {STATUS_KEY}",
            f"not injected: the pod has a container named {PROXY_CONTAINER}, the name of the "
            "sidecar; rename it to mesh the pod",
        )
    if namespace in config.never_inject_namespaces:
        return Decision(
            Reason.NAMESPACE_NEVER_INJECT, f"mesh config neverInjectNamespaces: {namespace}"
        )
    if namespace_labels is not None:
        return _namespace_rule(namespace_labels, labels, by_annotation, config)
    return Decision(Reason.INJECTED, "the webhook's namespace and object selectors")


NAMESPACE_VALUES = ("enabled", "disabled")
"""The namespace label values the webhook configuration knows (deploy/base)."""


def called_revision(
    namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]
) -> tuple[str | None, str]:
    """Which revision's webhook the API server calls for a pod, and by which label, as the
    entries deploy/ ships select (deploy/base, components/revision): the namespace's
    ``proxy.io/inject`` wins, then its ``proxy.io/rev``; only in a namespace with neither
    do the pod's labels count, its ``proxy.io/rev`` before its ``proxy.io/inject: "true"``.
    None: no entry matches. (A pod labelled ``proxy.io/inject: "false"`` matches none.)"""
    state = namespace_labels.get(INJECT_KEY)
    if state is not None:
        called = DEFAULT_REVISION if state == "enabled" else None
        return called, f"namespace label {INJECT_KEY}={state}"
    for whose, labels in (("namespace", namespace_labels), ("pod", pod_labels)):
        if REVISION_KEY in labels:
            return labels[REVISION_KEY], f"{whose} label {REVISION_KEY}={labels[REVISION_KEY]}"
    if pod_labels.get(INJECT_KEY) == "true":
        return DEFAULT_REVISION, f"pod label {INJECT_KEY}=true"
    return None, f"no namespace label {INJECT_KEY}=enabled"


def _namespace_rule(
    namespace_labels: Mapping[str, str],
    pod_labels: Mapping[str, str],
    pod_annotation: bool | None,
    config: MeshConfig,
) -> Decision:
    """What the webhook configurations deploy/ ships do for these labels, for the
    injector of ``config.revision``: called, another revision's called, or none."""
    called, rule = called_revision(namespace_labels, pod_labels)
    if called == config.revision:
        return Decision(Reason.INJECTED, rule)
    if called is not None:
        return Decision(
            Reason.OTHER_REVISION,
            f"{rule}: revision {called}'s injector is called, not {config.revision}'s",
        )
    state = namespace_labels.get(INJECT_KEY)
    if state == "disabled":
        return Decision(Reason.NAMESPACE_DISABLED, rule)
    if state is not None:
        return Decision(
            Reason.NAMESPACE_NOT_ENABLED,
            f"{rule}, a value no webhook entry selects",
            f"namespace label {INJECT_KEY}={state} is neither enabled nor disabled: the "
            "webhook is never called for its pods (label it enabled)",
        )
    if config.inject_by_default:
        return Decision(Reason.INJECTED, "mesh config injectByDefault=true")
    if pod_annotation:
        return Decision(
            Reason.NAMESPACE_NOT_ENABLED,
            f"pod annotation {INJECT_KEY}=true, which no webhook entry reads",
            f'the annotation {INJECT_KEY}: "true" does not opt a pod in (the webhook\'s '
            "selectors read labels): label the pod instead",
        )
    return Decision(Reason.NAMESPACE_NOT_ENABLED, rule)
