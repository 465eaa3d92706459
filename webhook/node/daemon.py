"""``proxy-injector cni agent``: the proxy-injector-cni DaemonSet's process, which puts the
plugin on its node and serves it.

In order: it clears what an earlier instance left, serves the agent's socket, copies the
relay and makes it the last plugin of the active conflist (and keeps it there), keeps the
node's pods in a cache, runs the repair loop, and once all that is up removes the
``proxy.io/cni-not-ready`` taint from its node. ``/healthz``, ``/readyz`` (saying what is not
ready) and ``/metrics`` are served over plain HTTP. On SIGTERM or SIGINT it takes the plugin
out of the conflist, removes the relay and the socket, and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from webhook.engine.config import MeshConfig
from webhook.kube import health
from webhook.kube.api import MERGE_PATCH, Api, ApiError
from webhook.node import install, iptables
from webhook.node.agent import Agent, Settings
from webhook.node.informer import NodePods
from webhook.node.metrics import AgentMetrics
from webhook.node.repair import Repair

log = logging.getLogger("proxy_injector.cni")
TAINT_KEY = "proxy.io/cni-not-ready"


@dataclass(frozen=True)
class Options:
    installation: install.Installation
    node: str | None
    kube_api: str | None
    interval: float = 5.0
    iptables_backend: str = "auto"
    http_host: str = "0.0.0.0"
    http_port: int = 9964


@dataclass
class Readiness:
    serving: bool = False
    installed: str = "not yet inserted into the node's CNI config"
    """Empty once the plugin is in the active conflist; else why not."""
    synced: asyncio.Event | None = None

    def reasons(self) -> list[str]:
        found = [] if self.serving else ["the agent's socket is not served yet"]
        if self.installed:
            found.append(self.installed)
        if self.synced is not None and not self.synced.is_set():
            found.append("the node's pods are not listed yet")
        return found


def since_process_start() -> float:
    """Seconds since this process started (its start time in /proc, against boot time)."""
    with open("/proc/self/stat") as handle:
        started_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")


async def keep_installed(
    installation: install.Installation,
    interval: float,
    readiness: Readiness,
    metrics: AgentMetrics,
) -> None:
    said = ""
    while True:
        try:
            copied = install.copy_relay(installation)
            state, path = install.insert(installation)
            readiness.installed = ""
            message = f"proxy-injector is the last plugin of {path}"
            if copied or state is install.State.CHANGED or said != message:
                log.info("%s (relay %s)", message, installation.plugin)
        except (install.InstallError, OSError) as exc:
            readiness.installed = message = str(exc)
            if said != message:
                log.warning("install: %s", message)
        said = message
        metrics.installed.set(0 if readiness.installed else 1)
        await asyncio.sleep(interval)


async def untaint(api: Api, node: str) -> None:
    """Remove ``proxy.io/cni-not-ready`` from the node, retrying until it is gone."""
    path = f"/api/v1/nodes/{quote(node)}"
    backoff = 1.0
    while True:
        try:
            found = await api.call("GET", path)
            taints = found.get("spec", {}).get("taints") or []
            kept = [t for t in taints if t.get("key") != TAINT_KEY]
            if kept == taints:
                return
            patch = {
                "metadata": {"resourceVersion": found["metadata"].get("resourceVersion")},
                "spec": {"taints": kept},
            }
            await api.call("PATCH", path, patch, MERGE_PATCH)
            log.info("removed the %s taint from node %s", TAINT_KEY, node)
            return
        except ApiError as exc:
            if exc.status != 409:
                log.warning("cannot remove the %s taint from %s: %s", TAINT_KEY, node, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


async def _backend(options: Options) -> str:
    """The node's iptables, detected once here in the node's namespace (a new pod's is
    empty and says nothing), as istio-cni does."""
    if options.iptables_backend != "auto":
        return options.iptables_backend
    try:
        backend = await asyncio.to_thread(iptables.detect_backend)
    except iptables.InterceptionError as exc:
        raise ValueError(str(exc)) from None
    log.info("the node's iptables: iptables-%s", backend)
    return backend


def _api(options: Options) -> Api:
    agent = "proxy-injector-cni"
    return Api.from_url(options.kube_api, agent) if options.kube_api else Api.in_cluster(agent)


async def serve(options: Options, mesh: MeshConfig) -> None:
    """Until SIGTERM or SIGINT. Raises ValueError for options it cannot start with."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    installation = options.installation
    api = _api(options)
    metrics = AgentMetrics()
    readiness = Readiness()
    repair = pods = None
    if options.node:
        repair = Repair(api, options.node, mesh.cni.repair, mesh.cni.repair_per_minute, metrics)
        pods = NodePods(api, options.node, repair.consider)
        metrics.cached_pods.set_function(lambda: len(pods.pods))
        readiness.synced = pods.synced
    else:
        log.warning("no --node-name (NODE_NAME): no pod cache, no repair loop, no untaint")
    settings = Settings(
        frozenset(mesh.cni.exclude_namespaces), mesh.cni.add_timeout, await _backend(options)
    )
    for leftover in install.clean_previous(installation):
        log.info("removed %s, left by an earlier instance", leftover)
    agent = Agent(settings, api, pods, metrics)
    server = await agent.serve(installation.socket)
    readiness.serving = True
    log.info(
        "serving CNI requests on %s, %.0f ms after the process started",
        installation.socket,
        since_process_start() * 1000,
    )
    http = await health.serve(
        options.http_host, options.http_port, readiness.reasons, metrics.registry
    )
    tasks = [
        asyncio.create_task(keep_installed(installation, options.interval, readiness, metrics))
    ]
    if pods is not None and repair is not None:
        tasks += [asyncio.create_task(pods.run()), asyncio.create_task(repair.run())]
        tasks.append(asyncio.create_task(_untaint_when_ready(api, options.node, readiness)))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        install.remove(installation)
        server.close()
        http.close()
        installation.socket.unlink(missing_ok=True)
        log.info("proxy-injector removed from the node's CNI config")


async def _untaint_when_ready(api: Api, node: Any, readiness: Readiness) -> None:
    while readiness.reasons():
        await asyncio.sleep(0.2)
    log.info("ready, %.0f ms after the process started", since_process_start() * 1000)
    await untaint(api, node)
