"""``check``'s mTLS checks: the identity source is served by the cluster, permissive pods'
ports still receiving plaintext, and the signer's health (pod certificates)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any
from urllib.parse import quote

from cryptography import x509

from webhook.common.inputs import timestamp
from webhook.common.names import CERTIFICATES_VERSIONS, MESH_CA_SECRET, SIGNER_LEASE
from webhook.engine.config import MeshConfig
from webhook.engine.mtls import trust_bundle_name
from webhook.engine.names import MTLS_PATH, READINESS_PORT, STATUS_KEY
from webhook.tools.reading import Reader, Result, injection_status


def checks(
    reader: Reader, config: MeshConfig, namespaces: list[dict[str, Any]], signer_namespace: str
) -> list[Result]:
    found = [_identity_source(reader, config), _plaintext(reader, namespaces)]
    if config.mtls.identity == "pod-certificate":
        found.append(_signer(reader, config, signer_namespace))
    return found


def _served_version(reader: Reader, resource: str) -> str | None:
    for version in CERTIFICATES_VERSIONS:
        if resource in (reader.served(f"certificates.k8s.io/{version}") or []):
            return f"certificates.k8s.io/{version}"
    return None


def _identity_source(reader: Reader, config: MeshConfig) -> Result:
    settings = config.mtls
    if settings.identity == "csi-spiffe":
        name = f"the CSI driver {settings.csi_driver} is installed (mtls.identity csi-spiffe)"
        if reader.csi_driver(settings.csi_driver) is None:
            hint = "install cert-manager's csi-driver-spiffe, or set mesh config mtls.identity"
            return Result(name, False, "no CSIDriver object of that name", hint)
        return Result(name, True)
    name = "the API serves pod certificates (mtls.identity pod-certificate)"
    found = _pod_certificate_versions(reader)
    problem = _not_served(found)
    if problem:
        return Result(name, False, problem, FEATURE_GATES_HINT)
    return Result(name, True, ", ".join(f"{r} in {v}" for r, v in found.items()))


POD_CERTIFICATE_RESOURCES = ("podcertificaterequests", "clustertrustbundles")
FEATURE_GATES_HINT = (
    "turn on the PodCertificateRequest and ClusterTrustBundle feature gates and "
    "API versions (kube-apiserver --feature-gates and --runtime-config, and the "
    "kubelet's gate): without them the API server drops the pods' podCertificate "
    "volume source and they run without an identity"
)


def served_pod_certificates(reader: Reader) -> str | None:
    """What of pod certificates the API does not serve; None when it serves them all."""
    return _not_served(_pod_certificate_versions(reader))


def _pod_certificate_versions(reader: Reader) -> dict[str, str | None]:
    return {r: _served_version(reader, r) for r in POD_CERTIFICATE_RESOURCES}


def _not_served(found: dict[str, str | None]) -> str | None:
    missing = [resource for resource, version in found.items() if version is None]
    return f"not served: {', '.join(missing)}" if missing else None


def _permissive_pods(reader: Reader, namespaces: list[dict[str, Any]]) -> list[tuple[str, str]]:
    found = []
    for namespace in namespaces:
        ns = namespace["metadata"]["name"]
        for pod in reader.pods(ns):
            metadata = pod.get("metadata") or {}
            status = injection_status((metadata.get("annotations") or {}).get(STATUS_KEY, "{}"))
            if status.get("mtls") == "permissive":
                found.append((ns, metadata.get("name", "")))
    return found


def _ports_receiving_plaintext(report: str, where: str) -> tuple[list[str], int]:
    """From ``8080 permissive mtls=12 plaintext=3 denied=0`` lines: the ports receiving
    plaintext, and how many receive none."""
    receiving, clean = [], 0
    for line in report.splitlines():
        port, _, *counts = line.split()
        numbers = dict(item.split("=", 1) for item in counts if "=" in item)
        if int(numbers.get("plaintext", "0")) > 0:
            receiving.append(
                f"{where} port {port}: {numbers['plaintext']} plaintext, "
                f"{numbers.get('mtls', '0')} mTLS connections"
            )
        else:
            clean += 1
    return receiving, clean


def _plaintext(reader: Reader, namespaces: list[dict[str, Any]]) -> Result:
    """From each permissive pod's proxy (``GET :15021/mtls`` through the API server's pod
    proxy): the ports still receiving plaintext, and how many could go strict now."""
    name = "permissive pods receive no plaintext (the ports could go strict)"
    items, ready = [], 0
    for ns, pod in _permissive_pods(reader, namespaces):
        report = reader.pod_port(ns, pod, READINESS_PORT, MTLS_PATH)
        if report is None:
            items.append(f"{ns}/{pod}: its proxy did not answer")
            continue
        receiving, clean = _ports_receiving_plaintext(report, f"{ns}/{pod}")
        items += receiving
        ready += clean
    detail = f"{ready} port(s) could go strict now"
    if items:
        hint = (
            "find the callers that are not meshed (their traffic is plaintext) before setting "
            "proxy.io/mtls: strict on these pods"
        )
        return Result(name, False, detail, hint, items)
    return Result(name, True, detail)


PENDING_SECONDS = 30
RENEW_BEFORE = dt.timedelta(days=90)


def _lease_problem(reader: Reader, namespace: str, now: dt.datetime) -> tuple[str, str]:
    """(problem or "", the leader's name)."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{SIGNER_LEASE}"
    lease = reader.get(path)
    if lease is None:
        return f"no Lease {namespace}/{SIGNER_LEASE}: the signer has never run", ""
    spec = lease.get("spec") or {}
    holder, renewed = spec.get("holderIdentity") or "", timestamp(spec.get("renewTime"))
    duration = dt.timedelta(seconds=float(spec.get("leaseDurationSeconds") or 15))
    if not holder or renewed is None or now > renewed + duration:
        return f"no leader: the Lease was last renewed at {spec.get('renewTime')} by {holder}", ""
    return "", holder


def _issuing_ca(reader: Reader, namespace: str) -> x509.Certificate | None:
    secret = reader.secret(namespace, MESH_CA_SECRET)
    data = (secret or {}).get("data") or {}
    if "tls.crt" not in data:
        return None
    return x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))


def _bundle_problems(
    reader: Reader, config: MeshConfig, namespace: str, now: dt.datetime
) -> list[str]:
    version = _served_version(reader, "clustertrustbundles")
    name = trust_bundle_name(config.mtls.signer_name)
    bundle = reader.get(f"/apis/{version}/clustertrustbundles/{name}") if version else None
    if bundle is None:
        return [f"the trust bundle {name} is not published"]
    ca = _issuing_ca(reader, namespace)
    if ca is None:
        return [f"secret {namespace}/{MESH_CA_SECRET} holds no tls.crt"]
    published = x509.load_pem_x509_certificates(
        (bundle.get("spec") or {}).get("trustBundle", "").encode()
    )
    problems = []
    if ca not in published:
        problems.append(f"the issuing CA is not in the trust bundle {name}")
    if ca.not_valid_after_utc - now < RENEW_BEFORE:
        problems.append(
            f"the CA expires at {ca.not_valid_after_utc:%Y-%m-%d}, inside its renewal window "
            "(run proxy-injector signer rotate-ca)"
        )
    return problems


def _pending(reader: Reader, config: MeshConfig, now: dt.datetime) -> list[str]:
    version = _served_version(reader, "podcertificaterequests")
    if version is None:
        return []
    selector = quote(f"spec.signerName={config.mtls.signer_name}", safe="")
    listed = reader.get(f"/apis/{version}/podcertificaterequests?fieldSelector={selector}") or {}
    late = []
    for item in listed.get("items") or []:
        conditions = (item.get("status") or {}).get("conditions") or []
        if any(c.get("type") in ("Issued", "Denied", "Failed") for c in conditions):
            continue
        created = timestamp((item.get("metadata") or {}).get("creationTimestamp"))
        if created is not None and (now - created).total_seconds() > PENDING_SECONDS:
            metadata = item["metadata"]
            where = f"{metadata.get('namespace')}/{metadata.get('name')}"
            late.append(f"{where} pending since {metadata['creationTimestamp']}")
    return late


def _signer(reader: Reader, config: MeshConfig, namespace: str) -> Result:
    name = "the signer answers: a leader, the issuing CA in the trust bundle, nothing pending"
    now = dt.datetime.now(dt.UTC)
    lease_problem, leader = _lease_problem(reader, namespace, now)
    problems = [lease_problem] if lease_problem else []
    problems += _bundle_problems(reader, config, namespace, now)
    late = _pending(reader, config, now)
    if late:
        problems.append(f"{len(late)} request(s) pending longer than {PENDING_SECONDS} s")
    if problems:
        hint = (
            f"kubectl -n {namespace} logs deploy/proxy-injector-signer; is deploy/overlays/mtls "
            "applied, and are the signer's pods ready?"
        )
        return Result(name, False, "; ".join(problems), hint, late)
    return Result(name, True, f"leader {leader}")
