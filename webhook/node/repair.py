"""The repair loop: pods on this node whose proxy-validate found no interception (they
started while no agent was there to program them: it was killed, OOM, upgrading, or the
node rebooted before it) are deleted so that their controller makes them again, now
programmed; rate-limited, with an Event on each and a metric.

Mesh config ``cni.repair``: ``delete`` (the default), ``label`` (only mark them, with
``proxy.io/interception-missing: "true"``), or ``off``. A pod no controller would make again
is only labelled, whatever the mode: deleting it would lose it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from webhook.kube.api import MERGE_PATCH, Api, ApiError
from webhook.node.metrics import AgentMetrics
from webhook.node.pods import controlled, interception_missing
from webhook.node.validate import NOT_REDIRECTED_EXIT

log = logging.getLogger("proxy_injector.cni")
LABEL = "proxy.io/interception-missing"
EVENT_REASON = "InterceptionMissing"
Mode = Literal["delete", "label", "off"]


def _event(pod: dict[str, Any], node: str, message: str) -> dict[str, Any]:
    metadata = pod["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid", ""),
        },
        "reason": EVENT_REASON,
        "message": message,
        "type": "Warning",
        "source": {"component": "proxy-injector-cni", "host": node},
        "reportingComponent": "proxy-injector-cni",
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class Repair:
    def __init__(
        self, api: Api, node: str, mode: Mode, per_minute: int, metrics: AgentMetrics
    ) -> None:
        self.api, self.node, self.mode, self.metrics = api, node, mode, metrics
        self.interval = 60.0 / per_minute
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.handled: set[str] = set()
        self.next_turn = 0.0

    def consider(self, pod: dict[str, Any]) -> None:
        """Called with every pod the node's cache stores: queue those to repair, once each."""
        uid = pod.get("metadata", {}).get("uid", "")
        if self.mode == "off" or uid in self.handled or not interception_missing(pod):
            return
        self.handled.add(uid)
        self.queue.put_nowait(pod)

    async def run(self) -> None:
        while True:
            pod = await self.queue.get()
            wait = self.next_turn - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.next_turn = time.monotonic() + self.interval
            await self.repair(pod)

    async def repair(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        name = f"{metadata['namespace']}/{metadata['name']}"
        path = f"/api/v1/namespaces/{quote(metadata['namespace'])}/pods/{quote(metadata['name'])}"
        delete = self.mode == "delete" and controlled(pod)
        why = (
            f"proxy-validate exited {NOT_REDIRECTED_EXIT}: the pod started without its traffic "
            f"interception while the proxy-injector CNI agent on node {self.node} was away"
        )
        try:
            if delete:
                preconditions = {"preconditions": {"uid": metadata.get("uid")}}
                await self.api.call("DELETE", path, preconditions)
                message = f"{why}; deleted, so that its controller makes it again with its rules"
            else:
                labels = {"metadata": {"labels": {LABEL: "true"}}}
                await self.api.call("PATCH", path, labels, MERGE_PATCH)
                message = f"{why}; labelled {LABEL}=true" + (
                    ""
                    if self.mode == "label"
                    else " (no controller would make it again: delete it yourself)"
                )
        except ApiError as exc:
            if exc.status in (404, 409):
                return  # already gone, or replaced by a pod of the same name
            self.metrics.repairs.labels("failed").inc()
            self.handled.discard(metadata.get("uid", ""))  # the next change tries again
            log.warning("repair of pod %s failed: %s", name, exc)
            return
        self.metrics.repairs.labels("deleted" if delete else "labelled").inc()
        log.warning("repair: pod %s: %s", name, message)
        try:
            await self.api.call(
                "POST",
                f"/api/v1/namespaces/{quote(metadata['namespace'])}/events",
                _event(pod, self.node, message),
            )
        except ApiError as exc:
            log.warning("repair: no Event for pod %s: %s", name, exc)
