"""A fake Kubernetes API for the few calls the certificate manager and the Event sender
make, served over HTTP so the real kubernetes client talks to it. Like the real one it
answers 409 to a create of an existing Secret and to a replace with a stale
resourceVersion. Event creation can be held (a stalled API) or failed (a broken one)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import jsonpatch

SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/?]+))?")
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events")
ENDPOINTS = re.compile(r"^/api/v1/namespaces/([^/]+)/endpoints/([^/?]+)")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:\?|$)")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)$")
NAMESPACES = re.compile(r"^/api/v1/namespaces(?:\?(.*))?$")
WEBHOOK = re.compile(
    r"^/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/([^/?]+)"
)


def _name(obj: dict[str, Any]) -> str:
    return obj.get("metadata", {}).get("name", "")


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


class FakeKube:
    def __init__(self, racers: int = 0) -> None:
        self.lock = threading.Lock()
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.requests: list[tuple[str, str, int]] = []
        # The first `racers` secret reads wait for each other, so racing replicas really
        # both see the same state before either writes.
        self.barrier = threading.Barrier(racers, timeout=10) if racers > 1 else None
        self.reads_held = 0
        self.endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.events_open = threading.Event()
        """Cleared: event creation waits (bounded) until it is set again."""
        self.events_open.set()
        self.events_fail = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                fake.requests.append((self.command, self.path, code))

            def _body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_GET(self) -> None:
                self._reply(*fake.get(self.path))

            def do_POST(self) -> None:
                self._reply(*fake.post(self.path, self._body()))

            def do_PUT(self) -> None:
                self._reply(*fake.put(self.path, self._body()))

            def do_PATCH(self) -> None:
                self._reply(*fake.patch(self.path, self._body()))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        if (match := SECRET.match(path)) and match.group(2):
            with self.lock:
                hold = bool(self.barrier) and self.reads_held < self.barrier.parties
                self.reads_held += hold
            if hold:
                self.barrier.wait()
            with self.lock:
                secret = self.secrets.get((match.group(1), match.group(2)))
            if secret is None:
                return 404, status(404, "NotFound", f'secrets "{match.group(2)}" not found')
            return 200, secret
        if match := WEBHOOK.match(path):
            with self.lock:
                found = self.webhooks.get(match.group(1))
            if found is None:
                return 404, status(404, "NotFound", path)
            return 200, found
        return self._get_listed(path)

    def _get_listed(self, path: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if match := ENDPOINTS.match(path):
                found = self.endpoints.get((match.group(1), match.group(2)))
                if found is None:
                    return 404, status(404, "NotFound", path)
                return 200, found
            if match := POD.match(path):
                named = [p for p in self.pods.get(match.group(1), []) if _name(p) == match.group(2)]
                if not named:
                    return 404, status(404, "NotFound", f'pods "{match.group(2)}" not found')
                return 200, named[0]
            if match := PODS.match(path):
                items = self.pods.get(match.group(1), [])
                return 200, {"kind": "PodList", "apiVersion": "v1", "items": items}
            if match := NAMESPACES.match(path):
                wanted = dict(
                    part.split("=", 1)
                    for part in re.findall(r"labelSelector=([^&]*)", match.group(1) or "")
                    for part in [unquote(part)]
                    if "=" in part
                )
                items = [
                    ns
                    for ns in self.namespaces.values()
                    if wanted.items() <= ns["metadata"].get("labels", {}).items()
                ]
                return 200, {"kind": "NamespaceList", "apiVersion": "v1", "items": items}
        return 404, status(404, "NotFound", path)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if match := EVENTS.match(path):
            return self._create_event(match.group(1), body)
        namespace = SECRET.match(path).group(1)
        name = body["metadata"]["name"]
        with self.lock:
            if (namespace, name) in self.secrets:
                return 409, status(409, "AlreadyExists", f'secrets "{name}" already exists')
            body["metadata"].update(namespace=namespace, resourceVersion=self._next_version())
            self.secrets[(namespace, name)] = body
            return 201, body

    def put(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        match = SECRET.match(path)
        key = (match.group(1), match.group(2))
        with self.lock:
            current = self.secrets.get(key)
            if current is None:
                return 404, status(404, "NotFound", "not found")
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, status(
                    409,
                    "Conflict",
                    "the object has been modified; please "
                    "apply your changes to the latest version and try again",
                )
            body["metadata"].update(namespace=key[0], resourceVersion=self._next_version())
            self.secrets[key] = body
            return 200, body

    def patch(self, path: str, ops: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        name = WEBHOOK.match(path).group(1)
        with self.lock:
            self.webhooks[name] = jsonpatch.apply_patch(self.webhooks[name], ops)
            return 200, self.webhooks[name]

    def _create_event(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.events_open.wait(timeout=30)
        if self.events_fail:
            return 500, status(500, "InternalError", "etcd is unhappy")
        with self.lock:
            body["metadata"].update(namespace=namespace, name=f"event-{len(self.events)}")
            self.events.append(body)
        return 201, body
