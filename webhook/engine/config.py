"""The mesh-wide config: every field has a default; a YAML file (a mounted ConfigMap) overrides.

Loaded and validated once at start-up; the admission path only reads the frozen result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from webhook.engine import values
from webhook.engine.annotations import quote
from webhook.engine.names import DEFAULT_REVISION


def _checked(parse: Callable[[str], Any], optional: bool = False) -> BeforeValidator:
    """Validate a field with the same parser its annotation uses; lists become "a,b";
    ``optional``: null is left null."""

    def validate(raw: object) -> Any:
        if raw is None and optional:
            return None
        if isinstance(raw, list | tuple):
            raw = ",".join(str(item) for item in raw)
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {type(raw).__name__}")
        return parse(raw)

    return BeforeValidator(validate)


Quantity = Annotated[Decimal, _checked(values.quantity)]
PortsOrAll = Annotated[tuple[int, ...] | str, _checked(values.ports_or_all)]
Ports = Annotated[tuple[int, ...], _checked(values.ports)]
CidrsOrAll = Annotated[tuple[str, ...] | str, _checked(values.cidrs_or_all)]
Cidrs = Annotated[tuple[str, ...], _checked(values.cidrs)]
Duration = Annotated[float, _checked(values.duration)]
SecretNames = Annotated[tuple[str, ...], _checked(values.dns_names)]
NodeDirs = Annotated[tuple[str, ...], _checked(values.node_dirs)]


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class ProxyResources(_Section):
    cpu: Quantity = Decimal("0.1")
    memory: Quantity = Decimal(128 * 2**20)
    cpu_limit: Quantity = Decimal(2)
    memory_limit: Quantity = Decimal(2**30)


class Shm(_Section):
    size_fraction: float = Field(0.5, gt=0, le=1)
    """sizeLimit of /dev/shm as a fraction of the app containers' memory limits."""
    default_size: Quantity = Decimal(64 * 2**20)
    """sizeLimit when no app container has a memory limit."""


class NodeShm(_Section):
    """Who may reach into the node (proxy.io/shm: host, proxy.io/node-sockets)."""

    namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may have hostIPC, the node's /dev/shm and node directories."""
    socket_dirs: NodeDirs = ()
    """Node directories (and what lies under them) that proxy.io/node-sockets may mount."""


class UpstreamPolicy(_Section):
    """How the sidecar talks to each dependency declared in proxy.io/upstreams. The request
    timeout, per-try timeout, retry count and the three connection and request limits can
    be set per upstream by a proxy.io/upstream-* annotation; the rest is mesh-wide."""

    connect_timeout: Duration = 1.0
    request_timeout: Duration = 60.0
    """How long a request to a declared HTTP upstream may take, retries included (0: none).
    Streams (gRPC streaming, server-sent events, long polls) need 0s on their upstream."""
    per_try_timeout: Duration = 0.0
    """How long each try may take (0: only the request timeout bounds it)."""
    retries: int = Field(2, ge=0, le=10)
    """The retry count: how many times one request is retried (per request)."""
    retry_on: str = Field(
        "connect-failure,refused-stream,unavailable,cancelled,reset",
        pattern=r"^[a-z0-9-]+(,[a-z0-9-]+)*$",
    )
    max_connections: int = Field(1024, ge=1)
    max_pending_requests: int = Field(1024, ge=1)
    max_requests: int = Field(1024, ge=1)
    max_active_retries: int = Field(
        3,
        ge=0,
        validation_alias=AliasChoices("maxActiveRetries", "max_active_retries", "maxRetries"),
    )
    """The circuit breaker's cap: retries in flight at once to the upstream, across all
    requests (not the per-request count, ``retries``). ``maxRetries``, its name before
    0.3.0, is still read."""
    consecutive_5xx: int = Field(5, ge=1, alias="consecutive5xx")
    outlier_interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: int = Field(50, ge=0, le=100)
    lb_policy: Literal["RANDOM", "ROUND_ROBIN", "LEAST_REQUEST"] = "RANDOM"
    """RANDOM by default: as good as round robin for a Service's few endpoints, and 1.7 KiB
    less per declared upstream (bench/envoy_memory.py)."""
    dns_refresh: Annotated[float, _checked(values.duration), Field(gt=0)] = 5.0
    """How often each upstream's name is resolved again when its DNS answer has no TTL
    (with a TTL, as often as it says: CoreDNS gives 5 s): a headless Service's pods as
    they come and go."""


class Outbound(_Section):
    policy: Literal["allow-any", "declared-only"] = "allow-any"
    """declared-only: the app reaches only what proxy.io/upstreams declares (and the
    excluded ports and CIDRs, which bypass the proxy)."""


class AccessLog(_Section):
    """The proxy's access log on its stdout: one line a request (HTTP) or a connection
    (TCP, with ``tcp``), inbound always, outbound with ``outbound``."""

    format: Literal["off", "text", "json"] = "text"
    outbound: bool = False
    tcp: bool = False


class Tracing(_Section):
    """Envoy's OpenTelemetry tracer, spans sent over OTLP/gRPC to ``collector``; nothing is
    added to the bootstrap while it is unset."""

    collector: Annotated[str | None, _checked(values.service_address, optional=True)] = None
    sampling_percent: Annotated[float, _checked(values.percent)] = 1.0
    """Of the requests that start a trace here (no sampled traceparent came with them)."""


class Cni(_Section):
    """The CNI agent on each node (interception: cni)."""

    exclude_namespaces: tuple[str, ...] = ("kube-system", "proxy-system")
    """Pods here pass through the plugin without an API call, agent up or down."""
    repair: Literal["delete", "label", "off"] = "delete"
    """Pods that started without their interception (proxy-validate exit code 95): delete
    them so their controller makes them again, only label them, or leave them."""
    repair_per_minute: int = Field(30, ge=1, le=600)
    add_timeout: Annotated[float, _checked(values.duration), Field(gt=0, le=120)] = 10.0
    """One deadline for a whole ADD, the API read included; past it, code 11 (try again)."""


MtlsMode = Literal["off", "permissive", "strict"]
KEY_TYPES = ("ECDSAP256", "ECDSAP384", "ECDSAP521", "ED25519", "RSA3072", "RSA4096")
"""What PodCertificateProjection.keyType accepts (and Envoy serves: each was tried)."""


class Mtls(_Section):
    """Mutual TLS between meshed pods, with identities the cluster issues as files."""

    mode: MtlsMode | None = None
    """Unset: permissive once an identity source is set, off while identity is none."""
    identity: Literal["none", "pod-certificate", "csi-spiffe"] = "none"
    trust_domain: Annotated[str, _checked(values.dns_name)] = "cluster.local"
    signer_name: Annotated[str, _checked(values.signer_name)] = "proxy.io/spiffe"
    key_type: Literal[KEY_TYPES] = "ECDSAP256"  # type: ignore[valid-type]
    max_expiration_seconds: int = Field(86400, ge=3600, le=7862400)
    """The API server refuses less than an hour and more than 91 days."""
    csi_driver: Annotated[str, _checked(values.dns_name)] = "spiffe.csi.cert-manager.io"

    @model_validator(mode="after")
    def _needs_identity(self) -> Mtls:
        if self.identity == "none" and self.mode in ("permissive", "strict"):
            raise ValueError(
                f"mode {self.mode} needs an identity source: set mtls.identity to "
                "pod-certificate or csi-spiffe"
            )
        return self

    @property
    def default_mode(self) -> MtlsMode:
        if self.mode is not None:
            return self.mode
        return "off" if self.identity == "none" else "permissive"


class MeshConfig(_Section):
    revision: Annotated[str, _checked(values.revision)] = DEFAULT_REVISION
    """Which injector this is (components/revision sets it): recorded in proxy.io/status."""
    proxy_image: Annotated[str, _checked(values.image)] = "envoyproxy/envoy:v1.40.0"
    init_image: Annotated[str, _checked(values.image)] = "proxy-injector:0.3.0"
    image_pull_secrets: SecretNames = ()
    """Merged into each injected pod's spec.imagePullSecrets (a private registry)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Of the proxy and proxy-init; None leaves Kubernetes' default."""
    concurrency: int | None = Field(None, ge=1, le=64)
    """Envoy workers; unset means the proxy CPU limit rounded up, at least 2."""
    log_level: Annotated[str, _checked(values.one_of(*values.ENVOY_LOG_LEVELS))] = "warning"
    upstream: Literal["auto", "uds", "tcp"] = "auto"
    """auto: each app port's socket while the app listens there, else 127.0.0.1:port;
    uds: the socket only (the proxy is unready without it); tcp: loopback only."""
    uds_path: Annotated[str, _checked(values.socket_template)] = "/dev/shm/{container}-{port}.sock"
    socket_dir: Annotated[str, _checked(values.socket_dir)] = "/var/run/proxy"
    """Where the app's sockets live in pods with proxy.io/shm: host (the udsPath template's
    /dev/shm/ stands for it there): never in the node's /dev/shm."""
    resources: ProxyResources = ProxyResources()
    shm: Shm = Shm()
    node_shm: NodeShm = NodeShm()
    never_inject_namespaces: tuple[str, ...] = ("proxy-system", "kube-system")
    inject_by_default: bool = False
    """Injection for namespaces without the proxy.io/inject label (offline `inject` only)."""
    interception: Literal["init-container", "cni"] = "init-container"
    """init-container: proxy-init (NET_ADMIN, NET_RAW, root) programs the pod's iptables;
    cni: the node's proxy-injector CNI plugin does, and the pod passes Pod Security restricted."""
    pod_security_namespaces: tuple[str, ...] = ()
    """Namespaces that enforce Pod Security baseline or restricted: a pod injected there in
    init-container mode gets a warning (the webhook cannot see namespace labels)."""
    include_inbound_ports: PortsOrAll = "*"
    exclude_inbound_ports: Ports = ()
    exclude_outbound_ports: Ports = ()
    include_outbound_ip_ranges: CidrsOrAll = Field("*", alias="includeOutboundIPRanges")
    exclude_outbound_ip_ranges: Cidrs = Field((), alias="excludeOutboundIPRanges")
    dual_stack: bool = True
    """Envoy also listens on IPv6 (::), so IPv6 traffic the init container redirects lands
    somewhere. Turn off only for nodes booted with ipv6.disable=1."""
    native_sidecar: bool = True
    """The proxy as a native sidecar (an init container with restartPolicy Always, 1.29+)."""
    deny_proxy_uid_apps: bool = False
    """Deny, instead of warning about, app containers running as the proxy's UID or GID 1337."""
    drain_duration: Duration = 5.0
    """Envoy's --drain-time-s; a regular proxy container's preStop hook drains at least
    this long. A native sidecar stops only after the app has exited: nothing to drain."""
    cluster_domain: Annotated[str, _checked(values.dns_name)] = "cluster.local"
    events: bool = True
    """A Kubernetes Event for each injection, skip and denial (on the pod's controller)."""
    upstream_policy: UpstreamPolicy = UpstreamPolicy()
    outbound: Outbound = Outbound()
    access_log: AccessLog = AccessLog()
    tracing: Tracing = Tracing()
    cni: Cni = Cni()
    mtls: Mtls = Mtls()

    @cached_property
    def generation(self) -> str:
        """A short hash of every field: which config is in force (the metrics say it)."""
        return _digest(self.model_dump(by_alias=True))

    @cached_property
    def sidecar_generation(self) -> str:
        """A short hash of the fields that shape an injected pod, recorded in its
        proxy.io/status: pods injected under other values are stale (``check``), and a
        change to which pods are injected or to Events makes none stale."""
        at_default = {
            name for name in _DIGESTED_ONCE_SET if getattr(self, name) == _FIELDS[name].default
        }
        return _digest(self.model_dump(by_alias=True, exclude=_NOT_IN_THE_POD | at_default))


_NOT_IN_THE_POD = {
    "revision",
    "cni",
    "events",
    "inject_by_default",
    "never_inject_namespaces",
    "deny_proxy_uid_apps",
    "node_shm",
    "pod_security_namespaces",
}


_FIELDS = MeshConfig.model_fields
_DIGESTED_ONCE_SET = ("access_log", "tracing")
"""Sections newer than 0.3.0, left out of the digest at their defaults (which make the
sidecar 0.3.0 made): pods injected before them are not stale for their arrival."""


def _canonical(value: Any) -> Any:
    """Quantities by their value: "64Mi" read from a file and the default 64 MiB are the
    same config (their Decimals differ in exponent, so their JSON text differed)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value.normalize())
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def _digest(fields: dict[str, Any]) -> str:
    canonical = orjson.dumps(_canonical(fields), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:12]


class ConfigError(ValueError):
    pass


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = error.get("input")
    shown = quote(value) if isinstance(value, str) else repr(value)
    problem = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    return f"{where}: {shown} is not valid ({problem})"


def from_mapping(data: object, source: str = "mesh config") -> MeshConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors(include_url=False)]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


MAX_BYTES = 1 << 20
"""A mesh config is small and hand-written; a larger file is refused unread."""
MAX_DEPTH = 32


class _PlainYaml(yaml.SafeLoader):
    """YAML without aliases (``*name``), which can make a few hundred bytes expand into
    gigabytes, and nested at most MAX_DEPTH deep."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None,
                None,
                "aliases (*name) are not allowed in mesh config: a config is small and "
                "hand-written, so write the value out",
                mark,
            )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_PlainYaml)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


def parse(text: str, source: str = "mesh config") -> MeshConfig:
    """A mesh config from its YAML text; ConfigError naming ``source`` and the field."""
    return from_mapping(_yaml(text, source), source)


def _merged(into: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``into``: mappings merged key by key, anything else replaced."""
    result = dict(into)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


def parse_layers(texts: list[tuple[str, str]], source: str) -> MeshConfig:
    """A mesh config from several YAML texts, (name, text) in order, each laid over the
    ones before (the base, then each kustomize component's fragment): the fields a
    fragment sets replace the base's, mappings merged key by key."""
    data: dict[str, Any] = {}
    for name, text in texts:
        layer = _yaml(text, f"{source}: {name}")
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise ConfigError(f"{source}: {name}: expected a mapping at the top level")
        data = _merged(data, layer)
    return from_mapping(data, source)


def layer_order(names: list[str]) -> list[str]:
    """The files of a mesh config directory in the order they apply: mesh.yaml, the base,
    first, then every other ``*.yaml`` by name."""
    found = [n for n in names if n.endswith(".yaml") and not n.startswith(".")]
    return sorted(found, key=lambda name: (name != BASE_FILE, name))


BASE_FILE = "mesh.yaml"
