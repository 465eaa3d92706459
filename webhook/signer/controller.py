"""``proxy-injector signer``: every replica keeps a cache of the PodCertificateRequests for
our signer name (list and resumable watch); the one holding the Lease answers them, keeps
the CA Secret rolled and publishes the trust bundle as a ClusterTrustBundle.

Each request is answered once: the status is written with the resourceVersion it was
read at, and the API refuses a second answer, so a replica that lost the Lease, or a
replay after a restart, finds the request answered and writes nothing.

Nothing wedges it silently: every API call has a deadline (``webhook.kube.api``), a watch
that goes silent is listed again, and while requests wait with none answered for
``STALL_SECONDS`` the replica says it is not ready and lets the Lease go, so the standby
answers them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from webhook.common.inputs import timestamp
from webhook.common.names import CERTIFICATES_VERSIONS, SIGNER_LEASE
from webhook.engine.config import MeshConfig
from webhook.engine.mtls import trust_bundle_name
from webhook.kube.api import Api, ApiError
from webhook.kube.informer import Informer
from webhook.kube.lease import Lease
from webhook.signer import authority, issue, review
from webhook.signer.metrics import SignerMetrics
from webhook.signer.requests import BadRequest, Request, answer_of, parse

log = logging.getLogger("proxy_injector.signer")
GROUP = "certificates.k8s.io"
WORKERS = 16
RECONCILE_SECONDS = 5.0
STALL_SECONDS = 20.0
"""Requests waiting and none answered for this long: the replica has stalled."""
WATCH_SECONDS = 15
WATCH_IDLE_SECONDS = 20.0
"""The API ends each watch after WATCH_SECONDS (with a bookmark): one that sends nothing
for WATCH_IDLE_SECONDS has gone silent, and the requests are listed again."""
RETRY_SECONDS = (1.0, 30.0)
"""Backoff of a request whose answer could not be written: from 1 s, doubling, to 30 s."""
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Options:
    namespace: str = "proxy-system"
    identity: str = "signer"
    create_ca: bool = False
    lease_seconds: float = 15.0
    lease_name: str = SIGNER_LEASE


async def served_versions(api: Api, resource: str) -> list[str]:
    """The versions of ``resource`` the API serves, preferred first."""
    found = []
    for version in CERTIFICATES_VERSIONS:
        try:
            listed = await api.call("GET", f"/apis/{GROUP}/{version}")
        except ApiError as exc:
            if exc.status == 404:
                continue
            raise
        if any(r.get("name") == resource for r in listed.get("resources") or []):
            found.append(version)
    return found


class Signer:
    def __init__(
        self,
        api: Api,
        config: MeshConfig,
        options: Options,
        metrics: SignerMetrics | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.api, self.config, self.options, self.clock = api, config, options, clock
        self.metrics = metrics or SignerMetrics()
        self.signer_name = config.mtls.signer_name
        self.authorities: authority.Authorities | None = None
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.queued: set[tuple[str, str]] = set()
        self.pcr_version = ""
        self.key_versions: tuple[str, ...] = ()
        """Older served versions that still carry pkixPublicKey, for requests a 1.35 kubelet
        made: read through v1 they have no key."""
        self.bundle_version = ""
        self.requests: Informer | None = None
        self.lease = Lease(
            api,
            options.namespace,
            options.lease_name,
            options.identity,
            options.lease_seconds,
            self._leadership,
            healthy=lambda: not self.stalled(),
        )
        self.busy = 0
        self.progress = time.monotonic()
        """When a request was last answered, or the work loop last found nothing to do."""
        self.failures: dict[tuple[str, str], int] = {}
        self.problem = "starting"
        self.wake = asyncio.Event()
        """Set when this replica starts leading: the CA is loaded at once, not in 5 s."""
        self.metrics.pending.set_function(lambda: self.queue.qsize() + self.busy)

    # -- readiness and leadership -------------------------------------------------

    def stalled(self) -> bool:
        waiting = self.busy or not self.queue.empty()
        return bool(waiting) and time.monotonic() - self.progress > STALL_SECONDS

    def reasons(self) -> list[str]:
        found = [self.problem] if self.problem else []
        if self.stalled():
            found.append(
                f"requests are waiting and none was answered for {STALL_SECONDS:g}s "
                "(is the API answering?): the Lease is let go"
            )
        if self.requests is not None and not self.requests.synced.is_set():
            found.append("the PodCertificateRequest cache is not synced yet")
        return found

    def _leadership(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        self.wake.set()
        if leading and self.requests is not None:
            for obj in self.requests.items.values():
                self._consider(obj)

    # -- requests -------------------------------------------------------------

    def _ours(self, obj: dict[str, Any]) -> bool:
        spec = obj.get("spec") or {}
        return spec.get("signerName") == self.signer_name and answer_of(obj) is None

    def _consider(self, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        if self._ours(obj) and self.lease.leading and key not in self.queued:
            if not self.queued and not self.busy:
                self.progress = time.monotonic()  # the wait for an answer starts now
            self.queued.add(key)
            self.queue.put_nowait(key)

    def _path(self, namespace: str, name: str, version: str, status: bool = False) -> str:
        base = (
            f"/apis/{GROUP}/{version}/namespaces/{quote(namespace)}"
            f"/podcertificaterequests/{quote(name)}"
        )
        return base + ("/status" if status else "")

    async def _with_key(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The request through an older version that carries its key, when the preferred
        one shows none (made by a 1.35 kubelet with pkixPublicKey)."""
        spec = obj.get("spec") or {}
        if spec.get("stubPKCS10Request") or spec.get("pkixPublicKey"):
            return obj
        metadata = obj.get("metadata") or {}
        for version in self.key_versions:
            path = self._path(metadata.get("namespace", ""), metadata.get("name", ""), version)
            older = await self.api.call("GET", path)
            if (older.get("spec") or {}).get("pkixPublicKey"):
                return older
        return obj

    async def _pod(self, request: Request) -> dict[str, Any] | None:
        path = f"/api/v1/namespaces/{quote(request.namespace)}/pods/{quote(request.pod_name)}"
        try:
            return await self.api.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _answer(self, request: Request) -> tuple[str, dict[str, Any], str, str]:
        """(result, status, reason, message) for one request."""
        now = self.clock()
        verdict = review.review(request, await self._pod(request), self.config)
        if verdict.action == "deny":
            status = issue.denied(verdict.reason, verdict.message, now)
            return "denied", status, verdict.reason, verdict.message
        assert self.authorities is not None and verdict.public_key is not None
        status = issue.issued(
            request, verdict.public_key, self.authorities.current, self.config, now
        )
        condition = status["conditions"][0]
        result = {"Issued": "issued", "Denied": "denied"}.get(condition["type"], "failed")
        return result, status, condition["reason"], condition["message"]

    async def _handle(self, obj: dict[str, Any]) -> None:
        obj = await self._with_key(obj)
        try:
            request = parse(obj)
        except BadRequest as exc:
            await self._refuse_malformed(obj, exc)
            return
        if request.answer is not None or request.signer_name != self.signer_name:
            return
        result, status, reason, message = await self._answer(request)
        try:
            await self._write(obj, request.api_version, status)
        except ApiError as exc:
            if exc.status == 409:
                # Someone wrote first (another replica, before we held the Lease): what
                # they wrote stands; this request is answered.
                self.metrics.requests.labels("conflict").inc()
                log.info("request %s: answered elsewhere first (409)", request.where)
                return
            if exc.status != 422:
                raise
            # The API refused our answer (a clock far off makes notBefore invalid): the
            # request still gets one, a failure saying why, so the kubelet asks again.
            self.metrics.requests.labels("error").inc()
            log.warning("request %s: the API refused the answer: %s", request.where, exc)
            result, reason, message = "failed", "SignerError", f"the API refused the answer: {exc}"
            await self._write(obj, request.api_version, issue.failed(reason, message, self.clock()))
        self.metrics.requests.labels(result).inc()
        self._observe(request)
        log.info(
            "request %s for pod %s/%s (service account %s): %s %s: %s",
            request.where,
            request.namespace,
            request.pod_name,
            request.account,
            result,
            reason,
            message,
        )
        if result == "denied":
            await self._event(request, reason, message)

    async def _write(self, obj: dict[str, Any], api_version: str, status: dict[str, Any]) -> None:
        """The status, at the version the request was read at (through v1beta1 it has its
        key) and with its resourceVersion: the API refuses a second answer."""
        metadata = obj.get("metadata") or {}
        version = api_version.rpartition("/")[2] or self.pcr_version
        path = self._path(metadata.get("namespace", ""), metadata.get("name", ""), version, True)
        body = {**obj, "status": {**(obj.get("status") or {}), **status}}
        await self.api.call("PUT", path, body)

    async def _refuse_malformed(self, obj: dict[str, Any], problem: BadRequest) -> None:
        """A request whose fields cannot be read is denied, naming the field."""
        metadata = obj.get("metadata") or {}
        where = f"{metadata.get('namespace')}/{metadata.get('name')}"
        log.warning("request %s: %s", where, problem)
        status = issue.denied("InvalidRequest", str(problem), self.clock())
        try:
            await self._write(obj, str(obj.get("apiVersion", "")), status)
        except ApiError as exc:
            if exc.status != 409:
                raise
            return
        self.metrics.requests.labels("denied").inc()

    def _observe(self, request: Request) -> None:
        try:
            created = timestamp(request.created)
        except ValueError:
            return
        if created is None:
            return
        self.metrics.issue_seconds.observe(max(0.0, (self.clock() - created).total_seconds()))

    async def _event(self, request: Request, reason: str, message: str) -> None:
        now = issue.stamp(self.clock())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{request.pod_name}.", "namespace": request.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": request.pod_name,
                "namespace": request.namespace,
                "uid": request.pod_uid,
            },
            "reason": "PodCertificateDenied",
            "message": f"{self.signer_name} denied request {request.name}: {reason}: {message}",
            "type": "Warning",
            "source": {"component": "proxy-injector-signer"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.call(
                "POST", f"/api/v1/namespaces/{quote(request.namespace)}/events", body
            )
        except ApiError as exc:
            log.warning("event for %s: %s", request.where, exc)

    async def _work(self) -> None:
        while True:
            if self.queue.empty() and not self.busy:
                self.progress = time.monotonic()  # nothing waits: nothing can be stalled
            key = await self.queue.get()
            self.queued.discard(key)
            obj = self.requests.items.get(key) if self.requests else None
            if obj is None or not self._ours(obj) or not self.lease.leading:
                self.failures.pop(key, None)  # gone, answered, or another replica's now
                continue
            if self.authorities is None:
                await asyncio.sleep(0.2)  # the new leader is loading its CA
                self._consider(obj)
                continue
            self.busy += 1
            try:
                await self._handle(obj)
                self.progress = time.monotonic()
                self.failures.pop(key, None)
            except Exception as exc:  # one request's failure never ends the process
                await self._retry_later(key, obj, exc)
            finally:
                self.busy -= 1

    async def _retry_later(self, key: tuple[str, str], obj: dict[str, Any], exc: Exception) -> None:
        """Counted as an error and tried again, with a backoff per request."""
        self.metrics.requests.labels("error").inc()
        tries = self.failures.get(key, 0)
        self.failures[key] = tries + 1
        delay = min(RETRY_SECONDS[0] * 2**tries, RETRY_SECONDS[1])
        if isinstance(exc, ApiError | OSError | ValueError):
            log.warning("request %s/%s: %s; again in %gs", key[0], key[1], exc, delay)
        else:
            log.exception("request %s/%s: unexpected; again in %gs", key[0], key[1], delay)
        await asyncio.sleep(delay)
        self._consider(obj)

    # -- the CA and the trust bundle ---------------------------------------------

    @property
    def _secret_path(self) -> str:
        return f"/api/v1/namespaces/{quote(self.options.namespace)}/secrets/{authority.SECRET}"

    async def _load_ca(self) -> tuple[authority.Authorities, dict[str, Any]] | None:
        try:
            secret = await self.api.call("GET", self._secret_path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            if not self.options.create_ca:
                self.problem = (
                    f"secret {self.options.namespace}/{authority.SECRET} does not exist: create "
                    "it (tls.crt, tls.key) or run with --create-ca"
                )
                return None
            secret = await self._create_ca()
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        return authority.from_secret(data, annotations), secret

    async def _create_ca(self) -> dict[str, Any]:
        data, annotations = authority.to_secret(
            authority.Authorities(authority.new_ca(self.clock()))
        )
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": authority.SECRET,
                "namespace": self.options.namespace,
                "annotations": annotations,
            },
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        try:
            created = await self.api.call(
                "POST", f"/api/v1/namespaces/{quote(self.options.namespace)}/secrets", body
            )
            log.info(
                "created the mesh CA in secret %s/%s", self.options.namespace, authority.SECRET
            )
            return created
        except ApiError as exc:
            if exc.status != 409:
                raise
            return await self.api.call("GET", self._secret_path)

    async def _save(self, rolled: authority.Authorities, secret: dict[str, Any]) -> None:
        data, annotations = authority.to_secret(rolled)
        secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
        metadata = secret.setdefault("metadata", {})
        ours = (authority.NEXT_FROM, authority.NEXT_AFTER, authority.PREVIOUS_UNTIL)
        kept = {k: v for k, v in (metadata.get("annotations") or {}).items() if k not in ours}
        metadata["annotations"] = {**kept, **annotations}
        updated = await self.api.call("PUT", self._secret_path, secret)
        secret.clear()
        secret.update(updated)

    async def _roll(
        self, found: authority.Authorities, secret: dict[str, Any]
    ) -> authority.Authorities:
        longest = dt.timedelta(seconds=self.config.mtls.max_expiration_seconds)
        rolled = authority.advance(found, self.clock(), longest)
        if rolled is None:
            return found
        await self._save(rolled, secret)
        log.info(
            "the mesh CA rolled: now issuing from %s", rolled.current.cert.subject.rfc4514_string()
        )
        return rolled

    async def _publish(self, found: authority.Authorities) -> None:
        name = trust_bundle_name(self.signer_name)
        path = f"/apis/{GROUP}/{self.bundle_version}/clustertrustbundles/{quote(name, safe=':')}"
        wanted = {"signerName": self.signer_name, "trustBundle": found.bundle().decode()}
        try:
            current = await self.api.call("GET", path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": f"{GROUP}/{self.bundle_version}",
                "kind": "ClusterTrustBundle",
                "metadata": {"name": name},
                "spec": wanted,
            }
            await self.api.call("POST", path.rsplit("/", 1)[0], body)
            log.info("published the trust bundle %s", name)
            return
        if current.get("spec") != wanted:
            current["spec"] = wanted
            await self.api.call("PUT", path, current)
            log.info("updated the trust bundle %s", name)

    async def reconcile(self) -> None:
        loaded = await self._load_ca()
        if loaded is None:
            return
        found, secret = loaded
        found = await self._roll(found, secret)
        await self._publish(found)
        # The next CA is in the published bundle from now: its wait starts now.
        recorded = authority.published(found, self.clock())
        if recorded is not None:
            await self._save(recorded, secret)
            found = recorded
            log.info(
                "the next CA is in the trust bundle; it issues from %s",
                authority.stamp(found.next_from),
            )
        self.authorities = found
        self.metrics.ca_expiry.set(found.current.not_after.timestamp())
        self.problem = ""

    async def _keep_ca(self) -> None:
        while True:
            if self.lease.leading:
                try:
                    await self.reconcile()
                except (ApiError, OSError, ValueError) as exc:
                    self.problem = f"the CA or its trust bundle: {exc}"
                    log.warning("%s", self.problem)
            else:
                self.problem = ""  # a standby is ready when its cache is
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), RECONCILE_SECONDS)

    # -- running -------------------------------------------------------------------

    async def discover(self) -> None:
        requests = await served_versions(self.api, "podcertificaterequests")
        pcr = requests[0] if requests else None
        self.key_versions = tuple(v for v in requests[1:] if v != "v1")
        bundles = next(iter(await served_versions(self.api, "clustertrustbundles")), None)
        if pcr is None or bundles is None:
            missing = [
                n
                for n, v in (("podcertificaterequests", pcr), ("clustertrustbundles", bundles))
                if v is None
            ]
            raise ApiError(
                404,
                f"the API serves no {' and no '.join(missing)} ({GROUP}): turn on the "
                "PodCertificateRequest and ClusterTrustBundle feature gates and API versions",
            )
        self.pcr_version, self.bundle_version = pcr, bundles
        selector = quote(f"spec.signerName={self.signer_name}", safe="")
        path = f"/apis/{GROUP}/{pcr}/podcertificaterequests?fieldSelector={selector}"
        self.requests = Informer(
            self.api,
            path,
            self._consider,
            what="PodCertificateRequest",
            watch_seconds=WATCH_SECONDS,
            idle_seconds=WATCH_IDLE_SECONDS,
        )
        log.info("answering %s/%s podcertificaterequests for %s", GROUP, pcr, self.signer_name)

    async def run(self) -> None:
        await self.discover()
        assert self.requests is not None
        tasks = [
            asyncio.create_task(self.requests.run()),
            asyncio.create_task(self.lease.run()),
            asyncio.create_task(self._keep_ca()),
            *(asyncio.create_task(self._work()) for _ in range(WORKERS)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
