"""Whether to sign a PodCertificateRequest: pure, from the request, the pod it names (as
the API has it now) and the mesh config. The API server checked the proof of possession
when the request was created; it is checked again here (it is cheap), so a request that
should never have got through is denied, not signed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from webhook.engine.config import MeshConfig
from webhook.signer.requests import Request

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
CURVES = {"secp256r1", "secp384r1", "secp521r1"}
RSA_BITS = {3072, 4096}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``issue``, or ``deny`` with a reason in the API's CamelCase format and a message
    a user can act on."""

    action: str
    reason: str = ""
    message: str = ""
    public_key: PublicKey | None = None


def deny(reason: str, message: str) -> Verdict:
    return Verdict("deny", reason, message)


def _key_type_problem(key: Any) -> str | None:
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in CURVES:
        return None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size in RSA_BITS:
        return None
    return (
        f"the key is {type(key).__name__}; this signer issues to ECDSA P-256, P-384 and "
        "P-521, Ed25519 and RSA 3072 and 4096 keys: use keyType ECDSAP256"
    )


def _proof_holds(key: PublicKey, proof: bytes, pod_uid: str) -> bool:
    """The pod's UID signed with the key as the kubelet signs it: ECDSA over its SHA-256
    digest (Go's SignASN1, whatever the curve), Ed25519 over the bytes themselves, RSA over
    the SHA-256 digest with PSS (the API's documentation) or, as early kubelets did,
    PKCS#1 v1.5."""
    data = pod_uid.encode("ascii", errors="replace")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(proof, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(proof, data)
        else:
            return _rsa_proof_holds(key, proof, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _rsa_proof_holds(key: rsa.RSAPublicKey, proof: bytes, data: bytes) -> bool:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
    for scheme in (pss, padding.PKCS1v15()):
        try:
            key.verify(proof, data, scheme, hashes.SHA256())
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


def public_key(request: Request) -> PublicKey | Verdict:
    """The key to issue to, its proof checked; or the denial saying what is wrong."""
    try:
        if request.csr is not None:
            csr = x509.load_der_x509_csr(request.csr)
            if not csr.is_signature_valid:
                return deny(
                    "InvalidProofOfPossession", "stubPKCS10Request: its signature is invalid"
                )
            key = csr.public_key()
        else:
            assert request.public_key is not None
            key = serialization.load_der_public_key(request.public_key)
    except (ValueError, UnsupportedAlgorithm) as exc:
        return deny("InvalidRequest", f"the public key cannot be read: {exc}")
    problem = _key_type_problem(key)
    if problem:
        return deny("UnsupportedKeyType", problem)
    if request.csr is None and not _proof_holds(key, request.proof or b"", request.pod_uid):  # type: ignore[arg-type]
        return deny(
            "InvalidProofOfPossession",
            "proofOfPossession is not the pod's UID signed with pkixPublicKey",
        )
    return key  # type: ignore[return-value]


def _pod_problem(request: Request, pod: dict[str, Any] | None) -> Verdict | None:
    if pod is None:
        return deny("PodNotFound", f"pod {request.namespace}/{request.pod_name} does not exist")
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if metadata.get("uid") != request.pod_uid:
        return deny(
            "PodMismatch",
            f"pod {request.namespace}/{request.pod_name} has UID {metadata.get('uid')}, not "
            f"{request.pod_uid}: the request is for a pod that is gone",
        )
    account = spec.get("serviceAccountName") or "default"
    if account != request.account:
        return deny(
            "ServiceAccountMismatch",
            f"pod {request.namespace}/{request.pod_name} runs as service account {account}, "
            f"not {request.account}",
        )
    if spec.get("nodeName") != request.node_name:
        return deny(
            "NodeMismatch",
            f"pod {request.namespace}/{request.pod_name} is on node {spec.get('nodeName')}, "
            f"not {request.node_name}",
        )
    return None


def review(request: Request, pod: dict[str, Any] | None, config: MeshConfig) -> Verdict:
    if request.namespace in config.never_inject_namespaces:
        return deny(
            "NamespaceNotMeshed",
            f"namespace {request.namespace} is in mesh config neverInjectNamespaces: its pods "
            "get no mesh identity",
        )
    key = public_key(request)
    if isinstance(key, Verdict):
        return key
    return _pod_problem(request, pod) or Verdict("issue", public_key=key)
