"""Traffic interception for one pod: the ``init-iptables`` flags, and the init container
that applies them (``proxy-init``) or, in cni mode, checks the CNI plugin applied them
(``proxy-validate``, with the spec the node's agent reads), or the denial that stops it.
With mTLS the init container also writes the proxy's SDS files from its own args.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from webhook.engine import limits, mtls, values
from webhook.engine.config import MeshConfig
from webhook.engine.json_object import Json
from webhook.engine.names import (
    ARG_MAX_BYTES,
    INBOUND_PORT,
    INIT_CONTAINER,
    INTERCEPTION_KEY,
    INTERCEPTION_SPEC_VERSION,
    OUTBOUND_PORT,
    PROXY_GID,
    PROXY_PORTS,
    PROXY_UID,
    VALIDATE_CONTAINER,
    VALIDATE_UID,
)
from webhook.engine.settings import Settings
from webhook.engine.sidecar import Resources, pulled, restricted


@dataclass(frozen=True, slots=True)
class Interception:
    """What the pod gets: its init container, and in cni mode the spec the agent applies."""

    cni: bool
    init: Json
    """proxy-init, or proxy-validate in cni mode."""
    spec: str | None
    """cni mode: the annotation the node's agent reads (proxy.io/interception-spec)."""

    @property
    def init_name(self) -> str:
        return VALIDATE_CONTAINER if self.cni else INIT_CONTAINER


def _listed(items: tuple[int, ...] | tuple[str, ...] | str) -> str:
    return items if isinstance(items, str) else ",".join(map(str, items))


@lru_cache(maxsize=256)
def init_args(settings: Settings) -> tuple[str, ...]:
    """Flags of ``proxy-injector init-iptables``: exactly what the init container runs, or
    what the CNI plugin applies (the same renderer either way). Pods of one Deployment
    share their settings: made once."""
    exclude_inbound = sorted({*PROXY_PORTS, *settings.exclude_inbound_ports})
    flags = {
        "--proxy-uid": str(PROXY_UID),
        "--proxy-gid": str(PROXY_GID),
        "--inbound-capture-port": str(INBOUND_PORT),
        "--outbound-capture-port": str(OUTBOUND_PORT),
        "--include-inbound-ports": _listed(settings.include_inbound_ports),
        "--exclude-inbound-ports": _listed(tuple(exclude_inbound)),
        "--exclude-outbound-ports": _listed(settings.exclude_outbound_ports),
        "--include-outbound-ip-ranges": _listed(settings.include_outbound_ip_ranges),
        "--exclude-outbound-ip-ranges": _listed(settings.exclude_outbound_ip_ranges),
    }
    args = ["init-iptables"]
    for flag, value in flags.items():
        if value:
            args += [flag, value]
    return tuple(args)


def init_container(
    *,
    image: str,
    args: list[str],
    limits: Resources,
    pull_policy: str | None = None,
    mounts: list[Json] | None = None,
) -> Json:
    container: Json = {
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["proxy-injector"],
        "args": args,
        "resources": limits.spec(),
        **({"volumeMounts": mounts} if mounts else {}),
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    return pulled(container, pull_policy)


VALIDATION_ADDRESSES = ("192.0.2.1", "2001:db8::1")
"""Documentation addresses (RFC 5737, 3849): nothing answers there, so a connection that
arrives is one the redirect delivered."""
VALIDATION_PORTS = (80, 8080, 9)


def validation_target(settings: Settings) -> str | None:
    """An address and port whose connections the pod's rules send to Envoy's outbound port,
    for proxy-validate to try; None when the pod redirects no outbound traffic."""
    include = settings.include_outbound_ip_ranges
    exclude = [ipaddress.ip_network(c) for c in settings.exclude_outbound_ip_ranges]
    ports = set(settings.exclude_outbound_ports)
    port = next((p for p in VALIDATION_PORTS if p not in ports), None)
    if include == values.ALL:
        candidates = [ipaddress.ip_address(a) for a in VALIDATION_ADDRESSES]
    else:
        candidates = [next(iter(ipaddress.ip_network(c).hosts())) for c in include]
    for address in candidates:
        if port is not None and not any(address in network for network in exclude):
            return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    return None


def validate_container(
    *,
    image: str,
    target: str,
    limits: Resources,
    pull_policy: str | None = None,
    extra_args: tuple[str, ...] = (),
    mounts: list[Json] | None = None,
) -> Json:
    """Checks, unprivileged, that the CNI plugin's redirect is in place before anything
    else in the pod starts: a pod on a node without the plugin fails here, not unmeshed."""
    container: Json = {
        "name": VALIDATE_CONTAINER,
        "image": image,
        "command": ["proxy-injector"],
        "args": [
            "validate-interception",
            "--connect",
            target,
            "--outbound-capture-port",
            str(OUTBOUND_PORT),
            *extra_args,
        ],
        "resources": limits.spec(),
        **({"volumeMounts": mounts} if mounts else {}),
        "securityContext": {
            "runAsUser": VALIDATE_UID,
            "runAsGroup": VALIDATE_UID,
            **restricted(),
        },
    }
    return pulled(container, pull_policy)


def _too_long_args(container: dict[str, Any]) -> list[str]:
    """The annotations an init container flag comes from can hold more than one argument
    may: such a pod would fail to start, so it is denied here."""
    args = container["args"]
    if max(map(len, args)) * 4 <= ARG_MAX_BYTES:  # UTF-8 takes at most 4 bytes a character
        return []
    return [
        f"container {container['name']} would get {flag} {len(value.encode()):,} bytes long, "
        f"more than the {ARG_MAX_BYTES:,} bytes Linux allows in one argument"
        for flag, value in itertools.pairwise(args)
        if len(value) * 4 > ARG_MAX_BYTES and len(value.encode()) > ARG_MAX_BYTES
    ]


def decide(
    pod: dict[str, Any],
    settings: Settings,
    config: MeshConfig,
    resources: Resources,
    secured: mtls.PodMtls | None,
) -> Interception | list[str]:
    """The pod's interception, or the problems that deny it (each an annotation's)."""
    flags = init_args(settings)
    sds_args = mtls.sds_args(secured.files) if secured else ()
    mounts = [mtls.init_mount()] if secured else None
    if not settings.cni:
        init = init_container(
            image=config.init_image,
            args=[*flags, *sds_args],
            limits=resources,
            pull_policy=config.image_pull_policy,
            mounts=mounts,
        )
        long_args = _too_long_args(init)
        return long_args or Interception(False, init, None)
    target = validation_target(settings)
    if target is None:
        return [_nothing_to_validate()]
    spec = _interception_spec(flags)
    too_large = _spec_too_large(pod, spec)
    if too_large:
        return [too_large]
    init = validate_container(
        image=config.init_image,
        target=target,
        limits=resources,
        pull_policy=config.image_pull_policy,
        extra_args=sds_args,
        mounts=mounts,
    )
    return Interception(True, init, spec)


def _interception_spec(init_args: tuple[str, ...]) -> str:
    """What the CNI agent applies: the init-iptables flags, versioned."""
    spec = {"version": INTERCEPTION_SPEC_VERSION, "initIptables": init_args[1:]}
    return orjson.dumps(spec).decode()


def _spec_too_large(pod: dict[str, Any], spec: str) -> str | None:
    """The spec repeats the pod's port and range annotations: with them it may take the
    annotations past what the API server accepts, which it would say without naming us."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    size = sum(len(k) + len(v) for k, v in annotations.items()) + len(INTERCEPTION_KEY) + len(spec)
    if size <= limits.ANNOTATIONS_BYTES:
        return None
    return (
        f"{INTERCEPTION_KEY} ({len(spec):,} characters, the interception flags the CNI plugin "
        f"reads) would take metadata.annotations to {size:,} characters, more than the "
        f"{limits.ANNOTATIONS_BYTES:,} bytes the API server accepts; shorten the proxy.io "
        "port and IP-range annotations"
    )


def _nothing_to_validate() -> str:
    return (
        "proxy.io/interception cni: the pod redirects no outbound address (see "
        "proxy.io/include-outbound-ip-ranges and the exclusions), so proxy-validate has "
        "nothing to check the CNI plugin's rules with"
    )


def pod_security_warnings(namespace: str, config: MeshConfig, cni: bool) -> list[str]:
    """proxy-init where the namespace enforces Pod Security: it will be refused."""
    if cni or namespace not in config.pod_security_namespaces:
        return []
    return [
        f"namespace {namespace} enforces Pod Security (mesh config podSecurityNamespaces): "
        "proxy-init runs as root with NET_ADMIN and NET_RAW, which baseline and restricted "
        "reject; use proxy.io/interception: cni with the proxy-injector CNI plugin"
    ]
