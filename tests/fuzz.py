"""A structure-aware mutator for pods: it starts from the corpus and changes what a
controller with a bug, or someone probing the webhook, would change: a field's type, an
annotation's value, a missing or null parent, a deep nesting, a duplicate, a huge number.

``mutants(seed, count)`` is deterministic for a seed, so a failure names its case."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

from tests.support import corpus
from webhook.engine.annotations import ANNOTATIONS

SEEDS = [case["pod"] for case in corpus()]

VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 8080, 15001, 15021, 65535, 65536, 2**63 - 1, -(2**63),
    1e308, -0.0, 0.5, 1e-300, "", " ", "0", "-1", "1", "true", "false", "TCP", "UDP", "tcp",
    "http", "grpc", "*", "proxy", "proxy-init", "proxy-shm", "/dev/shm", "/dev/shm/",
    "\n", "\x00", "é", "a" * 300, "http2-web", "::1", "10.0.0.0/8", "1e1000000", "1e40",
    "1n", "100u", "0.5Gi", "1.", ".5", "+1", "9" * 40, [], {}, [1], [None], {"a": 1}, [{}],
    {"port": 8080}, {"name": "x"}, {"containerPort": 8080, "name": "http"},
]  # fmt: skip
"""Values put where the pod had something else."""

ANNOTATION_TEXTS = [
    "", "0", "1", "2", "64", "65", "-1", "true", "false", "TRUE", "yes", "*", "1e1000000",
    "1e5000", "1e-5", "500m", "1.5Gi", "0.5", "1n", "tcp", "uds", "UDS", "debug", "nope",
    "8080", "http", "8080,http,9090", "0,65536", "a:1", "reviews.shop:9080,ratings:9080",
    "reviews:80,reviews.shop:80", "x" * 200 + ":1", "10.0.0.0/8,::1", "300.0.0.0/8",
    "/dev/shm/{container}-{port}.sock", "/dev/shm/{pod}.sock", "/tmp/a.sock", "/dev/shm/../x",
    "/dev/shm/" + "x" * 120, "5s", "1h1s", "0s", "registry.example/envoy:1.30", "bad image",
    ",,,", " , ", "\n",
]  # fmt: skip
"""Values for known proxy.io annotations: valid, almost valid, and hostile."""

KNOWN_KEYS = [a.key for a in ANNOTATIONS]


def _nodes(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _nodes(child, (*path, index))


def _parent(pod: dict, path: tuple) -> Any:
    node: Any = pod
    for part in path[:-1]:
        node = node[part]
    return node


def _replace(rng: random.Random, pod: dict) -> None:
    nodes = [path for path, _ in _nodes(pod) if path]
    path = rng.choice(nodes)
    _parent(pod, path)[path[-1]] = copy.deepcopy(rng.choice(VALUES))


def _delete(rng: random.Random, pod: dict) -> None:
    nodes = [path for path, _ in _nodes(pod) if path]
    path = rng.choice(nodes)
    parent = _parent(pod, path)
    del parent[path[-1]]


def _annotate(rng: random.Random, pod: dict) -> None:
    metadata = pod.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        return
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        annotations = metadata["annotations"] = {}
    key = rng.choice([*KNOWN_KEYS, "proxy.io/concurency", "proxy.io/x", "proxy.io/status"])
    annotations[key] = rng.choice(ANNOTATION_TEXTS)


def _duplicate(rng: random.Random, pod: dict) -> None:
    lists = [path for path, value in _nodes(pod) if isinstance(value, list) and value]
    if lists:
        path = rng.choice(lists)
        items = _parent(pod, path)[path[-1]] if path else pod
        items.append(copy.deepcopy(rng.choice(items)))


def _nest(rng: random.Random, pod: dict) -> None:
    nodes = [path for path, value in _nodes(pod) if isinstance(value, dict) and len(path) < 8]
    path = rng.choice(nodes)
    node = _parent(pod, path)[path[-1]] if path else pod
    deep: Any = "x"
    # Past the 254 levels a JSON encoder may write, under what the parser reads (1,024).
    for _ in range(rng.choice([10, 260])):
        deep = {"n": deep}
    node["x-nested"] = deep


def _containers(rng: random.Random, pod: dict) -> None:
    """Reshape one container: ports, a probe on some port, limits, env, mounts."""
    spec = pod.get("spec")
    items = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        return
    container = rng.choice(items)
    if not isinstance(container, dict):
        return
    port = rng.choice([8080, "http", 15021, 0, "nope", None])
    handler = rng.choice(["httpGet", "tcpSocket", "grpc", "exec"])
    kind = rng.choice(["livenessProbe", "readinessProbe", "startupProbe"])
    field = rng.choice(["probe", "limit", "env", "mount", "port"])
    if field == "probe":
        spec_ = {"port": port, "httpHeaders": rng.choice(VALUES), "path": rng.choice(VALUES)}
        container[kind] = {handler: spec_, "periodSeconds": rng.choice(VALUES)}
    elif field == "limit":
        container["resources"] = {"limits": {"memory": rng.choice([*VALUES, *ANNOTATION_TEXTS])}}
    elif field == "env":
        name = rng.choice(["PROXY_UDS_PATH", "PROXY_UDS_PATH_8080", "X", None, 7])
        container["env"] = [{"name": name, "value": "v"}, rng.choice(VALUES)]
    elif field == "mount":
        container["volumeMounts"] = [{"name": rng.choice(VALUES), "mountPath": "/dev/shm"}]
    else:
        container["ports"] = [{"containerPort": port, "name": rng.choice(VALUES)}]


MUTATIONS = [_replace, _replace, _delete, _annotate, _annotate, _duplicate, _nest, _containers]


def mutants(seed: int, count: int) -> Iterator[dict]:
    rng = random.Random(seed)
    for _ in range(count):
        pod = copy.deepcopy(rng.choice(SEEDS))
        for _ in range(rng.randint(1, 4)):
            rng.choice(MUTATIONS)(rng, pod)
        yield pod
