"""What the node side reads of a pod (pure): the interception the injector wrote for it, and
whether its proxy-validate found that interception missing."""

from __future__ import annotations

import json
from typing import Any

from webhook.engine.names import (
    INTERCEPTION_KEY,
    INTERCEPTION_SPEC_VERSION,
    STATUS_KEY,
    VALIDATE_CONTAINER,
)
from webhook.node.validate import NOT_REDIRECTED_EXIT


class SpecError(ValueError):
    pass


def _annotations(pod: dict[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def interception_flags(pod: dict[str, Any]) -> list[str] | None:
    """The init-iptables flags of a pod the injector meshed in cni mode; None for any other
    pod. Raises SpecError for a spec this agent cannot apply."""
    annotations = _annotations(pod)
    raw = annotations.get(INTERCEPTION_KEY)
    if raw is None or STATUS_KEY not in annotations:
        return None
    try:
        spec = json.loads(raw)
        version, flags = spec["version"], spec["initIptables"]
    except (ValueError, KeyError, TypeError):
        raise SpecError(f"annotation {INTERCEPTION_KEY} is not valid: {str(raw)[:200]}") from None
    if version != INTERCEPTION_SPEC_VERSION:
        raise SpecError(
            f"annotation {INTERCEPTION_KEY} version {version!r} is not one this agent applies "
            f"({INTERCEPTION_SPEC_VERSION}): upgrade the agent with the injector"
        )
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise SpecError(f"annotation {INTERCEPTION_KEY}: initIptables is not a list of flags")
    return flags


def _exit_codes(status: dict[str, Any]) -> list[int]:
    codes = []
    for state in (status.get("state"), status.get("lastState")):
        terminated = state.get("terminated") if isinstance(state, dict) else None
        if isinstance(terminated, dict) and isinstance(terminated.get("exitCode"), int):
            codes.append(terminated["exitCode"])
    return codes


def interception_missing(pod: dict[str, Any]) -> bool:
    """True when the pod's proxy-validate exited saying its interception is missing (the pod
    started while no agent programmed it), and the pod is not already going away."""
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp") or STATUS_KEY not in _annotations(pod):
        return False
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    return any(
        isinstance(s, dict)
        and s.get("name") == VALIDATE_CONTAINER
        and NOT_REDIRECTED_EXIT in _exit_codes(s)
        for s in statuses
    )


def controlled(pod: dict[str, Any]) -> bool:
    """Whether a controller would make the pod again were it deleted."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(o, dict) and o.get("controller") for o in owners)
