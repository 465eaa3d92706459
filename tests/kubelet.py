"""A stand-in kubelet for the signer's tests: it makes a pod's key, creates the
PodCertificateRequest the way the real one does for each API version (``pkixPublicKey``
with ``proofOfPossession``, or a ``stubPKCS10Request``), waits for the answer, and writes
the projected files (credential bundle, trust bundle) with the ``..data`` symlink swap."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fake_kube import FakeKube
from tests.identity import ProjectedVolume

SIGNER = "proxy.io/spiffe"
GROUP = "certificates.k8s.io"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    status: dict[str, Any]

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.status["certificateChain"].encode())[0]

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass
class StandInKubelet:
    fake: FakeKube
    version: str = "v1beta1"
    node: str = "node-a"
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)

    def pod(self, namespace: str, name: str, account: str = "web") -> dict[str, Any]:
        return self.fake.put_pod(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "serviceAccountName": account,
                    "nodeName": self.node,
                    "containers": [{"name": "app", "image": "app:1"}],
                },
            }
        )

    def spec(
        self, pod: dict[str, Any], key: ec.EllipticCurvePrivateKey, signer: str, **changed: Any
    ) -> dict[str, Any]:
        metadata, pod_spec = pod["metadata"], pod["spec"]
        uid = changed.pop("podUID", metadata["uid"])  # the proof is over the UID requested
        spec: dict[str, Any] = {
            "signerName": signer,
            "podName": metadata["name"],
            "podUID": uid,
            "serviceAccountName": pod_spec.get("serviceAccountName", "default"),
            "serviceAccountUID": "sa-uid",
            "nodeName": pod_spec["nodeName"],
            "nodeUID": "node-uid",
            "maxExpirationSeconds": 86400,
        }
        if self.version == "v1" or changed.pop("csr", False):
            csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            spec["stubPKCS10Request"] = b64(
                csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
            )
        else:
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            proof = key.sign(uid.encode(), ec.ECDSA(hashes.SHA256()))
            spec |= {"pkixPublicKey": b64(public), "proofOfPossession": b64(proof)}
        spec.update(changed)
        return spec

    def request(
        self,
        pod: dict[str, Any],
        signer: str = SIGNER,
        name: str | None = None,
        created: str | None = None,
        **changed: Any,
    ) -> str:
        """Create the request (``changed``: spec fields to tamper with; ``created``: its
        creationTimestamp); its name."""
        key = ec.generate_private_key(ec.SECP256R1())
        metadata = pod["metadata"]
        name = name or f"{metadata['name']}-{len(self.keys)}"
        self.keys[f"{metadata['namespace']}/{name}"] = key
        stamp = {"creationTimestamp": created} if created else {}
        self.fake.put_object(
            "podcertificaterequests",
            {
                "apiVersion": f"{GROUP}/{self.version}",
                "kind": "PodCertificateRequest",
                "metadata": {"name": name, "namespace": metadata["namespace"], **stamp},
                "spec": self.spec(pod, key, signer, **changed),
            },
        )
        return name

    def answer(self, namespace: str, name: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = self.fake.objects.get("podcertificaterequests", {}).get((namespace, name))
            status = (obj or {}).get("status") or {}
            if any(
                c.get("type") in ("Issued", "Denied", "Failed")
                for c in status.get("conditions") or []
            ):
                return status
            time.sleep(0.02)
        raise AssertionError(f"request {namespace}/{name} not answered within {timeout} s")

    def issued(self, namespace: str, name: str, timeout: float = 15.0) -> Issued:
        status = self.answer(namespace, name, timeout)
        assert status["conditions"][0]["type"] == "Issued", status
        return Issued(self.keys[f"{namespace}/{name}"], status)

    def bundle(self) -> bytes:
        """What the clusterTrustBundle projection writes: every bundle of the signer."""
        found = self.fake.objects.get("clustertrustbundles", {}).values()
        return "".join(
            b["spec"]["trustBundle"] for b in found if b["spec"].get("signerName") == SIGNER
        ).encode()

    def project(self, volume: ProjectedVolume, issued: Issued) -> None:
        volume.write(
            {
                "certificate-chain.pem": issued.status["certificateChain"].encode(),
                "key.pem": issued.key_pem(),
                "ca.pem": self.bundle(),
            }
        )
