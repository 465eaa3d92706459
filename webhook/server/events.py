"""Kubernetes Events for admissions, sent off the admission path.

An admission only puts the event on a bounded queue; one thread sends them. A slow or
unreachable API server fills the queue and later events are dropped and counted: it never
slows an admission. Events go on the pod's controller (a ReplicaSet, a Job...), which
exists when the pod does not yet, else on the pod by name; never for dry runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from webhook.engine.limits import clip

log = logging.getLogger("proxy_injector.events")
CAPACITY = 1000
MESSAGE_CHARS = 1024
"""What the API server keeps of an Event's message (events.k8s.io's note limit)."""
COMPONENT = "proxy-injector"

Post = Callable[[str, dict[str, Any]], None]
"""Create an Event in a namespace; raises on failure."""


def subject(pod: Any, namespace: str, name: str) -> dict[str, Any]:
    """The pod's controller from its ownerReferences, else the pod itself."""
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    owners = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    if isinstance(owners, list):
        owned = [o for o in owners if isinstance(o, dict)]
        owner = next((o for o in owned if o.get("controller") is True), owned[0] if owned else None)
        if owner and all(isinstance(owner.get(k), str) for k in ("apiVersion", "kind", "name")):
            found = {k: owner[k] for k in ("apiVersion", "kind", "name", "uid") if k in owner}
            return {**found, "namespace": namespace}
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace}


def event(
    involved: dict[str, Any], pod: str, outcome: str, reason: str, message: str
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{clip(involved['name'], 200)}.",
            "namespace": involved["namespace"],
        },
        "involvedObject": involved,
        "reason": reason,
        "message": clip(f"pod {pod}: {message}", MESSAGE_CHARS - 40),
        "type": "Warning" if outcome == "deny" else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname(),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventSender:
    def __init__(self, post: Post, counted: Callable[[str], None], capacity: int = CAPACITY):
        """``counted(result)`` is told of each event: sent, failed or dropped."""
        self.post, self.counted = post, counted
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(capacity)
        threading.Thread(target=self._send, name="events", daemon=True).start()

    def record(self, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            self.counted("dropped")

    def _send(self) -> None:
        while True:
            body = self.queue.get()
            try:
                self.post(body["metadata"]["namespace"], body)
            except Exception as exc:
                self.counted("failed")
                log.warning("event not sent", extra={"error": clip(str(exc), 300)})
            else:
                self.counted("sent")


def kube_post(api_client: Any, timeout: float = 5.0) -> Post:
    """Create Events through the kubernetes client (core/v1)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def post(namespace: str, body: dict[str, Any]) -> None:
        core.create_namespaced_event(namespace, body, _request_timeout=timeout)

    return post
