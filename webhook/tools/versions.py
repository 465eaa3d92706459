"""``proxy-injector version``: this client's version and, from a cluster, the versions of
the injector's parts (their workloads' images) and of the sidecars in use (each injected
pod's ``proxy.io/status``), as ``istioctl version`` shows them."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from webhook import __version__
from webhook.engine.names import STATUS_KEY
from webhook.tools.reading import Reader, injection_status

PARTS = (
    ("webhook", "deployments", "proxy-injector"),
    ("cniAgent", "daemonsets", "proxy-injector-cni"),
    ("signer", "deployments", "proxy-injector-signer"),
)
"""(what, apps/v1 resource, name): the workloads deploy/ installs."""


def _image_version(workload: dict[str, Any] | None) -> str | None:
    """The tag of the workload's first container's image (a digest stays whole)."""
    if workload is None:
        return None
    containers = ((((workload.get("spec") or {}).get("template") or {}).get("spec") or {})
                  .get("containers") or [{}])  # fmt: skip
    image = str(containers[0].get("image", ""))
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else image


def report(reader: Reader, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = {"client": __version__}
    for what, resource, name in PARTS:
        workload = reader.get(f"/apis/apps/v1/namespaces/{namespace}/{resource}/{name}")
        found[what] = _image_version(workload)
    sidecars: Counter[str] = Counter()
    for item in reader.namespaces(""):
        for pod in reader.pods(item["metadata"]["name"]):
            raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(STATUS_KEY)
            if raw is not None:
                sidecars[str(injection_status(raw).get("version", "unknown"))] += 1
    found["sidecars"] = dict(sorted(sidecars.items()))
    return found


def text(found: dict[str, Any]) -> str:
    lines = [f"client: {found['client']}"]
    for what, _, name in PARTS:
        if what in found:
            lines.append(f"{what}: {found[what] or f'not installed (no {name})'}")
    if "sidecars" in found:
        pods = found["sidecars"]
        shown = ", ".join(f"{version} ({count} pods)" for version, count in pods.items())
        lines.append(f"sidecars: {shown or 'none injected'}")
    return "\n".join(lines) + "\n"


def as_json(found: dict[str, Any]) -> str:
    return json.dumps(found, indent=2) + "\n"
