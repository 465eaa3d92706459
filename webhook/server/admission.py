"""AdmissionReview in, AdmissionReview out: the envelope around the engine.

``review`` takes the raw body and returns the response body plus the fields of the log line.
A malformed envelope raises ``BadRequest`` (HTTP 400): without a uid there is nothing to
answer. Once the uid is known every outcome is an AdmissionReview, so the API server shows
our reason: an invalid pod is denied with code 400, and an exception nobody foresaw is
denied with code 500 (reason InternalError) and handed back in ``Reviewed.error`` for
the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from webhook import engine
from webhook.engine.config import MeshConfig
from webhook.engine.limits import PROBLEM_CHARS, clip
from webhook.engine.reasons import Reason
from webhook.server.memo import Memo

VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
MEMO = Memo()
"""The engine's answers for the pods asked about lately (a ReplicaSet's are alike)."""


class BadRequest(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Reviewed:
    body: bytes
    uid: str
    namespace: str
    pod: str
    outcome: str
    reason: str
    message: str
    error: BaseException | None = None
    """An exception the engine did not foresee, for the log with its traceback."""
    dry_run: bool = False
    pod_object: Any = None
    """The pod as the request has it (not copied), for an Event about it."""


def _field(parent: dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    value = parent.get(key)
    if value is None and not required:
        return kind()
    if not isinstance(value, kind) or (kind is str and required and not value):
        wanted = {dict: "an object", str: "a non-empty string"}[kind]
        raise BadRequest(f"{where}.{key}: expected {wanted}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return (
        "nothing"
        if value is None
        else repr(clip(value, 60))
        if isinstance(value, str)
        else type(value).__name__
    )


def _envelope(body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("body is not an AdmissionReview: expected a JSON object")
    api_version = document.get("apiVersion")
    if document.get("kind") != "AdmissionReview" or api_version not in VERSIONS:
        raise BadRequest(
            "body is not an AdmissionReview: expected kind AdmissionReview and "
            f"apiVersion {' or '.join(VERSIONS)}, got kind "
            f"{_kind(document.get('kind'))}, apiVersion {_kind(api_version)}"
        )
    return api_version, _field(document, "request", dict, "AdmissionReview")


def _pod_name(pod: Any, request: dict[str, Any]) -> str:
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    for candidate in (request.get("name"), metadata.get("name")):
        if isinstance(candidate, str) and candidate:
            return candidate
    generate = metadata.get("generateName")
    return f"{generate}*" if isinstance(generate, str) and generate else "(unnamed)"


def review(body: bytes, config: MeshConfig) -> Reviewed:
    api_version, request = _envelope(body)
    uid = _field(request, "uid", str, "request")
    kind = _field(request, "kind", dict, "request")
    operation = _field(request, "operation", str, "request")
    namespace = _field(request, "namespace", str, "request", required=False)
    pod = request.get("object")
    error: BaseException | None = None
    try:
        namespace, result, patch = _decide(request, kind, operation, namespace, pod, config)
        body_out = _encode(api_version, uid, result, patch)
    except BadRequest:
        raise
    except Exception as exc:
        error = exc.__cause__ if isinstance(exc, engine.InternalError) else exc
        field = exc.where if isinstance(exc, engine.InternalError) else "the answer"
        result = _internal_error(field, error)
        body_out = _encode(api_version, uid, result, None)
    return Reviewed(
        body_out,
        uid,
        namespace,
        _pod_name(pod, request),
        result.outcome,
        result.reason.code,
        result.message,
        error,
        request.get("dryRun") is True,
        pod,
    )


def _decide(
    request: dict[str, Any],
    kind: dict[str, Any],
    operation: str,
    namespace: str,
    pod: Any,
    config: MeshConfig,
) -> tuple[str, engine.InjectionResult, str | None]:
    """The namespace, the engine's answer and its patch encoded (None: no patch)."""
    is_pod = kind.get("group", "") == "" and kind.get("kind") == "Pod"
    if not is_pod or request.get("subResource"):
        return namespace, engine.skip(Reason.NOT_A_POD), None
    if operation != "CREATE":
        return namespace, engine.skip(Reason.NOT_CREATE), None
    if not isinstance(pod, dict):
        raise BadRequest(f"request.object: expected a Pod object, got {_kind(pod)}")
    namespace = namespace or _pod_namespace(pod) or "default"
    return namespace, *MEMO.inject(pod, namespace, config)


def _internal_error(where: str, error: BaseException | None) -> engine.InjectionResult:
    kind = type(error).__name__ if error else "error"
    detail = clip(str(error), PROBLEM_CHARS) if error else ""
    message = f"internal error in {where}: {kind}" + (f": {detail}" if detail else "")
    return engine.InjectionResult(engine.Outcome.DENY, Reason.INTERNAL_ERROR, message)


def _encode(api_version: str, uid: str, result: engine.InjectionResult, patch: str | None) -> bytes:
    response = _response(uid, result, patch)
    return orjson.dumps(
        {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
    )


def _pod_namespace(pod: dict[str, Any]) -> str:
    metadata = pod.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) else ""


_STATUS = {Reason.INTERNAL_ERROR: (500, "InternalError")}


def _response(uid: str, result: engine.InjectionResult, patch: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": result.outcome != engine.Outcome.DENY}
    if result.outcome == engine.Outcome.DENY:
        code, reason = _STATUS.get(result.reason, (400, "BadRequest"))
        response["status"] = {
            "code": code,
            "reason": reason,
            "message": f"proxy-injector: {result.message}",
        }
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch
    if result.warnings:
        response["warnings"] = list(result.warnings)
    return response
