"""The signer's CAs, as the Secret ``proxy-mesh-ca`` holds them, and how they roll.

``tls.crt``/``tls.key`` is the CA that issues (an administrator's own, one cert-manager's
CA issuer keeps, or one the signer made with ``--create-ca``). A rotation adds
``next.crt``/``next.key`` and how long the bundle must be out before it issues
(``proxy.io/next-issues-after-seconds``). The leader publishes the bundle with it, then
records when it may issue (``proxy.io/next-issues-from``): so every pod trusts the new CA
for that long before any leaf of it exists. At that time it becomes ``tls.*`` and the old
CA stays in the bundle as ``previous.crt`` until no leaf it signed can still be valid
(``proxy.io/previous-trusted-until``). Pure: the clock is an argument.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.authority import KeyPair, create_ca
from webhook.common.inputs import timestamp
from webhook.common.names import MESH_CA_SECRET

SECRET = MESH_CA_SECRET
NEXT_FROM = "proxy.io/next-issues-from"
NEXT_AFTER = "proxy.io/next-issues-after-seconds"
PREVIOUS_UNTIL = "proxy.io/previous-trusted-until"
CA_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=90)
"""check says a CA this close to its end is due for rotation."""


class CaError(ValueError):
    """The Secret holds no usable CA (its message says what is wrong)."""


@dataclass(frozen=True)
class Ca(KeyPair):
    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


@dataclass(frozen=True)
class Authorities:
    current: Ca
    next: Ca | None = None
    next_from: dt.datetime | None = None
    """None until the bundle with ``next`` is published."""
    next_after: dt.timedelta | None = None
    previous: x509.Certificate | None = None
    previous_until: dt.datetime | None = None

    def bundle(self) -> bytes:
        """Every CA a valid leaf may chain to, current first, each once."""
        certs = [self.current.cert, *([self.next.cert] if self.next else [])]
        certs += [self.previous] if self.previous is not None else []
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def new_ca(now: dt.datetime) -> Ca:
    """Named for its birth, so that an old and a new CA never share a subject (a verifier
    picks a chain's issuer by name first)."""
    name = f"proxy-injector mesh CA {now.astimezone(dt.UTC):%Y-%m-%d} {secrets.token_hex(4)}"
    pair = create_ca(common_name=name, days=CA_DAYS, now=now)
    return Ca(pair.cert, pair.key)


def stamp(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _ca(data: dict[str, bytes], prefix: str) -> Ca | None:
    if f"{prefix}.crt" not in data:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data[f"{prefix}.crt"])
        key = serialization.load_pem_private_key(data[f"{prefix}.key"], None)
    except (KeyError, ValueError, TypeError) as exc:
        raise CaError(f"secret {SECRET}: {prefix}.crt/{prefix}.key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"secret {SECRET}: {prefix}.key is not an ECDSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CaError(f"secret {SECRET}: {prefix}.key is not the key of {prefix}.crt")
    return Ca(cert, key)


def from_secret(data: dict[str, bytes], annotations: dict[str, str]) -> Authorities:
    current = _ca(data, "tls")
    if current is None:
        raise CaError(f"secret {SECRET} has no tls.crt")
    previous = data.get("previous.crt")
    after = annotations.get(NEXT_AFTER)
    return Authorities(
        current=current,
        next=_ca(data, "next"),
        next_from=timestamp(annotations.get(NEXT_FROM)),
        next_after=dt.timedelta(seconds=float(after)) if after else None,
        previous=x509.load_pem_x509_certificate(previous) if previous else None,
        previous_until=timestamp(annotations.get(PREVIOUS_UNTIL)),
    )


def to_secret(authorities: Authorities) -> tuple[dict[str, bytes], dict[str, str]]:
    data = {"tls.crt": authorities.current.cert_pem(), "tls.key": authorities.current.key_pem()}
    annotations: dict[str, str] = {}
    if authorities.next is not None:
        data |= {"next.crt": authorities.next.cert_pem(), "next.key": authorities.next.key_pem()}
        if authorities.next_from is not None:
            annotations[NEXT_FROM] = stamp(authorities.next_from) or ""
        if authorities.next_after is not None:
            annotations[NEXT_AFTER] = f"{authorities.next_after.total_seconds():g}"
    if authorities.previous is not None:
        data["previous.crt"] = authorities.previous.public_bytes(serialization.Encoding.PEM)
        annotations[PREVIOUS_UNTIL] = stamp(authorities.previous_until) or ""
    return data, annotations


def rotate(authorities: Authorities, now: dt.datetime, after: dt.timedelta) -> Authorities:
    """A new CA for the bundle, issuing once the bundle has been out for ``after``."""
    return replace(authorities, next=new_ca(now), next_from=None, next_after=after)


def published(authorities: Authorities, now: dt.datetime) -> Authorities | None:
    """Once the bundle with the next CA is out: when that CA may start issuing. None when
    there is nothing to record."""
    if authorities.next is None or authorities.next_from is not None:
        return None
    return replace(authorities, next_from=now + (authorities.next_after or dt.timedelta()))


def advance(
    authorities: Authorities, now: dt.datetime, longest_leaf: dt.timedelta
) -> Authorities | None:
    """The CAs at ``now``: the next CA issuing once its time has come (the old one
    trusted for ``longest_leaf`` more), the previous one gone once its last leaf can
    have expired. None when nothing changes."""
    changed = authorities
    if changed.previous is not None and changed.previous_until and now >= changed.previous_until:
        changed = replace(changed, previous=None, previous_until=None)
    if changed.next is not None and changed.next_from and now >= changed.next_from:
        changed = Authorities(
            current=changed.next,
            previous=changed.current.cert,
            previous_until=now + longest_leaf,
        )
    return None if changed is authorities else changed
