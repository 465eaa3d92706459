"""An ECDSA P-256 certificate authority and the serving certificates it signs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(
    builder: x509.CertificateBuilder, days: int, now: dt.datetime | None
) -> x509.CertificateBuilder:
    now = now or dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))


def create_ca(
    common_name: str = "proxy-injector CA", days: int = 3650, now: dt.datetime | None = None
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return KeyPair(_validity(builder, days, now).sign(key, hashes.SHA256()), key)


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue_serving(
    ca: KeyPair, names: list[str], days: int = 365, now: dt.datetime | None = None
) -> KeyPair:
    """A TLS server certificate for ``names`` (DNS names or IP addresses), signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    return KeyPair(_validity(builder, days, now).sign(ca.key, hashes.SHA256()), key)


def write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class ServingFiles:
    ca: Path
    cert: Path
    key: Path


def write_self_signed(directory: Path, names: list[str], days: int = 365) -> ServingFiles:
    """A throwaway CA and a serving certificate for ``names``, as PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_ca()
    serving = issue_serving(ca, names, days)
    files = ServingFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    files.ca.write_bytes(ca.cert_pem())
    files.cert.write_bytes(serving.cert_pem())
    write_private(files.key, serving.key_pem())
    return files


def service_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    """The names the API server may use for a webhook Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]


def write_for_service(
    directory: Path, service: str, namespace: str, cluster_domain: str, days: int
) -> ServingFiles:
    """``certs create``: a CA (kept, for renewals) and a serving certificate for a Service."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = create_ca(f"{service}.{namespace} CA", days=max(days * 10, 3650))
    serving = issue_serving(ca, service_names(service, namespace, cluster_domain), days)
    files = ServingFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    files.ca.write_bytes(ca.cert_pem())
    write_private(directory / "ca.key", ca.key_pem())
    files.cert.write_bytes(serving.cert_pem())
    write_private(files.key, serving.key_pem())
    return files
