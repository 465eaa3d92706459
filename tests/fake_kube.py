"""A fake Kubernetes API for the few calls the certificate manager, the Event sender and the
CNI agent make, served over HTTP so the real clients talk to it. Like the real one it
answers 409 to a create of an existing Secret and to a replace with a stale
resourceVersion. Event creation can be held (a stalled API) or failed (a broken one).

Pods put with ``put_pod`` get resourceVersions and are watched as the real API watches them:
``/api/v1/pods?watch=1&resourceVersion=N`` (with a ``spec.nodeName`` field selector) sends
what changed after N, bookmarks when asked, and ``410 Gone`` for a version older than what
``compact`` kept. A DELETE honours ``preconditions.uid``. ``trickle`` makes single-pod reads
answer one byte at a time, that many seconds apart (a slow or half-broken API server).

A hung API, each way it hangs: ``hang_when(method, path, user_agent)`` true leaves that
request unanswered with its connection open (a dead connection, or a server that stopped),
until ``release_hung``; ``silent_watches`` makes every watch send nothing more, neither
events nor bookmarks, without closing. ``now_offset`` moves the API server's clock."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonpatch
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/?]+))?")
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events")
ENDPOINTS = re.compile(r"^/api/v1/namespaces/([^/]+)/endpoints/([^/?]+)")
SERVICE = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/?]+)$")
CONFIG_MAP = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps/([^/?]+)$")
CONFIG_MAPS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:\?|$)")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:\?|$)")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)$")
ALL_PODS = re.compile(r"^/api/v1/pods(?:\?|$)")
NODE = re.compile(r"^/api/v1/nodes/([^/?]+)$")
NAMESPACES = re.compile(r"^/api/v1/namespaces(?:\?(.*))?$")
POD_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/:%]+)(?::|%3A)(\d+)/proxy/(.*)$")
GENERIC = re.compile(
    r"^/apis/(?P<group>certificates\.k8s\.io|coordination\.k8s\.io)/(?P<version>[^/]+)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>podcertificaterequests|clustertrustbundles|leases)"
    r"(?:/(?P<name>[^/?]+))?(?P<status>/status)?(?:\?(?P<query>.*))?$"
)
"""Kinds kept generically: list, watch (resourceVersion, bookmarks, 410), get, create,
update with the resourceVersion read (409 otherwise), the status subresource, delete."""
API_GROUP_VERSION = re.compile(r"^/apis/([^/]+)/([^/?]+)/?$")
CSI_DRIVER = re.compile(r"^/apis/storage.k8s.io/v1/csidrivers/([^/?]+)$")
WEBHOOK = re.compile(
    r"^/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/([^/?]+)"
)
WEBHOOKS = re.compile(
    r"^/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/?(?:\?|$)"
)
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def _selected(items: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The objects a ``labelSelector`` of one term selects: ``key=value`` or ``key``."""
    selector = parse_qs(urlsplit(path).query).get("labelSelector", [""])[0]
    if not selector:
        return items
    key, equals, value = selector.partition("=")
    return [
        o
        for o in items
        if (labels := (o.get("metadata") or {}).get("labels") or {}).get(key) == value
        or (not equals and key in labels)
    ]


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


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of new connections waits in the backlog, not for SYN retries
    daemon_threads = True


def _listening_in(netns: str | None, make: Any) -> ThreadingHTTPServer:
    """The server's socket made inside ``netns``: a thread enters it, so this one stays."""
    if netns is None:
        return make()
    from webhook.node.netns import enter

    made: list[Any] = []

    def inside() -> None:
        try:
            enter(netns)
            made.append(make())
        except OSError as exc:
            made.append(exc)

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join(timeout=30)
    if not made or isinstance(made[0], Exception):
        raise RuntimeError(f"no fake API in {netns}: {made}")
    return made[0]


class FakeKube:
    def __init__(self, racers: int = 0, netns: str | None = None) -> None:
        """``netns``: a network namespace's path to listen in (a simulated node's)."""
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
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.by_path: dict[str, dict[str, Any]] = {}
        """Any other object, by its API path (apps/v1 workloads, for ``version``)."""
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.events_open = threading.Event()
        """Cleared: event creation waits (bounded) until it is set again."""
        self.events_open.set()
        self.events_fail = False
        self.nodes: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any], str]] = []
        """(resourceVersion, type, object, resource) of every change: pods (put_pod,
        DELETE) and the objects of ``GENERIC`` kinds."""
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        """Objects of the ``GENERIC`` kinds, by resource (plural) and (namespace, name)."""
        self.status_writes: list[tuple[str, str, str]] = []
        """(namespace, name, condition type) of every accepted PodCertificateRequest answer."""
        self.answered_at: dict[tuple[str, str], float] = {}
        """When (time.monotonic) each PodCertificateRequest's answer was accepted."""
        self.oldest = 0
        """Watches from before this resourceVersion get 410 Gone (see compact)."""
        self.changed = threading.Condition(self.lock)
        self.closing = False
        self.trickle = 0.0
        self.deleted: list[tuple[str, str]] = []
        self.connections: set[socket.socket] = set()
        """Open client connections: a closed API server drops the kept-alive ones too."""
        self.served: dict[str, list[str]] = {}
        """API discovery: group/version -> the resources it serves."""
        self.csi_drivers: dict[str, dict[str, Any]] = {}
        self.git_version = "v1.33.2"
        """What /version says."""
        self.denied: set[tuple[str, str, str]] = set()
        """(verb, group, resource) a SelfSubjectAccessReview answers not allowed."""
        self.pod_ports: dict[tuple[str, str, int], dict[str, str | Callable[[], str]]] = {}
        """What a pod's port answers through the API server's pod proxy, by path (a
        callable: asked again on every request, for counters that move)."""
        self.hang_when: Callable[[str, str, str], bool] | None = None
        self.released = threading.Event()
        self.hung: list[tuple[str, str, str]] = []
        self.silent_watches = False
        self.now_offset = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as an API server allows
            disable_nagle_algorithm = True  # headers and body go in two writes

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake.connections.add(self.connection)

            def finish(self) -> None:
                with fake.lock:
                    fake.connections.discard(self.connection)
                super().finish()

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one_request(self) -> None:
                """Reads the request; one ``hang_when`` picks is never answered."""
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                agent = self.headers.get("User-Agent", "")
                if fake.hang_when and fake.hang_when(self.command, self.path, agent):
                    fake.hung.append((self.command, self.path, agent))
                    while not fake.closing and not fake.released.wait(0.2):
                        pass
                    self.close_connection = True
                    return
                method = getattr(self, "do_" + self.command, None)
                if method is None:
                    self.send_error(501)
                    return
                method()
                self.wfile.flush()

            def _send(self, code: int, data: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                fake.requests.append((self.command, self.path, code))

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def _text(self, code: int, body: str) -> None:
                self._send(code, body.encode(), "text/plain")

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                if match := POD_PROXY.match(self.path):
                    key = (match.group(1), match.group(2), int(match.group(3)))
                    answer = fake.pod_ports.get(key, {}).get("/" + match.group(4))
                    answer = answer() if callable(answer) else answer
                    self._text(*((200, answer) if answer is not None else (503, "no endpoint")))
                elif (found := GENERIC.match(self.path)) and query.get("watch") == ["1"]:
                    convert = _as_version(found["plural"], found["group"], found["version"])
                    fake.watch(self, query, found["plural"], fake._selected(query), convert)
                elif ALL_PODS.match(self.path) and query.get("watch") == ["1"]:
                    fake.watch(self, query)
                elif POD.match(self.path.split("?")[0]) and fake.trickle:
                    fake.trickled(self, *fake.get(self.path))
                else:
                    self._reply(*fake.get(self.path))

            def do_DELETE(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                self._reply(*fake.delete(self.path, body))

            def do_POST(self) -> None:
                self._reply(*fake.post(self.path, self._body()))

            def do_PUT(self) -> None:
                self._reply(*fake.put(self.path, self._body()))

            def do_PATCH(self) -> None:
                self._reply(*fake.patch(self.path, self._body()))

        self.server = _listening_in(netns, lambda: _Server(("127.0.0.1", 0), Handler))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.changed.notify_all()
            open_connections = list(self.connections)
        self.server.shutdown()
        self.server.server_close()
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def release_hung(self) -> None:
        """Every hung request's connection is closed, unanswered; none hangs from now on."""
        self.hang_when = None
        self.released.set()

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        if path in self.by_path:
            return 200, self.by_path[path]
        if path == "/version":
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return 200, {"major": major, "minor": minor, "gitVersion": self.git_version}
        if WEBHOOKS.match(path):
            with self.lock:
                items = list(self.webhooks.values())
            return 200, {"kind": "MutatingWebhookConfigurationList", "items": items}
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
        if match := GENERIC.match(path):
            return self._generic_get(match)
        if match := CSI_DRIVER.match(path):
            driver = self.csi_drivers.get(match.group(1))
            return (200, driver) if driver else (404, status(404, "NotFound", path))
        if match := API_GROUP_VERSION.match(path):
            return self._discovery(f"{match.group(1)}/{match.group(2)}")
        return self._get_listed(path)

    def _discovery(self, group_version: str) -> tuple[int, dict[str, Any]]:
        resources = self.served.get(group_version)
        if resources is None:
            return 404, status(404, "NotFound", f"the server could not find {group_version}")
        listed = [
            {"name": name, "singularName": "", "namespaced": False, "kind": "", "verbs": ["get"]}
            for name in resources
        ]
        body = {"kind": "APIResourceList", "groupVersion": group_version, "resources": listed}
        return 200, body

    def _get_listed(self, path: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            # Namespaced objects kept by (namespace, name): one lookup each.
            for pattern, kept in (
                (CONFIG_MAP, self.config_maps),
                (SERVICE, self.services),
                (ENDPOINTS, self.endpoints),
            ):
                if match := pattern.match(path):
                    found = kept.get((match.group(1), match.group(2)))
                    return (200, found) if found else (404, status(404, "NotFound", path))
            if match := POD.match(path):
                named = [p for p in self.pods.get(match.group(1), []) if _name(p) == match.group(2)]
                if not named:
                    return 404, status(404, "NotFound", f'pods "{match.group(2)}" not found')
                return 200, named[0]
            if ALL_PODS.match(path):
                return 200, self._pod_list(parse_qs(urlsplit(path).query))
            if match := NODE.match(path):
                found = self.nodes.get(match.group(1))
                return (200, found) if found else (404, status(404, "NotFound", path))
            if match := PODS.match(path):
                items = _selected(self.pods.get(match.group(1), []), path)
                return 200, {"kind": "PodList", "apiVersion": "v1", "items": items}
            if match := CONFIG_MAPS.match(path):
                kept = [c for (ns, _), c in self.config_maps.items() if ns == match.group(1)]
                items = _selected(kept, path)
                return 200, {"kind": "ConfigMapList", "apiVersion": "v1", "items": items}
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
        if path == ACCESS_REVIEW:
            asked = body["spec"]["resourceAttributes"]
            key = (asked.get("verb", ""), asked.get("group", ""), asked.get("resource", ""))
            return 201, {**body, "status": {"allowed": key not in self.denied}}
        if match := GENERIC.match(path):
            return self._generic_create(match, body)
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
        if found := GENERIC.match(path):
            return self._generic_update(found, body)
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

    def patch(self, path: str, ops: Any) -> tuple[int, dict[str, Any]]:
        if match := NODE.match(path):
            return self._merge_node(match.group(1), ops)
        if match := POD.match(path):
            return self._merge_pod(match.group(1), match.group(2), ops)
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

    # Pods with resourceVersions, and their watch -------------------------------------------

    def _record(self, kind: str, obj: dict[str, Any], resource: str = "pods") -> None:
        """With the lock held."""
        version = int(self._next_version())
        obj["metadata"]["resourceVersion"] = str(version)
        self.history.append((version, kind, json.loads(json.dumps(obj)), resource))
        self.changed.notify_all()

    def put_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a pod (by namespace and name), as a watch sees it."""
        pod = json.loads(json.dumps(pod))
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        pod["metadata"].setdefault("uid", f"uid-{namespace}-{name}-{self.version + 1}")
        with self.lock:
            pods = self.pods.setdefault(namespace, [])
            kind = "MODIFIED" if any(_name(p) == name for p in pods) else "ADDED"
            pods[:] = [p for p in pods if _name(p) != name] + [pod]
            self._record(kind, pod)
        return pod

    def compact(self) -> None:
        """Forget the history and end the open watches (as an API server restarting after
        etcd compacted): a watch from any version seen so far gets 410 Gone."""
        with self.lock:
            self.history.clear()
            self.oldest = int(self._next_version())
            self.changed.notify_all()

    def _on_node(self, query: dict[str, list[str]]) -> Any:
        wanted = query.get("fieldSelector", [""])[0].removeprefix("spec.nodeName=")
        return lambda pod: not wanted or pod.get("spec", {}).get("nodeName") == wanted

    def _pod_list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """With the lock held."""
        on_node = self._on_node(query)
        items = [p for pods in self.pods.values() for p in pods if on_node(p)]
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.version)},
            "items": items,
        }

    def watch(
        self,
        handler: BaseHTTPRequestHandler,
        query: dict[str, list[str]],
        resource: str = "pods",
        wanted: Any = None,
        convert: Any = None,
    ) -> None:
        since = int(query.get("resourceVersion", ["0"])[0] or 0)
        bookmarks = query.get("allowWatchBookmarks") == ["true"]
        deadline = time.monotonic() + float(query.get("timeoutSeconds", ["30"])[0])
        on_node = wanted or self._on_node(query)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        self.requests.append(("WATCH", handler.path, 200))

        def send(event: dict[str, Any]) -> None:
            line = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            handler.wfile.flush()

        try:
            with self.lock:
                if since < self.oldest:
                    gone = status(410, "Expired", f"too old resource version: {since}")
                    send({"type": "ERROR", "object": gone})
                    return
                oldest = self.oldest
                position = 0  # the history only grows until a compaction ends this watch
                while not self.closing and self.oldest == oldest and time.monotonic() < deadline:
                    if self.silent_watches:
                        deadline = time.monotonic() + 3600  # a stuck path never ends it either
                        self.changed.wait(timeout=0.2)
                        continue
                    fresh, position = self.history[position:], len(self.history)
                    news = [h for h in fresh if h[0] > since and h[3] == resource and on_node(h[2])]
                    for version, kind, obj, _ in news:
                        send({"type": kind, "object": convert(obj) if convert else obj})
                        since = version
                    if bookmarks and not news and self.version > since:
                        since = self.version
                        marker = {"metadata": {"resourceVersion": str(since)}}
                        send({"type": "BOOKMARK", "object": marker})
                    self.changed.wait(timeout=0.2)
            handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def trickled(self, handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        """The whole answer, status line first, one byte every ``trickle`` seconds."""
        data = json.dumps(body).encode()
        answer = (
            f"HTTP/1.1 {code} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        self.requests.append(("GET", handler.path, code))
        try:
            for byte in answer:
                if self.closing:
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(self.trickle)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def delete(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if found := GENERIC.match(path):
            with self.lock:
                obj = self.objects.get(found["plural"], {}).pop(
                    (found["ns"] or "", found["name"]), None
                )
                if obj is None:
                    return 404, status(404, "NotFound", path)
                self._record("DELETED", obj, found["plural"])
                return 200, obj
        match = POD.match(path)
        if not match:
            return 404, status(404, "NotFound", path)
        namespace, name = match.groups()
        with self.lock:
            pods = self.pods.get(namespace, [])
            found = next((p for p in pods if _name(p) == name), None)
            if found is None:
                return 404, status(404, "NotFound", f'pods "{name}" not found')
            uid = (body.get("preconditions") or {}).get("uid")
            if uid and uid != found["metadata"].get("uid"):
                return 409, status(409, "Conflict", "Precondition failed: UID in precondition")
            pods.remove(found)
            self.deleted.append((namespace, name))
            self._record("DELETED", found)
            return 200, found

    def _merge_pod(self, namespace: str, name: str, patch: Any) -> tuple[int, dict[str, Any]]:
        with self.lock:
            found = next((p for p in self.pods.get(namespace, []) if _name(p) == name), None)
            if found is None:
                return 404, status(404, "NotFound", f'pods "{name}" not found')
            labels = (patch.get("metadata") or {}).get("labels") or {}
            found["metadata"].setdefault("labels", {}).update(labels)
            self._record("MODIFIED", found)
            return 200, found

    def _merge_node(self, name: str, patch: Any) -> tuple[int, dict[str, Any]]:
        with self.lock:
            node = self.nodes.get(name)
            if node is None:
                return 404, status(404, "NotFound", f'nodes "{name}" not found')
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != node["metadata"]["resourceVersion"]:
                return 409, status(409, "Conflict", "the object has been modified")
            node["spec"].update(patch.get("spec") or {})
            node["metadata"]["resourceVersion"] = self._next_version()
            return 200, node

    # -- the GENERIC kinds ------------------------------------------------------------

    def _selected(self, query: dict[str, list[str]]) -> Any:
        """A fieldSelector of the form spec.<field>=<value>, as a predicate."""
        selector = query.get("fieldSelector", [""])[0]
        field, _, value = selector.partition("=")
        if not field.startswith("spec."):
            return lambda obj: True
        key = field.removeprefix("spec.")
        return lambda obj: (obj.get("spec") or {}).get(key) == value

    def _generic_get(self, match: re.Match[str]) -> tuple[int, dict[str, Any]]:
        plural, namespace, name = match["plural"], match["ns"] or "", unquote(match["name"] or "")
        convert = _as_version(plural, match["group"], match["version"])
        with self.lock:
            found = self.objects.get(plural, {})
            if name:
                obj = found.get((namespace, name))
                if obj is None:
                    return 404, status(404, "NotFound", f'{plural} "{name}" not found')
                return 200, convert(obj)
            wanted = self._selected(parse_qs(match["query"] or ""))
            items = [
                o
                for (ns, _), o in found.items()
                if (not namespace or ns == namespace) and wanted(o)
            ]
            listed = {"metadata": {"resourceVersion": str(self.version)}, "items": items}
            return 200, listed

    def put_object(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object of a GENERIC kind, as a watch sees it."""
        obj = json.loads(json.dumps(obj))
        metadata = obj.setdefault("metadata", {})
        key = (metadata.get("namespace", ""), metadata["name"])
        with self.lock:
            kind = "MODIFIED" if key in self.objects.setdefault(plural, {}) else "ADDED"
            metadata.setdefault("uid", f"uid-{plural}-{key[1]}-{self.version + 1}")
            metadata.setdefault(
                "creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            )
            self.objects[plural][key] = obj
            self._record(kind, obj, plural)
        return obj

    def _generic_create(
        self, match: re.Match[str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        plural, namespace = match["plural"], match["ns"] or ""
        metadata = body.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = f"{metadata['generateName']}{self.version + 1:05d}"
        if namespace:
            metadata["namespace"] = namespace
        with self.lock:
            if (namespace, metadata["name"]) in self.objects.get(plural, {}):
                return 409, status(
                    409, "AlreadyExists", f'{plural} "{metadata["name"]}" already exists'
                )
        if plural == "clustertrustbundles":
            problem = _bundle_problem(body)
            if problem:
                return 422, status(422, "Invalid", problem)
        body.pop("status", None)
        return 201, self.put_object(plural, body)

    def _generic_update(
        self, match: re.Match[str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        plural, key = match["plural"], (match["ns"] or "", unquote(match["name"]))
        with self.lock:
            current = self.objects.get(plural, {}).get(key)
            if current is None:
                return 404, status(404, "NotFound", f'{plural} "{key[1]}" not found')
            if (body.get("metadata") or {}).get("resourceVersion") != current["metadata"][
                "resourceVersion"
            ]:
                return 409, status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{key[1]}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            updated = json.loads(json.dumps(current))
            if match["status"]:
                problem = _status_problem(current, body.get("status") or {}, self.now_offset)
                if problem:
                    return 422, status(422, "Invalid", problem)
                updated["status"] = body.get("status")
                answer = next((c["type"] for c in updated["status"].get("conditions") or []), "?")
                self.status_writes.append((key[0], key[1], answer))
                self.answered_at[key] = time.monotonic()
            else:
                updated["spec"] = body.get("spec", current.get("spec"))
                labels = (body.get("metadata") or {}).get("labels")
                if labels is not None:
                    updated["metadata"]["labels"] = labels
            if plural == "clustertrustbundles" and (problem := _bundle_problem(updated)):
                return 422, status(422, "Invalid", problem)
            self.objects[plural][key] = updated
            self._record("MODIFIED", updated, plural)
            return 200, updated


ANSWERS = ("Issued", "Denied", "Failed")
ONLY_BEFORE_V1 = ("pkixPublicKey", "proofOfPossession")
"""PodCertificateRequest fields v1 does not have: a request a 1.35 kubelet made through
v1beta1 reads, through v1, with no key."""


def _as_version(plural: str, group: str, version: str) -> Any:
    """An object as the API serves it at ``version`` (the conversion a request needs)."""

    def convert(obj: dict[str, Any]) -> dict[str, Any]:
        if "apiVersion" not in obj and plural != "podcertificaterequests":
            return obj
        served = {**obj, "apiVersion": f"{group}/{version}"}
        if plural == "podcertificaterequests" and version == "v1":
            spec = {k: v for k, v in (obj.get("spec") or {}).items() if k not in ONLY_BEFORE_V1}
            served["spec"] = spec
        return served

    return convert


def _parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _status_problem(current: dict[str, Any], wanted: dict[str, Any], offset: float) -> str | None:
    """What the API server checks of a PodCertificateRequest's status update."""
    old = current.get("status") or {}
    if old.get("certificateChain") or any(
        c.get("type") in ANSWERS for c in old.get("conditions") or []
    ):
        return "status: the request is answered already; its status is immutable"
    answers = [c for c in wanted.get("conditions") or [] if c.get("type") in ANSWERS]
    if len(answers) > 1:
        return "status.conditions: at most one of Issued, Denied and Failed"
    for condition in wanted.get("conditions") or []:
        if not re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", condition.get("reason", "")):
            return f"status.conditions.reason: {condition.get('reason')!r} is not CamelCase"
    if not wanted.get("certificateChain"):
        return None
    return _issued_problem(current["spec"], wanted, offset)


def _issued_problem(spec: dict[str, Any], wanted: dict[str, Any], offset: float) -> str | None:
    leaf = x509.load_pem_x509_certificates(wanted["certificateChain"].encode())[0]
    requested = (
        base64.b64decode(spec["pkixPublicKey"])
        if spec.get("pkixPublicKey")
        else x509.load_der_x509_csr(base64.b64decode(spec["stubPKCS10Request"]))
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    if leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != requested:
        return "status.certificateChain: the leaf does not carry the requested public key"
    not_before, not_after = _parse_time(wanted["notBefore"]), _parse_time(wanted["notAfter"])
    refresh = _parse_time(wanted["beginRefreshAt"])
    if (
        not_before != leaf.not_valid_before_utc.timestamp()
        or not_after != leaf.not_valid_after_utc.timestamp()
    ):
        return "status.notBefore/notAfter: not the leaf's"
    if abs(not_before - (time.time() + offset)) > 300:
        return "status.notBefore: more than 5 minutes from now"
    lifetime = not_after - not_before
    if not 3600 <= lifetime <= spec.get("maxExpirationSeconds", 86400):
        return f"status: a lifetime of {lifetime:.0f} s is outside 1 h to maxExpirationSeconds"
    if not not_before + 600 <= refresh <= not_after - 600:
        return "status.beginRefreshAt: not between notBefore + 10 min and notAfter - 10 min"
    return None


def _bundle_problem(bundle: dict[str, Any]) -> str | None:
    spec = bundle.get("spec") or {}
    signer = spec.get("signerName", "")
    if signer and not bundle["metadata"]["name"].startswith(signer.replace("/", ":") + ":"):
        return "metadata.name: must start with the signer name, / made :"
    try:
        certs = x509.load_pem_x509_certificates(spec.get("trustBundle", "").encode())
    except ValueError:
        return "spec.trustBundle: not PEM certificates"
    if len({c.fingerprint(hashes.SHA256()) for c in certs}) != len(certs):
        return "spec.trustBundle: duplicate trust anchor"
    return None
