"""The engine's entry point: (pod, namespace, mesh config) -> patch, skip or denial.

Pure: no I/O, no clock, no globals written. The webhook, the offline CLI and the tests all
call ``inject`` (or ``plan``, for the decisions without the patch) and nothing below it:
``selection`` decides whether to inject, ``stages`` decides everything else, ``render``
writes the ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from webhook.engine import annotations as annotation_table
from webhook.engine import limits, render, stages
from webhook.engine import patch as jp
from webhook.engine import pod as pods
from webhook.engine.config import MeshConfig
from webhook.engine.reasons import Reason
from webhook.engine.selection import InvalidInjectValue, decide
from webhook.engine.settings import resolve
from webhook.engine.stages import InternalError, Plan

__all__ = [
    "InjectionResult",
    "InternalError",
    "Outcome",
    "Plan",
    "inject",
    "inject_or_deny",
    "plan",
]


class Outcome(StrEnum):
    INJECT = "inject"
    SKIP = "skip"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class InjectionResult:
    outcome: Outcome
    reason: Reason
    message: str
    patch: tuple[jp.Op, ...] = ()
    warnings: tuple[str, ...] = ()
    rule: str = ""
    """Which input decided whether to inject (see ``selection.Decision``)."""


def skip(reason: Reason) -> InjectionResult:
    return InjectionResult(Outcome.SKIP, reason, reason.sentence)


def deny(reason: Reason, problems: list[str] | tuple[str, ...]) -> InjectionResult:
    shown = limits.first(problems, limits.PROBLEMS, limits.PROBLEM_CHARS, "problems")
    return InjectionResult(Outcome.DENY, reason, "; ".join(shown))


def inject(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> InjectionResult:
    """Raises ``pod.InvalidPod`` when a field the engine reads has the wrong type, and
    ``InternalError`` naming the step (the decision, a stage, the patch) for anything else
    that goes wrong."""
    decided = _decided(pod, namespace, config, namespace_labels)
    if isinstance(decided, InjectionResult):
        return decided
    spec, found, rule = decided
    try:
        ops = render.render(pod, spec, found)
    except pods.InvalidPod:
        raise
    except Exception as exc:
        raise InternalError("the patch") from exc
    return InjectionResult(
        Outcome.INJECT, Reason.INJECTED, Reason.INJECTED.sentence, ops, found.warnings, rule
    )


def inject_or_deny(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> InjectionResult:
    """``inject``, with a pod field of the wrong type answered as a denial naming it (as
    the webhook, ``inject -f`` and ``check`` all answer it)."""
    try:
        return inject(pod, namespace, config, namespace_labels)
    except pods.InvalidPod as exc:
        return deny(Reason.INVALID_POD, [str(exc)])


def plan(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> Plan | InjectionResult:
    """The decisions ``inject`` turns into a patch, or the skip or denial it answers.
    Raises as ``inject`` does."""
    decided = _decided(pod, namespace, config, namespace_labels)
    return decided if isinstance(decided, InjectionResult) else decided[1]


def _decided(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None,
) -> tuple[dict[str, Any], Plan, str] | InjectionResult:
    try:
        prepared = _prepare(pod, namespace, config, namespace_labels)
    except pods.InvalidPod:
        raise
    except Exception as exc:
        raise InternalError("the decision whether to inject") from exc
    if isinstance(prepared, InjectionResult):
        return prepared
    spec, parsed, rule = prepared
    settings = resolve(parsed.overrides, config)
    found = stages.run(stages.Context(pod, spec, namespace, config, parsed, settings))
    if isinstance(found, Plan):
        return spec, found, rule
    reason, problems = found
    return replace(deny(reason, problems), rule=rule)


def _prepare(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None,
) -> tuple[dict[str, Any], annotation_table.Parsed, str] | InjectionResult:
    """Whether to inject at all, and the parsed annotations when so."""
    if not isinstance(pod, dict):
        raise pods.InvalidPod("(pod)", "expected an object")
    metadata = pods.mapping(pod, "metadata", "pod")
    spec = pods.mapping(pod, "spec", "pod")
    annotations = pods.string_map(metadata, "annotations", "metadata")
    labels = pods.string_map(metadata, "labels", "metadata")
    try:
        decision = decide(labels, annotations, spec, namespace, config, namespace_labels)
    except InvalidInjectValue as exc:
        return deny(Reason.INVALID_ANNOTATION, [str(exc)])
    if decision.reason is not Reason.INJECTED:
        warned = (decision.warning,) if decision.warning else ()
        return replace(skip(decision.reason), rule=decision.rule, warnings=warned)
    size = sum(len(key) + len(value) for key, value in annotations.items())
    if size > limits.ANNOTATIONS_BYTES:
        return deny(Reason.INVALID_POD, [_annotations_too_large(size)])
    parsed = annotation_table.parse(annotations)
    if parsed.errors:
        return deny(Reason.INVALID_ANNOTATION, parsed.errors)
    return spec, parsed, decision.rule


def _annotations_too_large(size: int) -> str:
    # Characters, which are never more than bytes: when this says too large, so would the
    # API server, which checks the pod only after the mutating webhooks.
    return (
        f"metadata.annotations: {size:,} characters, more than the "
        f"{limits.ANNOTATIONS_BYTES:,} bytes the API server accepts for keys and values"
    )
