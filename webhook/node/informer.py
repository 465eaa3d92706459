"""The pods bound to this node, kept by a list and a resumable watch (resourceVersion,
bookmarks, a fresh list on ``410 Gone``), so that ADD reads a pod without an API call and
the repair loop sees every status change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from webhook.node.kube import Api, ApiError
from webhook.node.pods import key

log = logging.getLogger("proxy_injector.cni")
WATCH_SECONDS = 300
MAX_BACKOFF = 30.0


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class NodePods:
    def __init__(self, api: Api, node: str, on_change: Callable[[dict[str, Any]], None]) -> None:
        self.api, self.node, self.on_change = api, node, on_change
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.lists = 0

    def get(self, namespace: str, name: str, uid: str | None = None) -> dict[str, Any] | None:
        pod = self.pods.get((namespace, name))
        if pod is not None and uid and pod["metadata"].get("uid") != uid:
            return None  # an older pod of the same name
        return pod

    def _path(self, **params: str) -> str:
        selector = quote(f"spec.nodeName={self.node}", safe="")
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"/api/v1/pods?fieldSelector={selector}{extra}"

    def _store(self, pod: dict[str, Any]) -> None:
        pod.get("metadata", {}).pop("managedFields", None)
        self.pods[key(pod)] = pod
        self.on_change(pod)

    async def _list(self) -> None:
        listed = await self.api.call("GET", self._path())
        self.pods = {}
        for pod in listed.get("items") or []:
            self._store(pod)
        self.resource_version = listed.get("metadata", {}).get("resourceVersion", "")
        self.lists += 1
        self.synced.set()

    async def _watch(self) -> None:
        path = self._path(
            watch="1",
            resourceVersion=self.resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(WATCH_SECONDS),
        )
        try:
            async for event in self.api.watch(path):
                self._event(event)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone from None
            raise

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone
            raise ApiError(obj.get("code", 0), f"watch: {obj.get('message', obj)}")
        version = obj.get("metadata", {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self._store(obj)
        elif kind == "DELETED":
            self.pods.pop(key(obj), None)
        if version:
            self.resource_version = version

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                if not self.resource_version:
                    await self._list()
                await self._watch()
                backoff = 1.0
            except Gone:
                log.info("pod watch expired (410 Gone): listing the node's pods again")
                self.resource_version = ""
            except (ApiError, ValueError, OSError, asyncio.IncompleteReadError) as exc:
                log.warning("pod watch on node %s: %s; again in %.0fs", self.node, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
