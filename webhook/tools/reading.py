"""What ``check`` reads of a cluster (``Reader``: the kubernetes client, or the tests' fake
API behind it) and what each check reports (``Result``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


class Reader(Protocol):
    def webhook_configuration(self, name: str) -> dict[str, Any] | None: ...
    def endpoints(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def namespaces(self, label_selector: str) -> list[dict[str, Any]]: ...
    def pods(self, namespace: str, label_selector: str = "") -> list[dict[str, Any]]: ...
    def served(self, group_version: str) -> list[str] | None: ...
    def get(self, path: str) -> dict[str, Any] | None: ...
    def csi_driver(self, name: str) -> dict[str, Any] | None: ...
    def pod_port(self, namespace: str, pod: str, port: int, path: str) -> str | None: ...
    def can(self, verb: str, group: str, resource: str, namespace: str) -> bool: ...


@dataclass
class Result:
    check: str
    ok: bool
    detail: str = ""
    hint: str = ""
    items: list[str] = field(default_factory=list)


def injection_status(raw: str) -> dict[str, Any]:
    """A pod's proxy.io/status annotation, or {} when it is not one."""
    try:
        status = json.loads(raw)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}
