"""The CNI agent: the long-running half of the plugin. It answers what the relay on the node
forwards, on a root-only Unix socket, with everything already imported.

On ADD, a pod of an excluded namespace passes through without an API call; any other pod is
read from the node's pod cache (an API read only when the cache does not have it yet), and
only a pod the injector meshed in cni mode gets its rules, applied inside its network
namespace. A pod the API does not know (a static pod, say) cannot be ours and passes
through. The whole ADD has one deadline, the API read included: past it, code 11 (try again
later). ``DEL`` and ``GC`` have nothing to undo (the rules live and die with the pod's
network namespace); ``CHECK`` says whether a meshed pod's rules are there; ``STATUS`` says
the agent is serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from webhook.kube.api import Api, ApiError
from webhook.node import iptables, netns, plugin
from webhook.node.flags import parse as parse_flags
from webhook.node.informer import NodePods
from webhook.node.metrics import AgentMetrics
from webhook.node.plugin import CniError, Request
from webhook.node.pods import SpecError, interception_flags
from webhook.node.wire import ACK, WireError, encode_answer, read_request

log = logging.getLogger("proxy_injector.cni")
READ_SECONDS = 5.0


@dataclass(frozen=True)
class Settings:
    exclude_namespaces: frozenset[str]
    add_timeout: float
    iptables_backend: str
    """nft or legacy: the node's, detected once at start."""


def _apply(flags: list[str], backend: str) -> None:
    """In the pod's network namespace: the rules, as ``init-iptables`` applies them."""
    iptables.apply(iptables.plan(parse_flags(flags), backend), backend)


class Agent:
    def __init__(
        self, settings: Settings, api: Api | None, pods: NodePods | None, metrics: AgentMetrics
    ) -> None:
        self.settings, self.api, self.pods, self.metrics = settings, api, pods, metrics

    async def serve(self, path: Path) -> asyncio.AbstractServer:
        """Listen at ``path`` (in a directory only root may enter), replacing a socket an
        earlier agent left. The directory is made 0700, so it must be the socket's own: a
        shared one (``/var/run``, say) is refused rather than locked."""
        path.parent.mkdir(parents=True, exist_ok=True)
        others = sorted(p.name for p in path.parent.iterdir() if p.name != path.name)
        if others:
            raise ValueError(
                f"--socket {path}: its directory also holds {', '.join(others[:5])}; give the "
                "socket a directory of its own (it is made root-only)"
            )
        path.parent.chmod(0o700)
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._connection, path=str(path))
        path.chmod(0o600)
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        try:
            writer.write(ACK)
            try:
                environ, stdin = await asyncio.wait_for(read_request(reader), READ_SECONDS)
            except (WireError, asyncio.IncompleteReadError, TimeoutError) as exc:
                log.warning("cni: a request that could not be read: %r", exc)
                return
            code, result = await self.answer(environ, stdin)
            writer.write(encode_answer(code, result))
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the relay is gone; the runtime will ask again
        finally:
            writer.close()
            self.metrics.request_seconds.observe(time.perf_counter() - started)

    async def answer(
        self, environ: dict[str, str], stdin: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        """The exit code and what to print for one request; never raises."""
        command = environ.get("CNI_COMMAND", "")
        try:
            req = plugin.request(environ, stdin)
            outcome, result = await self._timed(req)
        except CniError as exc:
            self.metrics.requests.labels(command or "none", "error").inc()
            log.info(
                "cni %s %s: error %d: %s %s",
                command,
                environ.get("CNI_ARGS", ""),
                exc.code,
                exc.msg,
                exc.details,
            )
            return 1, exc.result(plugin.requested_version(stdin))
        except Exception as exc:  # a bug must still be a CNI answer, never a hang
            log.exception("cni %s: unexpected failure", command)
            error = CniError(
                plugin.TRY_AGAIN_LATER, "the proxy-injector CNI agent failed", repr(exc)
            )
            return 1, error.result(plugin.requested_version(stdin))
        self.metrics.requests.labels(req.command, outcome).inc()
        return 0, result

    async def _timed(self, req: Request) -> tuple[str, dict[str, Any] | None]:
        timeout = self.settings.add_timeout
        try:
            return await asyncio.wait_for(self._handle(req), timeout)
        except TimeoutError:
            raise CniError(
                plugin.TRY_AGAIN_LATER,
                f"{req.command} of pod {req.pod} did not finish within {timeout:g}s",
                f"the Kubernetes API at {self.api.url if self.api else '-'} or iptables is slow",
            ) from None

    async def _handle(self, req: Request) -> tuple[str, dict[str, Any] | None]:
        if req.command == "ADD":
            flags = await self._flags(req)
            if flags is None:
                return "passed_through", req.passed_through()
            backend = self.settings.iptables_backend
            await self._in_pod(req, lambda: _apply(flags, backend))
            log.info("cni ADD %s: interception applied (iptables-%s)", req.pod, backend)
            return "meshed", req.passed_through()
        if req.command == "CHECK":
            flags = await self._flags(req)
            if flags is not None and not await self._in_pod(req, iptables.holds_interception):
                raise CniError(
                    plugin.RULES_MISSING, f"pod {req.pod}'s interception rules are missing"
                )
            return "checked", None
        return "ok", None  # DEL, GC, STATUS: nothing to undo, and serving

    async def _in_pod(self, req: Request, work: Any) -> Any:
        try:
            return await netns.run_in(req.netns, work)
        except netns.NamespaceError as exc:
            raise CniError(plugin.INVALID_ENVIRONMENT, str(exc)) from None
        except (ValueError, iptables.InterceptionError) as exc:
            raise CniError(
                plugin.RULES_FAILED,
                f"pod {req.pod}'s interception rules were not applied",
                str(exc),
            ) from None

    async def _flags(self, req: Request) -> list[str] | None:
        if not (req.pod_namespace and req.pod_name):
            return None  # not a Kubernetes pod: nothing of ours
        if req.pod_namespace in self.settings.exclude_namespaces:
            return None
        pod = await self._pod(req)
        try:
            return None if pod is None else interception_flags(pod)
        except SpecError as exc:
            raise CniError(plugin.RULES_FAILED, str(exc)) from None

    async def _pod(self, req: Request) -> dict[str, Any] | None:
        assert req.pod_namespace and req.pod_name
        if self.pods is not None:
            cached = self.pods.get(req.pod_namespace, req.pod_name, req.pod_uid)
            if cached is not None:
                return cached
        if self.api is None:
            raise CniError(plugin.TRY_AGAIN_LATER, "the agent has no Kubernetes API")
        path = f"/api/v1/namespaces/{quote(req.pod_namespace)}/pods/{quote(req.pod_name)}"
        try:
            return await self.api.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                log.info("cni %s: pod %s is not in the API: not ours", req.command, req.pod)
                return None
            raise CniError(
                plugin.TRY_AGAIN_LATER, f"cannot read pod {req.pod} from {self.api.url}", str(exc)
            ) from None
