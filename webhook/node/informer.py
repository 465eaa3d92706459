"""The pods bound to this node (``webhook.kube.informer``), so that ADD reads a pod without
an API call and the repair loop sees every status change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from webhook.kube.api import Api
from webhook.kube.informer import Informer


class NodePods(Informer):
    def __init__(self, api: Api, node: str, on_change: Callable[[dict[str, Any]], None]) -> None:
        selector = quote(f"spec.nodeName={node}", safe="")
        path = f"/api/v1/pods?fieldSelector={selector}"
        super().__init__(api, path, on_change, what="pod", listed="the node's pods")
        self.node = node

    @property
    def pods(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.items

    def get(self, namespace: str, name: str, uid: str | None = None) -> dict[str, Any] | None:
        pod = self.items.get((namespace, name))
        if pod is not None and uid and pod["metadata"].get("uid") != uid:
            return None  # an older pod of the same name
        return pod
