"""A cache of one kind of object, kept by a list and a resumable watch (resourceVersion,
bookmarks, a fresh list on ``410 Gone``), so that every change is seen once the cache is
synced and nothing is missed when a watch breaks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from webhook.kube.api import Api, ApiError, SilentWatch

log = logging.getLogger("proxy_injector.kube")
WATCH_SECONDS = 300
MAX_BACKOFF = 30.0
Key = tuple[str, str]


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def key(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


class Informer:
    """``path``: the list path, with its query (``?`` included) or none."""

    def __init__(
        self,
        api: Api,
        path: str,
        on_change: Callable[[dict[str, Any]], None],
        what: str = "object",
        listed: str = "them",
        watch_seconds: int = WATCH_SECONDS,
        idle_seconds: float | None = None,
    ) -> None:
        """``what`` and ``listed`` name the objects in log lines ("pod", "the node's pods").
        ``watch_seconds``: how long the server keeps each watch open (it sends a bookmark
        before ending it); ``idle_seconds``: a watch that sends nothing for that long has
        gone silent (a server or a path that stopped without closing): list again."""
        self.api, self.base, self.on_change = api, path, on_change
        self.what, self.listed = what, listed
        self.watch_seconds, self.idle_seconds = watch_seconds, idle_seconds
        self.items: dict[Key, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""

    def _path(self, **params: str) -> str:
        joiner = "&" if "?" in self.base else "?"
        extra = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.base}{joiner}{extra}" if extra else self.base

    def _store(self, obj: dict[str, Any]) -> None:
        obj.get("metadata", {}).pop("managedFields", None)
        self.items[key(obj)] = obj
        self.on_change(obj)

    async def _list(self) -> None:
        listed = await self.api.call("GET", self._path())
        self.items = {}
        for obj in listed.get("items") or []:
            self._store(obj)
        self.resource_version = listed.get("metadata", {}).get("resourceVersion", "")
        self.synced.set()

    async def _watch(self) -> None:
        path = self._path(
            watch="1",
            resourceVersion=self.resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(self.watch_seconds),
        )
        try:
            async for event in self.api.watch(path, self.idle_seconds):
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
            self.items.pop(key(obj), None)
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
                log.info("%s watch expired (410 Gone): listing %s again", self.what, self.listed)
                self.resource_version = ""
            except SilentWatch as exc:
                log.warning("%s: listing %s again", exc, self.listed)
                self.resource_version = ""
            except (ApiError, ValueError, OSError, asyncio.IncompleteReadError) as exc:
                log.warning("%s watch: %s; again in %.0fs", self.what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
