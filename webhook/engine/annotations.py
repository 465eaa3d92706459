"""The one table of ``proxy.io/*`` pod annotations.

Parsing, denial messages, warnings about unknown keys and the README's annotation table
all come from ``ANNOTATIONS``: add an annotation here and it exists everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal

from webhook.engine import limits, values
from webhook.engine.names import INJECT_KEY, PREFIX, WRITTEN_KEYS
from webhook.engine.values import quote


@dataclass(frozen=True, slots=True)
class Annotation:
    key: str
    attr: str
    parse: Callable[[str], object]
    accepts: str
    default: str
    help: str


ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(
        INJECT_KEY,
        "inject",
        values.boolean,
        '"true" or "false"',
        "namespace label",
        'Opt this pod out (`"false"`, as an annotation or a label). To opt one pod in, in a '
        'namespace with no `proxy.io/inject` label, label it `proxy.io/inject: "true"`: the '
        "webhook's selectors read labels, so the annotation alone is never seen.",
    ),
    Annotation(
        "proxy.io/concurrency",
        "concurrency",
        values.int_range(1, 64),
        "an integer from 1 to 64",
        "proxy CPU limit rounded up, at least 2",
        "Envoy worker threads.",
    ),
    Annotation(
        "proxy.io/image",
        "image",
        values.image,
        "a container image reference",
        "mesh config `proxyImage`",
        "Envoy image of the sidecar.",
    ),
    Annotation(
        "proxy.io/cpu",
        "cpu",
        values.quantity,
        "a positive Kubernetes quantity",
        "mesh config `resources.cpu`",
        "CPU request of the sidecar.",
    ),
    Annotation(
        "proxy.io/memory",
        "memory",
        values.quantity,
        "a positive Kubernetes quantity",
        "mesh config `resources.memory`",
        "Memory request of the sidecar.",
    ),
    Annotation(
        "proxy.io/cpu-limit",
        "cpu_limit",
        values.quantity,
        "a positive Kubernetes quantity",
        "mesh config `resources.cpuLimit`",
        "CPU limit of the sidecar.",
    ),
    Annotation(
        "proxy.io/memory-limit",
        "memory_limit",
        values.quantity,
        "a positive Kubernetes quantity",
        "mesh config `resources.memoryLimit`",
        "Memory limit of the sidecar.",
    ),
    Annotation(
        "proxy.io/log-level",
        "log_level",
        values.one_of(*values.ENVOY_LOG_LEVELS),
        "one of " + ", ".join(values.ENVOY_LOG_LEVELS),
        "mesh config `logLevel`",
        "Envoy log level.",
    ),
    Annotation(
        "proxy.io/upstream",
        "upstream",
        values.one_of("auto", "uds", "tcp"),
        '"auto", "uds" or "tcp"',
        "mesh config `upstream`",
        "How Envoy reaches the app: `auto` its Unix socket on /dev/shm while the app listens "
        "there, else TCP on loopback; `uds` the socket only; `tcp` loopback only.",
    ),
    Annotation(
        "proxy.io/uds-ports",
        "uds_ports",
        values.port_refs,
        "comma-separated container port numbers or names",
        "every TCP port of the app containers",
        "Ports whose traffic Envoy delivers over a Unix socket.",
    ),
    Annotation(
        "proxy.io/uds-path",
        "uds_path",
        values.socket_template,
        "an absolute path under /dev/shm/, with optional {container} and {port}",
        "mesh config `udsPath`",
        "Where each app socket lives.",
    ),
    Annotation(
        "proxy.io/shm-size",
        "shm_size",
        values.quantity,
        "a positive Kubernetes quantity",
        "half the app containers' memory limits, else mesh config `shm.defaultSize`",
        "sizeLimit of the shared /dev/shm volume.",
    ),
    Annotation(
        "proxy.io/shm",
        "shm",
        values.one_of("pod", "host"),
        '"pod" or "host"',
        '"pod"',
        "`host`: the app containers get the node's /dev/shm and the pod hostIPC, to share "
        "memory with a node agent; the app's sockets move to mesh config `socketDir`. Only in "
        "namespaces listed in mesh config `nodeShm.namespaces`.",
    ),
    Annotation(
        "proxy.io/node-sockets",
        "node_sockets",
        values.node_dirs,
        f"comma-separated absolute node directories, at most {values.NODE_DIRS_MAX}",
        "none",
        "Node directories mounted read-write at the same path in the app containers (a node "
        "agent's Unix socket). Only in namespaces listed in mesh config `nodeShm.namespaces`, "
        "and only under `nodeShm.socketDirs`.",
    ),
    Annotation(
        "proxy.io/interception",
        "interception",
        values.one_of("init-container", "cni"),
        '"init-container" or "cni"',
        "mesh config `interception`",
        "How the pod's traffic is sent to Envoy: `init-container` (proxy-init, with NET_ADMIN "
        "and NET_RAW, as root) or `cni` (the node's proxy-injector CNI plugin; the pod gets "
        "only the unprivileged proxy-validate and passes Pod Security restricted).",
    ),
    Annotation(
        "proxy.io/include-inbound-ports",
        "include_inbound_ports",
        values.ports_or_all,
        'comma-separated ports 1..65535, or "*"',
        "mesh config `includeInboundPorts`",
        "Inbound ports redirected to Envoy.",
    ),
    Annotation(
        "proxy.io/exclude-inbound-ports",
        "exclude_inbound_ports",
        values.ports,
        "comma-separated ports 1..65535",
        "mesh config `excludeInboundPorts`",
        "Inbound ports that bypass Envoy.",
    ),
    Annotation(
        "proxy.io/exclude-outbound-ports",
        "exclude_outbound_ports",
        values.ports,
        "comma-separated ports 1..65535",
        "mesh config `excludeOutboundPorts`",
        "Outbound destination ports that bypass Envoy.",
    ),
    Annotation(
        "proxy.io/include-outbound-ip-ranges",
        "include_outbound_ip_ranges",
        values.cidrs_or_all,
        'comma-separated IPv4/IPv6 CIDRs, or "*"',
        "mesh config `includeOutboundIPRanges`",
        "Outbound destinations redirected to Envoy.",
    ),
    Annotation(
        "proxy.io/exclude-outbound-ip-ranges",
        "exclude_outbound_ip_ranges",
        values.cidrs,
        "comma-separated IPv4/IPv6 CIDRs",
        "mesh config `excludeOutboundIPRanges`",
        "Outbound destinations that bypass Envoy.",
    ),
    Annotation(
        "proxy.io/http-ports",
        "http_ports",
        values.port_refs,
        "comma-separated container port numbers or names",
        "ports named http*, http2*, grpc* or h2c*",
        "App ports Envoy proxies as HTTP (per-request stats, access log) instead of TCP.",
    ),
    Annotation(
        "proxy.io/tcp-ports",
        "tcp_ports",
        values.port_refs,
        "comma-separated container port numbers or names",
        "ports named tcp or tcp-*",
        "App ports whose clients may wait for the server to speak first (MySQL, SMTP): "
        "never held for sniffing with mTLS strict, and at most 0.2 s in permissive.",
    ),
    Annotation(
        "proxy.io/upstreams",
        "upstreams",
        values.upstreams,
        "comma-separated service:port, each optionally followed by /http, /grpc or /tcp; "
        "the service a DNS name",
        "none",
        "Services the app calls; each gets its own cluster, stats, retries and ejection, and "
        "is balanced per request across every address its name resolves to. `/tcp`: opaque "
        "bytes, never sniffed (databases, server-first protocols); `/grpc`: HTTP/2; "
        "`/http`: HTTP/1.1 or h2c; none: sniffed for at most 0.1 s, else TCP.",
    ),
    Annotation(
        "proxy.io/upstream-timeouts",
        "upstream_timeouts",
        values.per_upstream(values.duration, "service:port=2s"),
        "comma-separated `service:port=duration` (`0s`: none), each service:port one of "
        "proxy.io/upstreams",
        "mesh config `upstreamPolicy.requestTimeout`",
        "How long a request to an HTTP upstream may take, retries included (504 after).",
    ),
    Annotation(
        "proxy.io/upstream-per-try-timeouts",
        "upstream_per_try_timeouts",
        values.per_upstream(values.duration, "service:port=500ms"),
        "comma-separated `service:port=duration` (`0s`: none), each one of proxy.io/upstreams",
        "mesh config `upstreamPolicy.perTryTimeout`",
        "How long each try of a request to an HTTP upstream may take before it is retried.",
    ),
    Annotation(
        "proxy.io/upstream-retries",
        "upstream_retries",
        values.per_upstream(values.int_range(0, 10), "service:port=3"),
        "comma-separated `service:port=count` (0 to 10), each one of proxy.io/upstreams",
        "mesh config `upstreamPolicy.retries`",
        "How many times a request to an HTTP upstream is retried (on mesh config "
        "`upstreamPolicy.retryOn`).",
    ),
    Annotation(
        "proxy.io/upstream-max-connections",
        "upstream_max_connections",
        values.per_upstream(values.int_range(1, 1_000_000), "service:port=100"),
        "comma-separated `service:port=count`, each one of proxy.io/upstreams",
        "mesh config `upstreamPolicy.maxConnections`",
        "Circuit breaker: connections to the upstream at once (TCP and HTTP/1.1).",
    ),
    Annotation(
        "proxy.io/upstream-max-pending-requests",
        "upstream_max_pending_requests",
        values.per_upstream(values.int_range(1, 1_000_000), "service:port=100"),
        "comma-separated `service:port=count`, each one of proxy.io/upstreams",
        "mesh config `upstreamPolicy.maxPendingRequests`",
        "Circuit breaker: requests waiting for a connection to the upstream (503 beyond).",
    ),
    Annotation(
        "proxy.io/upstream-max-requests",
        "upstream_max_requests",
        values.per_upstream(values.int_range(1, 1_000_000), "service:port=100"),
        "comma-separated `service:port=count`, each one of proxy.io/upstreams",
        "mesh config `upstreamPolicy.maxRequests`",
        "Circuit breaker: requests in flight to the upstream at once.",
    ),
    Annotation(
        "proxy.io/outbound-policy",
        "outbound_policy",
        values.one_of("allow-any", "declared-only"),
        '"allow-any" or "declared-only"',
        "mesh config `outbound.policy`",
        "`declared-only`: connections to destinations not in proxy.io/upstreams are refused "
        "(HTTP 502 with `x-proxy-refused`, TCP closed), counted in the proxy's "
        "`envoy_outbound_refused{port}`; excluded ports and CIDRs still bypass the proxy.",
    ),
    Annotation(
        "proxy.io/access-log",
        "access_log",
        values.one_of("off", "text", "json"),
        '"off", "text" or "json"',
        "mesh config `accessLog.format`",
        "The proxy's access log on its stdout: `json` writes one object a request (and a "
        "connection, with mesh config `accessLog.tcp`), fields in docs/operations.md.",
    ),
    Annotation(
        "proxy.io/trace-sampling",
        "trace_sampling",
        values.percent,
        "a percentage from 0 to 100",
        "mesh config `tracing.samplingPercent`",
        "Share of the requests starting a trace here that are traced (spans to mesh "
        "config `tracing.collector`; ignored while it is unset).",
    ),
    Annotation(
        "proxy.io/outbound-uds",
        "outbound_uds",
        values.boolean,
        '"true" or "false"',
        '"false"',
        "Envoy also takes the app's egress HTTP on /dev/shm/proxy-outbound.sock.",
    ),
    Annotation(
        "proxy.io/mtls",
        "mtls",
        values.one_of("off", "permissive", "strict"),
        '"off", "permissive" or "strict"',
        "mesh config `mtls.mode`",
        "Mutual TLS with other meshed pods: `permissive` accepts mTLS and plaintext and "
        "calls declared upstreams over mTLS where they answer it; `strict` accepts and calls "
        "mTLS only, and the proxy is not ready without a certificate. Needs mesh config "
        "`mtls.identity`.",
    ),
    Annotation(
        "proxy.io/allow-from",
        "allow_from",
        values.peers,
        "comma-separated SPIFFE IDs (`/*` at the end for any under it), `ns/NAMESPACE` or "
        "`ns/NAMESPACE/sa/ACCOUNT`",
        "any identity of the trust domain",
        "Only these peers reach the app's ports (403 on HTTP ports, connection closed on "
        "TCP ports, counted in the proxy's `http.inbound_<port>_mtls.rbac.denied` or "
        "`tcp.inbound_<port>_mtls.rbac.denied`); plaintext is refused whatever the mode.",
    ),
    Annotation(
        "proxy.io/upstream-identities",
        "upstream_identities",
        values.upstream_peers,
        "comma-separated `service:port=peer`, each service:port one of proxy.io/upstreams, "
        "the peer as in proxy.io/allow-from",
        "any identity in the service's namespace",
        "Who each declared upstream must prove to be over mTLS. A pinned upstream is "
        "called over mTLS only, in `permissive` too: no plaintext fallback.",
    ),
    Annotation(
        "proxy.io/drain-duration",
        "drain_duration",
        values.duration,
        "a duration like 5s or 1m30s, at most 1h",
        "mesh config `drainDuration`",
        "How long a proxy in a regular container (not a native sidecar) drains once the "
        "pod is terminating before it waits for the app to finish.",
    ),
    Annotation(
        "proxy.io/rewrite-probes",
        "rewrite_probes",
        values.boolean,
        '"true" or "false"',
        '"true"',
        "Send the app's probes on socket ports through the proxy's port 15021.",
    ),
    Annotation(
        "proxy.io/native-sidecar",
        "native_sidecar",
        values.boolean,
        '"true" or "false"',
        "mesh config `nativeSidecar`",
        "Run the proxy as a native sidecar (Kubernetes 1.29+): starts before, stops after the app.",
    ),
    Annotation(
        "proxy.io/hold-application-until-proxy-starts",
        "hold_application",
        values.boolean,
        '"true" or "false"',
        '"false"',
        "Classic mode: start the proxy first and the app only once Envoy is ready.",
    ),
)

BY_KEY: dict[str, Annotation] = {a.key: a for a in ANNOTATIONS}
_KNOWN_KEYS = (*BY_KEY, *sorted(WRITTEN_KEYS))


@dataclass(frozen=True, slots=True)
class Overrides:
    """Parsed annotation values; ``None`` where the pod does not set the annotation."""

    inject: bool | None = None
    concurrency: int | None = None
    image: str | None = None
    cpu: Decimal | None = None
    memory: Decimal | None = None
    cpu_limit: Decimal | None = None
    memory_limit: Decimal | None = None
    log_level: str | None = None
    upstream: str | None = None
    uds_ports: tuple[int | str, ...] | None = None
    uds_path: str | None = None
    shm_size: Decimal | None = None
    shm: str | None = None
    interception: str | None = None
    node_sockets: tuple[str, ...] | None = None
    include_inbound_ports: tuple[int, ...] | str | None = None
    exclude_inbound_ports: tuple[int, ...] | None = None
    exclude_outbound_ports: tuple[int, ...] | None = None
    include_outbound_ip_ranges: tuple[str, ...] | str | None = None
    exclude_outbound_ip_ranges: tuple[str, ...] | None = None
    http_ports: tuple[int | str, ...] | None = None
    tcp_ports: tuple[int | str, ...] | None = None
    upstreams: tuple[tuple[str, int, str | None], ...] | None = None
    upstream_timeouts: tuple[tuple[tuple[str, int], float], ...] | None = None
    upstream_per_try_timeouts: tuple[tuple[tuple[str, int], float], ...] | None = None
    upstream_retries: tuple[tuple[tuple[str, int], int], ...] | None = None
    upstream_max_connections: tuple[tuple[tuple[str, int], int], ...] | None = None
    upstream_max_pending_requests: tuple[tuple[tuple[str, int], int], ...] | None = None
    upstream_max_requests: tuple[tuple[tuple[str, int], int], ...] | None = None
    outbound_policy: str | None = None
    access_log: str | None = None
    trace_sampling: float | None = None
    outbound_uds: bool | None = None
    mtls: str | None = None
    allow_from: tuple[str, ...] | None = None
    upstream_identities: tuple[tuple[tuple[str, int], str], ...] | None = None
    drain_duration: float | None = None
    rewrite_probes: bool | None = None
    native_sidecar: bool | None = None
    hold_application: bool | None = None
    raw: Mapping[str, str] = field(default_factory=dict)
    """The annotation strings as the pod gave them, for messages."""


assert {a.attr for a in ANNOTATIONS} == {f.name for f in fields(Overrides)} - {"raw"}


@dataclass(frozen=True, slots=True)
class Unknown:
    key: str
    suggestion: str | None

    def warning(self) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"unknown annotation {limits.clip(self.key, 80)} is ignored{hint}"


@dataclass(frozen=True, slots=True)
class Parsed:
    overrides: Overrides
    unknown: tuple[Unknown, ...]
    errors: tuple[str, ...]


def invalid(key: str, value: str, problem: str) -> str:
    annotation = BY_KEY[key]
    return (
        f"annotation {key}: {quote(value)} is not valid ({problem}); accepted: {annotation.accepts}"
    )


_SUGGESTED_KEY_CHARS = 100
"""Keys longer than any known one by this much cannot be a typo of one."""


def suggest(key: str) -> str | None:
    if len(key) > _SUGGESTED_KEY_CHARS:
        return None
    close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.75)
    return close[0] if close else None


def parse(annotations: Mapping[str, str]) -> Parsed:
    """Parse every ``proxy.io/*`` annotation; collects all errors rather than the first."""
    parsed: dict[str, object] = {}
    raw: dict[str, str] = {}
    unknown: list[Unknown] = []
    errors: list[str] = []
    for key, value in annotations.items():
        if not key.startswith(PREFIX) or key in WRITTEN_KEYS:
            continue
        annotation = BY_KEY.get(key)
        if annotation is None:
            # Only the first few are ever shown, so only they get a (costly) suggestion.
            shown = len(unknown) < limits.WARNINGS
            unknown.append(Unknown(key, suggest(key) if shown else None))
            continue
        raw[key] = value
        try:
            parsed[annotation.attr] = annotation.parse(value)
        except ValueError as exc:
            errors.append(invalid(key, value, str(exc)))
    return Parsed(Overrides(**parsed, raw=raw), tuple(unknown), tuple(errors))


def markdown_table() -> str:
    """The README's annotation table."""
    rows = ["| annotation | accepts | default | what it does |", "|---|---|---|---|"]
    rows += [f"| `{a.key}` | {a.accepts} | {a.default} | {a.help} |" for a in ANNOTATIONS]
    return "\n".join(rows) + "\n"


@dataclass(frozen=True, slots=True)
class Seen:
    """One proxy.io/* annotation as the engine reads it, for people (``explain``)."""

    key: str
    value: str
    parsed: object = None
    error: str | None = None
    known: bool = True
    suggestion: str | None = None


def describe(annotations: Mapping[str, str]) -> list[Seen]:
    """Every ``proxy.io/*`` annotation with its parsed value, its error, or, for a key the
    table does not know, the closest one. The same parsers ``parse`` uses."""
    seen = []
    for key, value in annotations.items():
        if not key.startswith(PREFIX) or key in WRITTEN_KEYS:
            continue
        annotation = BY_KEY.get(key)
        if annotation is None:
            seen.append(Seen(key, value, known=False, suggestion=suggest(key)))
            continue
        try:
            seen.append(Seen(key, value, parsed=annotation.parse(value)))
        except ValueError as exc:
            seen.append(Seen(key, value, error=invalid(key, value, str(exc))))
    return seen
