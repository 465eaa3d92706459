"""Workload identities for the mTLS tests: an ECDSA CA that signs leaves with a SPIFFE URI
SAN, written the way the kubelet writes a projected volume (a ``..<timestamp>`` directory,
a ``..data`` symlink swapped with rename(2), and per-file symlinks through ``..data``)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import KeyPair, create_ca
from webhook.signer import issue
from webhook.signer.authority import Ca

__all__ = ["KeyPair", "ProjectedVolume", "create_ca", "forged", "leaf", "spiffe"]


def spiffe(namespace: str, account: str, trust_domain: str = "cluster.local") -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


def leaf(ca: KeyPair, identity: str, hours: float = 24) -> KeyPair:
    """A workload certificate as our signer issues it (no subject, the SPIFFE ID as its
    only URI SAN, client and server auth), valid from five minutes ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    life = dt.timedelta(hours=hours, minutes=5)
    return KeyPair(issue.leaf(key.public_key(), Ca(ca.cert, ca.key), identity, start, life), key)


def forged(
    ca: KeyPair, uris: tuple[str, ...], dns: tuple[str, ...] = (), seconds: float = 86400
) -> KeyPair:
    """A leaf of ``ca`` with whatever SANs an attacker would like (several URIs, an ID as a
    DNS name) and a lifetime from now, to the second."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(seconds=seconds))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def other_ca(name: str = "someone else's CA") -> KeyPair:
    return create_ca(common_name=name)


def bundle(*cas: KeyPair) -> bytes:
    return b"".join(ca.cert_pem() for ca in cas)


class ProjectedVolume:
    """A directory the kubelet's atomic writer keeps: ``write`` publishes a whole new set
    of files at once, as the kubelet does on each rotation."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._serial = 0

    def write(self, files: dict[str, bytes]) -> None:
        self._serial += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{os.getpid()}{self._serial}"
        fresh = self.root / stamp
        fresh.mkdir(mode=0o755)
        for name, data in files.items():
            (fresh / name).write_bytes(data)
            (fresh / name).chmod(0o644)
        old = (self.root / "..data").resolve() if (self.root / "..data").is_symlink() else None
        tmp = self.root / "..data_tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(stamp)
        os.rename(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        if old is not None and old != fresh:
            shutil.rmtree(old, ignore_errors=True)

    def pod_certificate(
        self, pair: KeyPair, *cas: KeyPair, chain: tuple[KeyPair, ...] = ()
    ) -> None:
        """The files of identity ``pod-certificate``: the key and the chain apart (keyPath,
        certificateChainPath) and the trust bundle the clusterTrustBundle projection writes."""
        certificates = pair.cert_pem() + b"".join(c.cert_pem() for c in chain)
        self.write(
            {
                "certificate-chain.pem": certificates,
                "key.pem": pair.key_pem(),
                "ca.pem": bundle(*cas),
            }
        )

    def csi_spiffe(self, pair: KeyPair, *cas: KeyPair) -> None:
        """The files csi-driver-spiffe writes."""
        self.write({"tls.crt": pair.cert_pem(), "tls.key": pair.key_pem(), "ca.crt": bundle(*cas)})
