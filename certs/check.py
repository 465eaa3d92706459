"""What a serving certificate is and whether the API server will accept it: the chain,
the names, and how much of its life is left."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

RENEW_FRACTION = 1 / 3
"""Renew once less than this share of a certificate's lifetime is left."""


@dataclass(frozen=True)
class Report:
    subject: str
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    problems: tuple[str, ...]

    def lines(self) -> list[str]:
        return [
            f"subject: {self.subject}",
            f"names: {', '.join(self.names) or '(none)'}",
            f"valid: {self.not_before.isoformat()} to {self.not_after.isoformat()}",
            *(f"problem: {p}" for p in self.problems),
            "ok" if not self.problems else "NOT OK",
        ]


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a PEM certificate ({exc})") from None


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def signed_by_any(cert: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    for ca in authorities:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def due_for_renewal(cert: x509.Certificate, now: dt.datetime) -> bool:
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * RENEW_FRACTION


def check(
    cert_path: Path, ca_path: Path, name: str | None = None, now: dt.datetime | None = None
) -> Report:
    now = now or dt.datetime.now(dt.UTC)
    cert = load_certificates(cert_path)[0]
    authorities = load_certificates(ca_path)
    problems = []
    if not signed_by_any(cert, authorities):
        problems.append(f"not signed by a CA in {ca_path}")
    if now < cert.not_valid_before_utc:
        problems.append("not valid yet")
    elif now >= cert.not_valid_after_utc:
        problems.append("expired")
    elif due_for_renewal(cert, now):
        problems.append("inside its renewal window (less than a third of its lifetime left)")
    if name and name not in names_of(cert):
        problems.append(f"not valid for {name}")
    return Report(
        cert.subject.rfc4514_string(),
        names_of(cert),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        tuple(problems),
    )
