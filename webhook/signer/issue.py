"""The status a signer writes: a leaf for the pod's SPIFFE ID, or a denial. Pure: the
clock and the CA are arguments.

What the API server checks of it, and this keeps: the leaf carries the requested key; it
lives at least an hour and at most the request's ``maxExpirationSeconds``; ``notBefore``
is within 5 minutes of now and equal to the leaf's, ``notAfter`` equal to the leaf's;
``beginRefreshAt`` lies between ``notBefore`` + 10 min and ``notAfter`` - 10 min (here at
two thirds of the lifetime); condition reasons are CamelCase.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook.engine.config import MeshConfig
from webhook.engine.mtls import spiffe_id
from webhook.signer import authority
from webhook.signer.authority import Ca
from webhook.signer.requests import Request
from webhook.signer.review import PublicKey

MIN_LIFETIME = dt.timedelta(hours=1)


def stamp(when: dt.datetime) -> str:
    return authority.stamp(when) or ""


def lifetime(request: Request, config: MeshConfig) -> dt.timedelta:
    return dt.timedelta(
        seconds=min(request.max_expiration_seconds, config.mtls.max_expiration_seconds)
    )


def leaf(
    key: PublicKey, ca: Ca, identity: str, not_before: dt.datetime, life: dt.timedelta
) -> x509.Certificate:
    usage = x509.KeyUsage(
        digital_signature=True,
        key_encipherment=isinstance(key, rsa.RSAPublicKey),
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + life)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(usage, critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    return builder.sign(ca.key, hashes.SHA256())


def _condition(kind: str, reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp(now),
    }


def issued(
    request: Request, key: PublicKey, ca: Ca, config: MeshConfig, now: dt.datetime
) -> dict[str, Any]:
    """The status of an issued request. Not backdated: notBefore is now (to the second),
    so the lifetime is exactly the one chosen, within the request's maximum."""
    not_before = now.astimezone(dt.UTC).replace(microsecond=0)
    life = min(lifetime(request, config), ca.not_after - not_before)
    if life < MIN_LIFETIME:
        return failed(
            "CAExpiring",
            f"the signing CA expires at {stamp(ca.not_after)}, too soon for a certificate of "
            "at least an hour: rotate it (proxy-injector signer rotate-ca)",
            now,
        )
    identity = spiffe_id(config.mtls.trust_domain, request.namespace, request.account)
    cert = leaf(key, ca, identity, not_before, life)
    return {
        "conditions": [_condition("Issued", "Issued", f"issued {identity}", now)],
        "certificateChain": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "notBefore": stamp(not_before),
        "notAfter": stamp(not_before + life),
        "beginRefreshAt": stamp(not_before + life * 2 / 3),
    }


def denied(reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
    return {"conditions": [_condition("Denied", reason, message, now)]}


def failed(reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
    return {"conditions": [_condition("Failed", reason, message, now)]}
