"""Parsers for the kinds of value annotations and the mesh config take.

Each parser takes the raw string and returns an immutable value, or raises ``ValueError``
saying what is wrong with it. Results are cached: the same annotation values recur on
every pod of a Deployment, so each distinct string is parsed once.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache, wraps
from typing import TypeVar

from webhook.engine import quantity as quantities
from webhook.engine.names import SHM_MOUNT_PATH

ALL = "*"
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,499}$")
_SOCKET_TEMPLATE = re.compile(r"^[A-Za-z0-9._/{}-]+$")

ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")

Parser = Callable[[str], object]
T = TypeVar("T")

CACHED_TEXT_CHARS = 1024
"""Only values up to this long are cached: a cache of huge strings would be a memory sink."""


def cached(maxsize: int) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """lru_cache for the short values that recur on every pod of a Deployment."""

    def decorate(parse: Callable[[str], T]) -> Callable[[str], T]:
        remembered = lru_cache(maxsize=maxsize)(parse)

        @wraps(parse)
        def parse_text(text: str) -> T:
            return remembered(text) if len(text) <= CACHED_TEXT_CHARS else parse(text)

        return parse_text

    return decorate


def quote(value: str, limit: int = 120) -> str:
    """A value as it may appear in a message: JSON-quoted, so newlines cannot forge lines."""
    if len(value) > limit:
        value = value[:limit] + "..."
    return json.dumps(value)


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    raise ValueError("not a boolean")


def int_range(low: int, high: int) -> Callable[[str], int]:
    @cached(maxsize=256)
    def parse(text: str) -> int:
        value = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", value):
            raise ValueError("not a whole number")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"out of range {low}..{high}")
        return number

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("not one of " + ", ".join(choices))
        return value

    return parse


@cached(maxsize=1024)
def quantity(text: str) -> Decimal:
    """A positive Kubernetes resource quantity ("500m", "1.5Gi", "2", "1e3")."""
    amount = quantities.parse(text)
    if amount <= 0:
        raise ValueError("must be greater than zero")
    return amount


@cached(maxsize=1024)
def image(text: str) -> str:
    value = text.strip()
    if not _IMAGE.fullmatch(value):
        raise ValueError("not a container image reference")
    return value


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _port(item: str) -> int:
    if not (item.isascii() and item.isdigit() and len(item) <= 5) or not 1 <= int(item) <= 65535:
        raise ValueError(f"{item!r} is not a port 1..65535")
    return int(item)


@cached(maxsize=1024)
def ports(text: str) -> tuple[int, ...]:
    """A comma-separated list of port numbers."""
    if text.strip() == ALL:
        raise ValueError("'*' is not allowed here")
    return tuple(sorted({_port(item) for item in _items(text)}))


@cached(maxsize=1024)
def ports_or_all(text: str) -> tuple[int, ...] | str:
    """A comma-separated list of port numbers, or ``*`` for every port."""
    if text.strip() == ALL:
        return ALL
    return ports(text)


@cached(maxsize=1024)
def port_refs(text: str) -> tuple[int | str, ...]:
    """A comma-separated list of container port numbers or port names."""
    refs: list[int | str] = []
    for item in _items(text):
        if item.isdigit():
            refs.append(_port(item))
        elif _PORT_NAME.fullmatch(item):
            refs.append(item)
        else:
            raise ValueError(f"{item!r} is neither a port number nor a port name")
    return tuple(refs)


MAX_CIDRS = 1024
"""Ranges in one list: each is an iptables rule every new connection walks past, and each
takes microseconds to read, so a long list is refused rather than read."""


def _cidr(item: str) -> str:
    try:
        return str(ipaddress.ip_network(item, strict=False))
    except ValueError:
        raise ValueError(f"{item!r} is not an IPv4 or IPv6 address or CIDR") from None


@cached(maxsize=1024)
def cidrs(text: str) -> tuple[str, ...]:
    """A comma-separated list of IPv4/IPv6 CIDRs; host bits are allowed, as iptables allows."""
    if text.strip() == ALL:
        raise ValueError("'*' is not allowed here")
    listed = dict.fromkeys(_items(text))
    if len(listed) > MAX_CIDRS:
        raise ValueError(f"{len(listed):,} ranges, more than the {MAX_CIDRS:,} one list may hold")
    return tuple(dict.fromkeys(_cidr(item) for item in listed))


@cached(maxsize=1024)
def cidrs_or_all(text: str) -> tuple[str, ...] | str:
    """A comma-separated list of CIDRs, or ``*`` for every destination."""
    if text.strip() == ALL:
        return ALL
    return cidrs(text)


@cached(maxsize=256)
def socket_template(text: str) -> str:
    """An absolute socket path under /dev/shm with optional {container} and {port} fields."""
    value = text.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError("contains a control character")
    if not value.startswith(SHM_MOUNT_PATH + "/"):
        raise ValueError(f"must be an absolute path under {SHM_MOUNT_PATH}/")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    if not _SOCKET_TEMPLATE.fullmatch(value):
        raise ValueError("may only use letters, digits, '.', '_', '-', '/' and {container}/{port}")
    fields = set(re.findall(r"{([^{}]*)}", value))
    if fields - {"container", "port"} or value.count("{") != len(re.findall(r"{[^{}]*}", value)):
        raise ValueError("the only fields are {container} and {port}")
    return value


_NODE_DIR = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
NODE_DIRS_MAX = 16
"""Node directories one pod may list: each is a volume and a mount in every app container."""
NODE_DIR_CHARS = 256


def node_dir(text: str) -> str:
    """An absolute directory such as /var/run/agent: no '.', '..' or empty parts, no '/'
    alone; a trailing '/' is dropped."""
    value = text.strip()
    if len(value) > NODE_DIR_CHARS:
        raise ValueError(f"longer than {NODE_DIR_CHARS} characters")
    if value != "/":
        value = value.rstrip("/")
    if not value.startswith("/") or value == "/":
        raise ValueError("must be an absolute directory other than /")
    if {".", ".."} & set(value.split("/")):
        raise ValueError("must not contain '.' or '..' parts")
    if not _NODE_DIR.fullmatch(value):
        raise ValueError("may only use letters, digits, '.', '_', '-' and '/'")
    return value


@cached(maxsize=256)
def node_dirs(text: str) -> tuple[str, ...]:
    """Comma-separated absolute directories, each once, in order."""
    items = _items(text)
    if len(items) > NODE_DIRS_MAX:
        raise ValueError(f"{len(items)} directories, more than {NODE_DIRS_MAX}")
    found: dict[str, None] = {}
    for item in items:
        try:
            found[node_dir(item)] = None
        except ValueError as exc:
            raise ValueError(f"{quote(item, 60)} {exc}") from None
    return tuple(found)


def under(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or inside it (whole path parts only)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def socket_dir(text: str) -> str:
    """Where sockets go when the pod's /dev/shm is the node's: anywhere but under it."""
    value = node_dir(text)
    if under(value, SHM_MOUNT_PATH) or under(SHM_MOUNT_PATH, value):
        raise ValueError(f"must not be {SHM_MOUNT_PATH}, inside it or above it")
    return value


def format_cpu(amount: Decimal) -> str:
    """CPU cores as a canonical quantity: whole cores plain, otherwise millicores rounded up."""
    if amount == amount.to_integral_value():
        return str(int(amount))
    return f"{int((amount * 1000).to_integral_value(rounding='ROUND_CEILING'))}m"


def format_bytes(amount: Decimal) -> str:
    """Bytes as a canonical quantity, in the largest binary unit that divides them."""
    count = int(amount.to_integral_value(rounding="ROUND_CEILING"))
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if count and count % size == 0:
            return f"{count // size}{suffix}"
    return str(count)


_DURATION = re.compile(
    r"^(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m(?!s))?(?:([0-9]{1,7})s)?(?:([0-9]{1,7})ms)?$"
)


@cached(maxsize=256)
def duration(text: str) -> float:
    """A Go-style duration ("5s", "1m30s", "500ms") in seconds, at most one hour."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if not value or not match or not any(match.groups()):
        raise ValueError("not a duration like 5s, 1m30s or 500ms")
    hours, minutes, seconds, millis = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds + millis / 1000
    if total > 3600:
        raise ValueError("longer than 1h")
    return total


_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dns_name(text: str) -> str:
    """A lower-case DNS name (RFC 1123), as Kubernetes Service names are."""
    labels = text.split(".")
    if len(text) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} is not a DNS name")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r} is an IP address, not a DNS name")
    return text


def percent(text: str) -> float:
    """A share from 0 to 100, decimals allowed (``0.5``: one request in 200)."""
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number from 0 to 100") from None
    if not 0 <= number <= 100:
        raise ValueError(f"{text!r} is not a number from 0 to 100")
    return number


def service_address(text: str) -> str:
    """``service:port``: a DNS name (a Service's, or any) and a port."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not a service:port like otel-collector.observability:4317")
    dns_name(host)
    return text


def revision(text: str) -> str:
    """An injector revision's name: a DNS label short enough that proxy-injector-<name>
    is one too (the revision's Service)."""
    if len(text) > 48 or not _DNS_LABEL.fullmatch(text):
        raise ValueError(f"{text!r} is not a revision name (a-z, 0-9 and -, at most 48)")
    return text


def signer_name(text: str) -> str:
    """A Kubernetes signer name: a DNS name, a slash, and a path (``proxy.io/spiffe``)."""
    domain, slash, path = text.partition("/")
    if not slash or not path or not re.fullmatch(r"[A-Za-z0-9._/-]{1,253}", path):
        raise ValueError(f"{text!r} is not a signer name like proxy.io/spiffe")
    dns_name(domain)
    return text


@cached(maxsize=64)
def dns_names(text: str) -> tuple[str, ...]:
    """Comma-separated DNS names (Secret names), each once, in order."""
    return tuple(dict.fromkeys(dns_name(item) for item in _items(text)))


UPSTREAM_PROTOCOLS = ("http", "grpc", "tcp")
"""What may follow a declared upstream's port: ``/http`` (HTTP/1.1 or h2c), ``/grpc``
(HTTP/2), ``/tcp`` (opaque bytes, never sniffed); nothing: sniffed."""


@cached(maxsize=256)
def upstreams(text: str) -> tuple[tuple[str, int, str | None], ...]:
    """Comma-separated ``service:port[/protocol]`` dependencies, e.g.
    "reviews.shop:9080,db.shop:5432/tcp"; the protocol None where none is given."""
    found: dict[tuple[str, int], str | None] = {}
    for item in _items(text):
        target, slash, protocol = item.partition("/")
        host, sep, port = target.rpartition(":")
        if not sep:
            raise ValueError(f"{item!r} has no port")
        if slash and protocol not in UPSTREAM_PROTOCOLS:
            raise ValueError(f"{item!r}: the protocol after / is one of http, grpc, tcp")
        key = (dns_name(host), _port(port))
        given = protocol if slash else None
        if key in found and found[key] != given:
            raise ValueError(f"{target!r} is given twice, with different protocols")
        found[key] = given
    return tuple((host, port, protocol) for (host, port), protocol in found.items())


def per_upstream(
    parse: Callable[[str], T], shape: str
) -> Callable[[str], tuple[tuple[tuple[str, int], T], ...]]:
    """Comma-separated ``service:port=value``, each value read by ``parse``: a setting per
    declared upstream (``orders.shop:8080=2s``); ``shape`` shows one, for errors."""

    @cached(maxsize=256)
    def parse_all(text: str) -> tuple[tuple[tuple[str, int], T], ...]:
        found: dict[tuple[str, int], T] = {}
        for item in _items(text):
            target, sep, value = item.partition("=")
            host, colon, port = target.strip().rpartition(":")
            if not sep or not colon:
                raise ValueError(f"{item!r} is not {shape}")
            key = (dns_name(host), _port(port))
            if key in found:
                raise ValueError(f"{target.strip()!r} is given twice")
            try:
                found[key] = parse(value.strip())
            except ValueError as exc:
                raise ValueError(f"{target.strip()}: {exc}") from None
        return tuple(found.items())

    return parse_all


_SPIFFE = re.compile(r"^spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)+)(/\*)?$")
SPIFFE_MAX = 2048


def spiffe_id(text: str) -> str:
    """A SPIFFE ID (``spiffe://trust.domain/path``); a trailing ``/*`` means any ID under
    that path."""
    match = _SPIFFE.fullmatch(text)
    if not match or len(text) > SPIFFE_MAX:
        raise ValueError(f"{text!r} is not a SPIFFE ID like spiffe://cluster.local/ns/shop/sa/web")
    if any(part in (".", "..") for part in match.group(2).split("/")):
        raise ValueError(f"{text!r}: a SPIFFE ID has no . or .. segments")
    return text


def peer(text: str) -> str:
    """Who a peer may be: a SPIFFE ID (``/*`` at the end for any under it), or ``ns/NS``
    or ``ns/NS/sa/ACCOUNT`` in the mesh's trust domain."""
    value = text.strip()
    if value.startswith("spiffe://"):
        return spiffe_id(value)
    parts = value.split("/")
    if parts[0] != "ns" or len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "sa"):
        raise ValueError(f"{value!r} is neither a SPIFFE ID nor ns/NAMESPACE[/sa/ACCOUNT]")
    if not _DNS_LABEL.fullmatch(parts[1]):
        raise ValueError(f"{value!r}: {parts[1]!r} is not a namespace name")
    if len(parts) == 4:
        dns_name(parts[3])
    return value


@cached(maxsize=256)
def peers(text: str) -> tuple[str, ...]:
    """Comma-separated peers (see ``peer``), each once, in order."""
    found = tuple(dict.fromkeys(peer(item) for item in _items(text)))
    if not found:
        raise ValueError("no peer given")
    return found


upstream_peers = per_upstream(peer, "service:port=spiffe://...")
"""Comma-separated ``service:port=peer``: who each declared upstream must be."""
