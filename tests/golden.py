"""Golden files: each corpus pod, and a few pods only a mesh config change reaches (mTLS,
cni mode, a regular proxy container), as the engine injects them, kept under
``tests/golden/`` for review in diffs, as Istio keeps its ``.injected`` files:

- ``<id>.injected.yaml``: the pod after the patch, the proxy's bootstrap argument shown as
  a pointer to the file beside it;
- ``<id>.bootstrap.yaml``: that bootstrap, as YAML.

``scripts/update-golden`` writes them again; ``tests/engine/test_golden.py`` fails while any is
stale, so every change to what a pod gets is seen in review.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.support import apply, corpus, orders_pod
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping

FOLDER = Path(__file__).parent / "golden"


def _mtls_pod() -> dict[str, Any]:
    annotations = {
        "proxy.io/upstreams": "ratings:9080,payments.pay:8443",
        "proxy.io/upstream-identities": "payments.pay:8443=ns/pay/sa/payments",
        "proxy.io/allow-from": "ns/front,ns/ops/sa/deployer",
    }
    return orders_pod(
        annotations,
        readinessProbe={"httpGet": {"path": "/ready", "port": 8080}},
        livenessProbe={"tcpSocket": {"port": 9000}},
    )


def _tcp_pod() -> dict[str, Any]:
    """A database client and server at once: TCP upstreams, a TCP-hinted port."""
    annotations = {
        "proxy.io/upstreams": "db.data:5432/tcp,ratings:9080,inventory:9090/grpc",
        "proxy.io/upstream-identities": "db.data:5432=ns/data/sa/postgres",
        "proxy.io/upstream-retries": "ratings:9080=0",
        "proxy.io/tcp-ports": "9000",
    }
    return orders_pod(annotations)


EXTRA = [
    ("mtls-permissive", {"mtls": {"identity": "pod-certificate"}}),
    ("mtls-strict-csi", {"mtls": {"identity": "csi-spiffe", "mode": "strict"}}),
    (
        "cni-classic",
        {
            "interception": "cni",
            "nativeSidecar": False,
            "dualStack": False,
            "mtls": {"identity": "pod-certificate"},
        },
    ),
]
"""Pods of mesh configs other than the default, each the one above."""


def cases() -> list[tuple[str, dict[str, Any], str, MeshConfig]]:
    """(id, pod, namespace, mesh config) of every pod with golden files."""
    found = [
        (case["id"], case["pod"], case["namespace"], MeshConfig())
        for case in corpus()
        if case["expect"] == "inject"
    ]
    found += [(name, _mtls_pod(), "shop", from_mapping(mesh)) for name, mesh in EXTRA]
    found += [
        (
            f"tcp-{mode}",
            _tcp_pod(),
            "shop",
            from_mapping({"mtls": {"identity": "pod-certificate", "mode": mode}}),
        )
        for mode in ("permissive", "strict")
    ]
    return found


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, width=100, allow_unicode=True)


def render(name: str, pod: dict[str, Any], namespace: str, config: MeshConfig) -> dict[str, str]:
    """The golden files of one pod, by file name."""
    result = inject(pod, namespace, config)
    assert result.outcome == Outcome.INJECT, f"{name}: {result.message}"
    injected = apply(pod, list(result.patch))
    containers = [*injected["spec"]["containers"], *injected["spec"]["initContainers"]]
    proxy = next(c for c in containers if c["name"] == "proxy")
    at = proxy["args"].index("--config-yaml") + 1
    bootstrap = json.loads(proxy["args"][at])
    proxy["args"][at] = f"<{name}.bootstrap.yaml>"
    return {
        f"{name}.injected.yaml": _dump(injected),
        f"{name}.bootstrap.yaml": _dump(bootstrap),
    }


def expected() -> dict[str, str]:
    """Every golden file as the engine makes it now."""
    files: dict[str, str] = {}
    for name, pod, namespace, config in cases():
        files.update(render(name, pod, namespace, config))
    return files


def write() -> list[str]:
    """Write every golden file again, remove any no case makes; the names changed."""
    FOLDER.mkdir(exist_ok=True)
    wanted = expected()
    changed = []
    for name, text in wanted.items():
        path = FOLDER / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(name)
    for path in FOLDER.glob("*.yaml"):
        if path.name not in wanted:
            path.unlink()
            changed.append(path.name)
    return sorted(changed)
