"""Mutual TLS for one pod: its mode and SPIFFE ID, who may call it, who each declared
upstream must be, and the volumes that bring its certificate to the proxy as files.

There is no control plane: the certificate comes from a volume the cluster fills (the
kubelet's pod certificates, or cert-manager's csi-driver-spiffe) and Envoy reloads it
through file-based SDS. The SDS files themselves travel in the init container's args,
which no one can change once the pod exists, and it writes them into the proxy's SDS
volume. The key is a file of its own, in a volume only the proxy mounts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import orjson

from webhook.engine.annotations import Overrides, quote
from webhook.engine.config import MeshConfig, Mtls
from webhook.engine.json_object import Json
from webhook.engine.names import (
    IDENTITY_DIR,
    IDENTITY_VOLUME,
    PROXY_GID,
    SDS_DIR,
    SDS_VOLUME,
)
from webhook.engine.sidecar import SMALL_VOLUME, memory_volume
from webhook.engine.upstreams import Upstream

CERTIFICATE_SECRET = "identity"
TRUST_BUNDLE_SECRET = "trust-bundle"
SDS_FILES = {CERTIFICATE_SECRET: "identity.json", TRUST_BUNDLE_SECRET: "trust-bundle.json"}
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True, slots=True)
class Peer:
    """Who a peer must be: one SPIFFE ID (``exact``) or any under a path (``prefix``)."""

    kind: str
    value: str

    def matcher(self) -> Json:
        return {self.kind: self.value}

    def __str__(self) -> str:
        return self.value + ("*" if self.kind == "prefix" else "")


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    certificate: str
    key: str
    trust_bundle: str


POD_CERTIFICATE_FILES = {
    "certificateChainPath": "certificate-chain.pem",
    "keyPath": "key.pem",
}
"""The key apart from the chain: Envoy's /config_dump redacts a private_key but prints a
certificate_chain, so a credential bundle (key first) named as the chain would show it."""

FILES = {
    "pod-certificate": IdentityFiles(
        f"{IDENTITY_DIR}/{POD_CERTIFICATE_FILES['certificateChainPath']}",
        f"{IDENTITY_DIR}/{POD_CERTIFICATE_FILES['keyPath']}",
        f"{IDENTITY_DIR}/ca.pem",
    ),
    "csi-spiffe": IdentityFiles(
        f"{IDENTITY_DIR}/tls.crt", f"{IDENTITY_DIR}/tls.key", f"{IDENTITY_DIR}/ca.crt"
    ),
}


@dataclass(frozen=True, slots=True)
class PodMtls:
    """What the sidecar's bootstrap needs; absent when mTLS is off."""

    mode: str
    """permissive or strict."""
    trust_domain: str
    identity: str
    """The pod's own SPIFFE ID."""
    source: str
    """pod-certificate or csi-spiffe."""
    files: IdentityFiles
    allow_from: tuple[Peer, ...]
    """Empty: any identity of the trust domain."""

    @property
    def refuses_plaintext(self) -> bool:
        return self.mode == "strict" or bool(self.allow_from)

    @property
    def trust_domain_peers(self) -> Peer:
        return Peer("prefix", f"spiffe://{self.trust_domain}/")


@dataclass(frozen=True, slots=True)
class Decided:
    pod: PodMtls | None
    """What the pod's sidecar gets; None: mTLS is off for it."""
    upstreams: tuple[Upstream, ...]
    """The declared upstreams, each with the peer it must be (or None: plaintext)."""
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def trust_bundle_name(signer_name: str) -> str:
    """The signer's ClusterTrustBundle: its name starts with the signer name, / made :."""
    return signer_name.replace("/", ":") + ":bundle"


def refuses_plaintext(overrides: Overrides, mode: str) -> bool:
    """Whether the pod's inbound ports will refuse plaintext (the kubelet's probes too)."""
    return mode == "strict" or (mode != "off" and bool(overrides.allow_from))


def spiffe_id(trust_domain: str, namespace: str, account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


def peer(pattern: str, trust_domain: str) -> Peer:
    """A parsed ``values.peer`` pattern as a matcher."""
    if pattern.startswith("spiffe://"):
        if pattern.endswith("/*"):
            return Peer("prefix", pattern[:-1])
        return Peer("exact", pattern)
    parts = pattern.split("/")
    if len(parts) == 2:
        return Peer("prefix", f"spiffe://{trust_domain}/ns/{parts[1]}/sa/")
    return Peer("exact", spiffe_id(trust_domain, parts[1], parts[3]))


def service_namespace(host: str, namespace: str, cluster_domain: str) -> str | None:
    """The namespace of a declared upstream's Service, or None for a name outside the
    cluster (whose identity cannot be derived)."""
    labels = host.split(".")
    if len(labels) == 1:
        return namespace
    if len(labels) == 2 or (len(labels) == 3 and labels[2] == "svc"):
        return labels[1]
    if host.endswith(f".svc.{cluster_domain}") and len(labels) == 3 + cluster_domain.count("."):
        return labels[1]
    return None


def decide(
    overrides: Overrides,
    config: MeshConfig,
    mode: str,
    namespace: str,
    account: str,
    upstreams: tuple[Upstream, ...],
) -> Decided:
    """``mode``: ``mode_of`` the pod; ``account``: its service account (unread when off)."""
    if mode == "off" and overrides.allow_from is None and overrides.upstream_identities is None:
        return Decided(None, upstreams)  # the common case, on every admission: nothing to do
    settings = config.mtls
    errors = _needs_mtls(overrides, settings, mode)
    if errors or mode == "off":
        return Decided(None, upstreams, tuple(errors))
    td = settings.trust_domain
    pod = PodMtls(
        mode=mode,
        trust_domain=td,
        identity=spiffe_id(td, namespace, account),
        source=settings.identity,
        files=FILES[settings.identity],
        allow_from=tuple(peer(p, td) for p in overrides.allow_from or ()),
    )
    pinned = dict(overrides.upstream_identities or ())
    declared = {(u.host, u.port) for u in upstreams}
    errors += [
        f"annotation proxy.io/upstream-identities: {host}:{port} is not in proxy.io/upstreams"
        for host, port in pinned
        if (host, port) not in declared
    ]
    resolved, warnings = [], []
    for upstream in upstreams:
        who = _upstream_peer(upstream, pinned, td, namespace, config.cluster_domain)
        if who is None and mode == "strict":
            errors.append(_outside_the_cluster(upstream))
        elif who is None:
            warnings.append(
                f"proxy.io/upstreams: {upstream.host}:{upstream.port} is not a service of this "
                "cluster, so the sidecar calls it in plaintext; pin its identity in "
                "proxy.io/upstream-identities if it is meshed"
            )
        # A pinned identity says the upstream is meshed: no plaintext, whatever the mode.
        unpinned = (upstream.host, upstream.port) not in pinned
        fallback = who is not None and mode == "permissive" and unpinned
        resolved.append(replace(upstream, peer=who, plaintext_fallback=fallback))
    return Decided(pod, tuple(resolved), tuple(errors), tuple(warnings))


def _needs_mtls(overrides: Overrides, settings: Mtls, mode: str) -> list[str]:
    errors = []
    if overrides.mtls in ("permissive", "strict") and settings.identity == "none":
        errors.append(
            f"annotation proxy.io/mtls: {quote(overrides.raw['proxy.io/mtls'])} needs an "
            "identity source, and mesh config mtls.identity is none"
        )
    elif mode == "off":
        errors += [
            f"annotation {key} needs mTLS, which is off for this pod (proxy.io/mtls, or mesh "
            "config mtls.mode and mtls.identity)"
            for key in ("proxy.io/allow-from", "proxy.io/upstream-identities")
            if key in overrides.raw
        ]
    return errors


def _upstream_peer(
    upstream: Upstream,
    pinned: dict[tuple[str, int], str],
    trust_domain: str,
    namespace: str,
    cluster_domain: str,
) -> Peer | None:
    pattern = pinned.get((upstream.host, upstream.port))
    if pattern is not None:
        return peer(pattern, trust_domain)
    service_ns = service_namespace(upstream.host, namespace, cluster_domain)
    if service_ns is None:
        return None
    return Peer("prefix", f"spiffe://{trust_domain}/ns/{service_ns}/sa/")


def _outside_the_cluster(upstream: Upstream) -> str:
    return (
        f"proxy.io/upstreams: {upstream.host}:{upstream.port} is not a service of this "
        "cluster, and mTLS is strict: pin its identity in proxy.io/upstream-identities, or "
        "leave it out of proxy.io/upstreams to reach it directly"
    )


def identity_volume(settings: Mtls) -> Json:
    """Read-only by construction: a projected volume, or a CSI volume with readOnly (which
    the driver requires)."""
    if settings.identity == "csi-spiffe":
        attributes = {"spiffe.csi.cert-manager.io/fs-group": str(PROXY_GID)}
        csi = {"driver": settings.csi_driver, "readOnly": True, "volumeAttributes": attributes}
        return {"name": IDENTITY_VOLUME, "csi": csi}
    certificate = {
        "signerName": settings.signer_name,
        "keyType": settings.key_type,
        "maxExpirationSeconds": settings.max_expiration_seconds,
        **POD_CERTIFICATE_FILES,
    }
    # Without a labelSelector a signerName matches no bundle; optional, so a pod whose
    # signer has published none yet starts, and says so on :15021/identity.
    bundle = {
        "signerName": settings.signer_name,
        "labelSelector": {},
        "path": "ca.pem",
        "optional": True,
    }
    sources = [{"podCertificate": certificate}, {"clusterTrustBundle": bundle}]
    return {"name": IDENTITY_VOLUME, "projected": {"sources": sources}}


def sds_volume() -> Json:
    """Filled by the init container (``sds_args``); read-only in the proxy, in nothing else."""
    return memory_volume(SDS_VOLUME, SMALL_VOLUME)


def proxy_mounts() -> list[Json]:
    return [
        {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": True},
        {"name": SDS_VOLUME, "mountPath": SDS_DIR, "readOnly": True},
    ]


def init_mount() -> Json:
    return {"name": SDS_VOLUME, "mountPath": SDS_DIR}


@lru_cache(maxsize=8)
def sds_documents(files: IdentityFiles) -> tuple[tuple[str, str], ...]:
    """The two SDS files, as (file name, JSON): each one Secret, its files watched
    through the volume's directory, which the kubelet changes by swapping a ``..data``
    symlink. The same for every pod of an identity source: made once."""
    watched = {"path": IDENTITY_DIR}
    certificate = {
        "certificate_chain": {"filename": files.certificate},
        "private_key": {"filename": files.key},
        "watched_directory": watched,
    }
    bundle = {"trusted_ca": {"filename": files.trust_bundle}, "watched_directory": watched}
    secrets = {
        CERTIFICATE_SECRET: {"name": CERTIFICATE_SECRET, "tls_certificate": certificate},
        TRUST_BUNDLE_SECRET: {"name": TRUST_BUNDLE_SECRET, "validation_context": bundle},
    }
    return tuple(
        (SDS_FILES[name], orjson.dumps({"resources": [{"@type": _SECRET_TYPE, **secret}]}).decode())
        for name, secret in secrets.items()
    )


@lru_cache(maxsize=8)
def sds_args(files: IdentityFiles) -> tuple[str, ...]:
    """The init container's flags that write the SDS files (``proxy-injector
    init-iptables`` and ``validate-interception`` both take them)."""
    args: list[str] = ["--sds-dir", SDS_DIR]
    for name, document in sds_documents(files):
        args += ["--sds-file", f"{name}={document}"]
    return tuple(args)
