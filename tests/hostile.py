"""The worst pods we know how to build: each shape grows one thing until the review body
nears the API server's 3 MiB, or targets one parser. Used by the regression tests and by
bench/hostile_pods.py, which times each in the engine."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support import review

BODY_BYTES = 3 * 2**20 - 64 * 2**10
"""What a shape fills, leaving room for the envelope."""
ANNOTATIONS_CHARS = 256 * 1024 - 512
"""Just under the API server's annotation limit, so the engine parses all of it."""


def pod(containers: list[dict[str, Any]], annotations: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hostile-0", "annotations": annotations or {}},
        "spec": {"containers": containers},
    }


def web(**extra: Any) -> dict[str, Any]:
    return {"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}], **extra}


def _fill(item: Callable[[int], str], budget: int, sep: str = ",") -> str:
    """item(0) + sep + item(1) ... as many whole items as fit in ``budget`` characters."""
    parts, used, index = [], 0, 0
    while used + len(item(index)) <= budget:
        parts.append(item(index))
        used += len(parts[-1]) + len(sep)
        index += 1
    return sep.join(parts)


def _many(item: Callable[[int], dict[str, Any]], budget: int = BODY_BYTES) -> list[dict]:
    items: list[dict] = []
    while budget > 0:
        items.append(item(len(items)))
        budget -= len(json.dumps(items[-1])) + 2
    return items[:-1]


def exponent_quantity() -> dict:
    return pod([web()], {"proxy.io/cpu-limit": "1e1000000"})


def digits_memory_limit() -> dict:
    """A memory limit of three million digits."""
    limits = {"memory": "1" + "0" * (BODY_BYTES - 200)}
    return pod([web(resources={"limits": limits})])


def upstreams_over_the_annotation_limit() -> dict:
    declared = _fill(lambda i: f"svc-{i}.shop:9080", BODY_BYTES)
    return pod([web()], {"proxy.io/upstreams": declared})


def upstreams_under_the_annotation_limit() -> dict:
    declared = _fill(lambda i: f"s{i}:80", ANNOTATIONS_CHARS)
    return pod([web()], {"proxy.io/upstreams": declared})


def containers_with_tcp_probes() -> dict:
    def container(i: int) -> dict[str, Any]:
        return {
            "name": f"c{i}",
            "image": "app",
            "ports": [{"containerPort": 10000 + i % 50000}],
            "readinessProbe": {"tcpSocket": {"port": 10000 + i % 50000}},
        }

    return pod(_many(container))


def containers_with_a_port() -> dict:
    return pod(
        _many(
            lambda i: {"name": f"c{i}", "image": "a", "ports": [{"containerPort": 1 + i % 65535}]}
        )
    )


def most_containers_udp_ports() -> dict:
    """As many containers as are injected, their ports UDP: all parsed, none proxied."""
    count = 1000

    def container(i: int) -> dict[str, Any]:
        ports = [{"containerPort": 1 + (i * 60 + j) % 65535, "protocol": "UDP"} for j in range(60)]
        return {"name": f"c{i}", "image": "a", "ports": ports}

    return pod([container(i) for i in range(count)])


def most_containers_most_ports() -> dict:
    """As many containers as are injected, 50 TCP ports each, 150 of them intercepted and probed (as
    many as the bootstrap may hold), each container probing its first port over TCP."""

    def container(i: int) -> dict[str, Any]:
        ports = [{"containerPort": 15100 + i * 50 + j, "name": f"p{j}"} for j in range(50)]
        probe = {"tcpSocket": {"port": "p0"}}
        return {"name": f"c{i}", "image": "a", "ports": ports, "livenessProbe": probe}

    included = ",".join(str(15100 + i * 50) for i in range(150))
    return pod([container(i) for i in range(999)], {"proxy.io/include-inbound-ports": included})


def unknown_annotations_over_the_limit() -> dict:
    keys = _many(lambda i: {f"proxy.io/unknown-{i}": "x"})
    return pod([web()], {k: v for item in keys for k, v in item.items()})


def unknown_annotations_under_the_limit() -> dict:
    keys = _fill(lambda i: f"proxy.io/concurency{i}", ANNOTATIONS_CHARS - 20_000, "\n")
    return pod([web()], dict.fromkeys(keys.split("\n"), "2"))


def http_ports_of_unknown_names() -> dict:
    names = _fill(lambda i: f"p{i}", ANNOTATIONS_CHARS)
    return pod([web()], {"proxy.io/http-ports": names})


def outbound_ranges() -> dict:
    ranges = _fill(lambda i: f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32", 250_000)
    return pod([web()], {"proxy.io/exclude-outbound-ip-ranges": ranges})


def outbound_addresses() -> dict:
    """Short distinct IPv6 addresses: the most ranges 256 KiB can list."""
    ranges = _fill(lambda i: f"::{i:x}", ANNOTATIONS_CHARS)
    return pod([web()], {"proxy.io/exclude-outbound-ip-ranges": ranges})


def env_and_ports() -> dict:
    """One container with thousands of ports excluded from interception and a hundred
    thousand env vars: every env var the engine sets is looked up among them."""
    ports = [{"containerPort": 1 + i} for i in range(2000)]
    env = [{"name": f"V{i}", "value": "x"} for i in range(80_000)]
    return pod(
        [web(ports=ports, env=env)],
        {"proxy.io/include-inbound-ports": "1,2,3"},
    )


def deep_probe(depth: int = 300) -> dict:
    """A rewritten probe carrying a field nested deeper than a JSON encoder may go."""
    nested: Any = "x"
    for _ in range(depth):
        nested = {"n": nested}
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "x-extra": nested}
    return pod([web(readinessProbe=probe)])


SHAPES: dict[str, Callable[[], dict]] = {
    "exponent-quantity": exponent_quantity,
    "digits-memory-limit": digits_memory_limit,
    "upstreams-3mib": upstreams_over_the_annotation_limit,
    "upstreams-256kib": upstreams_under_the_annotation_limit,
    "tcp-probe-containers": containers_with_tcp_probes,
    "port-containers": containers_with_a_port,
    "1000-containers-udp-ports": most_containers_udp_ports,
    "1000-containers-150-ports": most_containers_most_ports,
    "unknown-keys-3mib": unknown_annotations_over_the_limit,
    "unknown-keys-256kib": unknown_annotations_under_the_limit,
    "http-ports-unknown-names": http_ports_of_unknown_names,
    "outbound-ranges": outbound_ranges,
    "outbound-addresses": outbound_addresses,
    "env-and-ports": env_and_ports,
    "deep-probe": deep_probe,
}


def body(shape: dict) -> bytes:
    return json.dumps(review(shape, "shop")).encode()
