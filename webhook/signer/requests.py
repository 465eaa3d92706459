"""A PodCertificateRequest of any served version, read into one shape.

``v1alpha1`` and ``v1beta1`` (1.34, 1.35) carry the key as ``pkixPublicKey`` with a
``proofOfPossession`` (the pod's UID signed with it); 1.36's ``v1beta1`` and ``v1`` carry a
``stubPKCS10Request`` instead, whose own signature is the proof.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from webhook.common.inputs import timestamp

MIN_EXPIRATION_SECONDS = 3600
ANSWERS = ("Issued", "Denied", "Failed")
"""Condition types after which a request never changes again."""


class BadRequest(ValueError):
    """A field of the request is missing or malformed (its message names the field)."""


@dataclass(frozen=True, slots=True)
class Request:
    api_version: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    created: str
    signer_name: str
    pod_name: str
    pod_uid: str
    account: str
    account_uid: str
    node_name: str
    node_uid: str
    max_expiration_seconds: int
    public_key: bytes | None
    """DER SubjectPublicKeyInfo (pkixPublicKey), when given that way."""
    proof: bytes | None
    csr: bytes | None
    """DER PKCS#10 (stubPKCS10Request), when given that way."""
    answer: str | None
    """Issued, Denied or Failed when already answered."""

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"


def _text(spec: dict[str, Any], field: str, required: bool = True) -> str:
    value = spec.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"spec.{field}: expected a non-empty string")
    return value


def _bytes(spec: dict[str, Any], field: str) -> bytes | None:
    value = spec.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"spec.{field}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"spec.{field}: not valid base64") from None


def answer_of(obj: dict[str, Any]) -> str | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    for condition in conditions:
        if isinstance(condition, dict) and condition.get("type") in ANSWERS:
            return str(condition["type"])
    return None


def _created(metadata: dict[str, Any]) -> str:
    """creationTimestamp, checked: a time with its zone (only ever used for a metric)."""
    created = str(metadata.get("creationTimestamp", ""))
    try:
        timestamp(created)
    except ValueError:
        raise BadRequest(
            f"metadata.creationTimestamp: {created[:40]!r} is not an RFC 3339 time"
        ) from None
    return created


def parse(obj: dict[str, Any]) -> Request:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise BadRequest("spec: expected an object")
    expiration = spec.get("maxExpirationSeconds", 86400)
    if not isinstance(expiration, int) or isinstance(expiration, bool):
        raise BadRequest(f"spec.maxExpirationSeconds: expected an integer, got {expiration!r}")
    if expiration < MIN_EXPIRATION_SECONDS:
        raise BadRequest(
            f"spec.maxExpirationSeconds: {expiration} is under {MIN_EXPIRATION_SECONDS}, the "
            "least the API allows"
        )
    request = Request(
        api_version=str(obj.get("apiVersion", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        uid=str(metadata.get("uid", "")),
        resource_version=str(metadata.get("resourceVersion", "")),
        created=_created(metadata),
        signer_name=_text(spec, "signerName"),
        pod_name=_text(spec, "podName"),
        pod_uid=_text(spec, "podUID"),
        account=_text(spec, "serviceAccountName"),
        account_uid=_text(spec, "serviceAccountUID", required=False),
        node_name=_text(spec, "nodeName"),
        node_uid=_text(spec, "nodeUID", required=False),
        max_expiration_seconds=expiration,
        public_key=_bytes(spec, "pkixPublicKey"),
        proof=_bytes(spec, "proofOfPossession"),
        csr=_bytes(spec, "stubPKCS10Request"),
        answer=answer_of(obj),
    )
    if request.public_key is None and request.csr is None:
        raise BadRequest("spec: neither pkixPublicKey nor stubPKCS10Request")
    return request
