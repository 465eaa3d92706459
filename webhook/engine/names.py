"""Names other tools rely on: container, volume, port and env var names of an injected pod.

Changing any of these breaks clusters that already run injected pods: treat them as an API.
"""

PREFIX = "proxy.io/"
INJECT_KEY = "proxy.io/inject"
REVISION_KEY = "proxy.io/rev"
"""A label, on a namespace or a pod: which revision of the injector (components/revision)."""
DEFAULT_REVISION = "default"
REVISION_LABEL = "proxy.io/revision"
"""On a revision's own objects (its mesh ConfigMap, its webhook's pods): whose they are."""
STATUS_KEY = "proxy.io/status"

PROXY_CONTAINER = "proxy"
INIT_CONTAINER = "proxy-init"
VALIDATE_CONTAINER = "proxy-validate"
"""interception: cni: the unprivileged init container that checks the plugin's redirect."""
INTERCEPTION_KEY = "proxy.io/interception-spec"
"""interception: cni: what the CNI plugin applies, written by the injector (versioned JSON)."""
INTERCEPTION_SPEC_VERSION = 1
SDS_IDENTITY_KEY = "proxy.io/sds-identity"
SDS_TRUST_BUNDLE_KEY = "proxy.io/sds-trust-bundle"
"""Written by earlier releases (the SDS files through the downward API, which anyone
allowed to patch the pod could change): never read, and not warned about on older pods."""
WRITTEN_KEYS = frozenset({STATUS_KEY, INTERCEPTION_KEY, SDS_IDENTITY_KEY, SDS_TRUST_BUNDLE_KEY})
"""Annotations the injector writes: never read as settings, never warned about."""
SHM_VOLUME = "proxy-shm"
SHM_MOUNT_PATH = "/dev/shm"
NODE_SHM_VOLUME = "proxy-node-shm"
"""proxy.io/shm: host: the node's /dev/shm, mounted at /dev/shm in the app containers."""
NODE_SOCKETS_VOLUME = "proxy-node-sockets-{index}"
"""proxy.io/node-sockets: one per node directory, in the annotation's order from 0."""
IDENTITY_VOLUME = "proxy-identity"
IDENTITY_DIR = "/var/run/proxy-identity"
"""mTLS: the pod's certificate, key and trust bundle, mounted read-only in the proxy only."""
SDS_VOLUME = "proxy-sds"
SDS_DIR = "/var/run/proxy-sds"
"""mTLS: Envoy's SDS files, written by the init container from its own args (immutable);
mounted read-only in the proxy, in no app container."""
ADMIN_VOLUME = "proxy-admin"
ADMIN_DIR = "/var/run/proxy-admin"
ADMIN_SOCKET = f"{ADMIN_DIR}/admin.sock"
"""Envoy's admin API: a Unix socket only UID 1337 may open (mode 0600), in a volume mounted
in the proxy only. No TCP port: anything in the pod could reach one on loopback."""
DRAIN_FLAG = f"{ADMIN_DIR}/draining"
"""A regular proxy container's preStop hook creates it before asking :15021/drain, which
drains only while it exists: no other container can create it."""
MTLS_ALPN = "proxy.io-mtls"
"""The ALPN value of mTLS between sidecars: what tells the inbound listener a connection is
ours, so an app's own TLS still passes through untouched."""

PROXY_UID = 1337
PROXY_GID = 1337
VALIDATE_UID = 1338
"""proxy-validate's user: not root, and not the proxy's, whose traffic is never redirected."""

ADMIN_PORT = 15000
"""Reserved (excluded from interception, refused as an app port): Envoy's admin listened
here in earlier releases; now it is ``ADMIN_SOCKET``."""
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
READINESS_PORT = 15021
PROMETHEUS_PORT = 15090
PROXY_PORTS = (ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, READINESS_PORT, PROMETHEUS_PORT)
READINESS_PATH = "/healthz/ready"
PROMETHEUS_PATH = "/stats/prometheus"

UDS_PATH_ENV = "PROXY_UDS_PATH"
"""Env var with the socket of the container's first port; ``PROXY_UDS_PATH_<PORT>`` per port."""

SUN_PATH_MAX = 107
"""Longest socket path Linux accepts (sun_path is 108 bytes with the trailing NUL)."""

OUTBOUND_UDS_PATH = "/dev/shm/proxy-outbound.sock"
OUTBOUND_UDS_ENV = "PROXY_OUTBOUND_UDS"
"""Env var with the egress socket, when proxy.io/outbound-uds is on."""
APP_HEALTH_PATH = "/healthz/app"
"""Readiness of the proxy and of every app socket: the proxy container's readiness probe."""
APP_TRANSPORT_PATH = "/app-transport"
"""On the readiness port: a line per app port, ``8080 socket``, ``8080 tcp`` or ``8080 none``."""
IDENTITY_PATH = "/identity"
"""On the readiness port: the pod's SPIFFE ID and its certificate's notAfter, or why not."""
MTLS_PATH = "/mtls"
"""On the readiness port: per inbound port, the mTLS and plaintext connections so far."""
UPSTREAM_TRANSPORT_PATH = "/upstream-transport"
DRAIN_PATH = "/drain"
"""On the readiness port: POST drains the inbound listeners while ``DRAIN_FLAG`` exists."""
"""On the readiness port: per declared upstream, ``mtls``, ``plaintext`` or ``none``."""

ARG_MAX_BYTES = 131_071
"""Longest single argument Linux will exec (MAX_ARG_STRLEN, 128 KiB, less the NUL): the
bootstrap travels as one."""
