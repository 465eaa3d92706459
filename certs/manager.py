"""``serve --manage-certs``: the webhook keeps its own serving certificate in a Secret and
its CA in the MutatingWebhookConfiguration, so an install needs nothing else.

Several replicas start at once; the Secret's resourceVersion arbitrates: whoever writes
second gets a 409, re-reads and uses the winner's certificate. The CA of the certificate
being replaced stays in caBundle, so API servers that still see the old certificate keep
trusting it during the overlap.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.authority import create_ca, issue_serving, service_names, write_private
from certs.check import due_for_renewal, names_of, signed_by_any

log = logging.getLogger("proxy_injector.certs")


class Conflict(Exception):
    """The API server's 409: someone else wrote first."""


@dataclass(frozen=True)
class Stored:
    data: dict[str, bytes]
    resource_version: str


class Cluster(Protocol):
    def read_secret(self, namespace: str, name: str) -> Stored | None: ...
    def create_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None: ...
    def replace_secret(
        self, namespace: str, name: str, data: dict[str, bytes], resource_version: str
    ) -> None: ...
    def set_ca_bundle(self, webhook_configuration: str, bundle: bytes) -> None: ...


@dataclass(frozen=True)
class Target:
    service: str
    namespace: str
    secret: str
    webhook_configuration: str
    cluster_domain: str = "cluster.local"
    days: int = 365


def usable(data: dict[str, bytes], target: Target, now: dt.datetime) -> bool:
    """A stored certificate we can serve: complete, chained to its bundle, for our Service,
    and not inside its renewal window."""
    try:
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        authorities = x509.load_pem_x509_certificates(data["ca.crt"])
    except (KeyError, ValueError):
        return False
    wanted = service_names(target.service, target.namespace, target.cluster_domain)
    return (
        "tls.key" in data
        and signed_by_any(cert, authorities)
        and set(wanted) <= set(names_of(cert))
        and cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        and not due_for_renewal(cert, now)
    )


def _still_valid_cas(data: dict[str, bytes] | None, now: dt.datetime) -> list[bytes]:
    try:
        previous = x509.load_pem_x509_certificates((data or {})["ca.crt"])
    except (KeyError, ValueError):
        return []
    return [
        ca.public_bytes(serialization.Encoding.PEM)
        for ca in previous[:1]
        if ca.not_valid_after_utc > now
    ]


def fresh(target: Target, previous: dict[str, bytes] | None, now: dt.datetime) -> dict[str, bytes]:
    ca = create_ca(
        f"{target.service}.{target.namespace} CA", days=max(target.days * 2, 730), now=now
    )
    names = service_names(target.service, target.namespace, target.cluster_domain)
    serving = issue_serving(ca, names, target.days, now=now)
    bundle = ca.cert_pem() + b"".join(_still_valid_cas(previous, now))
    return {"tls.crt": serving.cert_pem(), "tls.key": serving.key_pem(), "ca.crt": bundle}


def ensure(cluster: Cluster, target: Target, now: dt.datetime | None = None) -> dict[str, bytes]:
    """The certificate to serve, created or renewed if needed, with caBundle published."""
    now = now or dt.datetime.now(dt.UTC)
    stored = cluster.read_secret(target.namespace, target.secret)
    if stored is not None and usable(stored.data, target, now):
        data = stored.data
    else:
        data = fresh(target, stored.data if stored else None, now)
        try:
            if stored is None:
                cluster.create_secret(target.namespace, target.secret, data)
            else:
                cluster.replace_secret(
                    target.namespace, target.secret, data, stored.resource_version
                )
            log.info("serving certificate written", extra={"secret": target.secret})
        except Conflict:
            winner = cluster.read_secret(target.namespace, target.secret)
            if winner is None or not usable(winner.data, target, now):
                raise
            log.info(
                "another replica wrote the certificate first; using it",
                extra={"secret": target.secret},
            )
            data = winner.data
    cluster.set_ca_bundle(target.webhook_configuration, data["ca.crt"])
    return data


def write_files(data: dict[str, bytes], directory: Path) -> tuple[Path, Path]:
    """The certificate and key where the server reads them, replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    for path, content, private in ((key, data["tls.key"], True), (cert, data["tls.crt"], False)):
        staged = path.with_suffix(".new")
        if private:
            write_private(staged, content)
        else:
            staged.write_bytes(content)
        os.replace(staged, path)
    return cert, key


def keep_renewed(cluster: Cluster, target: Target, directory: Path, every: float) -> None:
    """Re-check the Secret every ``every`` seconds for ever; new files are picked up by the
    server's certificate reloader. Failures are logged and retried at the next check."""

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                write_files(ensure(cluster, target), directory)
            except Exception as exc:
                log.warning("certificate check failed", extra={"error": str(exc)})

    threading.Thread(target=loop, name="cert-renewal", daemon=True).start()
