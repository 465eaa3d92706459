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
from webhook.engine.names import INJECT_KEY, PROXY_CONTAINER, STATUS_KEY
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


def _already_injected(annotations: Mapping[str, str], spec: dict[str, Any]) -> bool:
    if STATUS_KEY in annotations:
        return True
    return any(
        container.get("name") == PROXY_CONTAINER
        for key in ("containers", "initContainers")
        for container in objects(spec, key, "spec")
    )


@dataclass(frozen=True, slots=True)
class Decision:
    reason: Reason
    rule: str
    """Which input decided, for people: "annotation proxy.io/inject=false", ..."""


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
    if _already_injected(annotations, spec):
        return Decision(
            Reason.ALREADY_INJECTED, f"annotation {STATUS_KEY} or a container named proxy"
        )
    if namespace in config.never_inject_namespaces:
        return Decision(
            Reason.NAMESPACE_NEVER_INJECT, f"mesh config neverInjectNamespaces: {namespace}"
        )
    if namespace_labels is not None:
        return _namespace_rule(namespace_labels, by_label or by_annotation, config)
    return Decision(Reason.INJECTED, "the webhook's namespace and object selectors")


def _namespace_rule(
    namespace_labels: Mapping[str, str], pod_opted_in: bool | None, config: MeshConfig
) -> Decision:
    state = namespace_labels.get(INJECT_KEY)
    if state == "enabled":
        return Decision(Reason.INJECTED, f"namespace label {INJECT_KEY}=enabled")
    if state == "disabled":
        return Decision(Reason.NAMESPACE_DISABLED, f"namespace label {INJECT_KEY}=disabled")
    if pod_opted_in:
        return Decision(Reason.INJECTED, f"pod label or annotation {INJECT_KEY}=true")
    if config.inject_by_default:
        return Decision(Reason.INJECTED, "mesh config injectByDefault=true")
    return Decision(Reason.NAMESPACE_NOT_ENABLED, f"no namespace label {INJECT_KEY}=enabled")
