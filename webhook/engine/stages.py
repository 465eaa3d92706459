"""Every decision the engine makes for a pod it injects, as a row of named stages sharing one
context (as Istio's ``injectPod`` does): each stage decides one part, stores it on the
context and returns its ``Findings`` (the denial with its reason, and warnings). ``run``
stops at the first denial, gathers the warnings, and names the stage in ``InternalError``
when one fails in a way nobody foresaw; it returns the ``Plan`` that ``render`` turns into
the patch, and that ``explain`` and ``bootstrap`` show.

A new feature is a stage added to ``STAGES`` (where what it needs is decided already) and
a field of ``Plan``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook import __version__
from webhook.engine import (
    annotations,
    bootstrap,
    interception,
    lifecycle,
    limits,
    mtls,
    node_access,
    observability,
    probes,
    sidecar,
    sockets,
    upstreams,
)
from webhook.engine import pod as pods
from webhook.engine.annotations import Overrides
from webhook.engine.bootstrap.telemetry import DEFAULT as DEFAULT_TELEMETRY
from webhook.engine.bootstrap.telemetry import Telemetry
from webhook.engine.config import MeshConfig
from webhook.engine.json_object import Json
from webhook.engine.names import (
    ADMIN_VOLUME,
    ARG_MAX_BYTES,
    IDENTITY_VOLUME,
    INIT_CONTAINER,
    OUTBOUND_UDS_PATH,
    PROXY_CONTAINER,
    PROXY_GID,
    PROXY_UID,
    SDS_VOLUME,
    SHM_VOLUME,
    VALIDATE_CONTAINER,
)
from webhook.engine.reasons import Reason
from webhook.engine.settings import Settings


class InternalError(Exception):
    """The engine failed in a way it did not foresee; ``__cause__`` is the exception and
    ``where`` the step it failed in (``stage ports_and_resources``, ``the patch``)."""

    def __init__(self, where: str) -> None:
        super().__init__(f"internal error in {where}")
        self.where = where


@dataclass(frozen=True, slots=True)
class Findings:
    """What a stage found besides its decision: problems that deny the pod, with the
    reason they are given under, and warnings for the answer."""

    reason: Reason = Reason.INVALID_POD
    denials: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


NOTHING = Findings()


@dataclass(slots=True)
class Context:
    """One pod's walk through the stages: what it came with, then each stage's decision."""

    pod: Json
    spec: Json
    namespace: str
    config: MeshConfig
    parsed: annotations.Parsed
    settings: Settings
    """Every "annotation, else mesh config" value, resolved once."""
    apps: tuple[pods.Container, ...] = ()
    access: node_access.NodeAccess | None = None
    ports: sockets.AppPorts | None = None
    probes: probes.ProbeChanges | None = None
    resources: sidecar.Resources | None = None
    existing_shm: str | None = None
    added_volumes: list[str] = field(default_factory=list)
    outbound_socket: str | None = None
    upstreams: tuple[upstreams.Upstream, ...] = ()
    secured: mtls.PodMtls | None = None
    interception: interception.Interception | None = None
    grace_seconds: int = pods.DEFAULT_GRACE_SECONDS
    telemetry: Telemetry = DEFAULT_TELEMETRY
    bootstrap: str = ""

    @property
    def overrides(self) -> Overrides:
        return self.parsed.overrides

    @property
    def declared(self) -> tuple[tuple[str, int, str | None], ...]:
        return self.overrides.upstreams or ()


def containers(ctx: Context) -> Findings:
    """The app containers, within what the engine injects."""
    count = len(pods.array(ctx.spec, "containers", "spec")) + len(
        pods.array(ctx.spec, "initContainers", "spec")
    )
    if count > limits.CONTAINERS:
        return Findings(denials=(_too_many_containers(count),))
    ctx.apps = pods.containers(ctx.spec)
    if not ctx.apps:
        return Findings(denials=("spec.containers: a pod needs at least one container",))
    return NOTHING


def node_reach(ctx: Context) -> Findings:
    """What the pod may reach on its node, refused outside the namespaces allowed it."""
    ctx.access = node_access.decide(ctx.overrides, ctx.config)
    refused = node_access.refusals(ctx.access, ctx.namespace, ctx.config)
    return Findings(
        Reason.NODE_ACCESS_NOT_ALLOWED, tuple(refused), node_access.warnings(ctx.access)
    )


def size_estimate(ctx: Context) -> Findings:
    """Checked before anything per port is built: a pod with tens of thousands of ports
    would otherwise cost seconds only to be refused for its size."""
    ports = sockets.least_ports(ctx.apps, ctx.settings)
    least = bootstrap.least_size(ports, 0, len(ctx.declared))
    if least > ARG_MAX_BYTES:
        return Findings(denials=(_too_large(least, len(ctx.declared), at_least=True),))
    return NOTHING


def ports_and_resources(ctx: Context) -> Findings:
    """Which ports get a socket, how probes reach them, and the proxy's resources; the
    problems of their annotations deny together."""
    assert ctx.access is not None
    ctx.ports = sockets.app_ports(ctx.apps, ctx.overrides, ctx.settings, ctx.access.socket_root)
    refuses_plaintext = mtls.refuses_plaintext(ctx.overrides, ctx.settings.mtls_mode)
    rewrite = ctx.settings.rewrite_probes
    ctx.probes = probes.changes(ctx.apps, ctx.ports, rewrite, refuses_plaintext)
    sized = sidecar.resources(ctx.settings, ctx.overrides)
    ctx.resources = sized.resources
    problems = (*ctx.ports.annotation_errors, *sized.errors)
    found = (*sized.warnings, *ctx.ports.warnings, *ctx.probes.warnings)
    return Findings(Reason.INVALID_ANNOTATION, problems, found)


def proxy_uid(ctx: Context) -> Findings:
    """Apps whose traffic the rules leave alone (the proxy's UID or GID): warned about,
    or denied by mesh config denyProxyUidApps."""
    found = tuple(_proxy_uid_apps(ctx.spec, ctx.apps))
    if found and ctx.config.deny_proxy_uid_apps:
        return Findings(denials=found)
    return Findings(warnings=found)


def pod_shape(ctx: Context) -> Findings:
    """The volumes the pod gets, and what in the pod stands in their way or the ports'."""
    assert ctx.access is not None and ctx.ports is not None and ctx.probes is not None
    # In host mode the app's /dev/shm is the node's: a volume of its own there is refused.
    ctx.existing_shm, shm_errors = (None, []) if ctx.access.host_shm else _shm_volume(ctx.apps)
    ctx.added_volumes = [
        *([] if ctx.existing_shm else [SHM_VOLUME]),
        ADMIN_VOLUME,
        *ctx.access.volume_names,
        *([IDENTITY_VOLUME, SDS_VOLUME] if ctx.settings.mtls_mode != "off" else []),
    ]
    problems = [
        *ctx.ports.pod_errors,
        *shm_errors,
        *_name_conflicts(ctx.spec, ctx.added_volumes),
        *node_access.pod_problems(ctx.access, ctx.apps, ctx.overrides, ctx.config),
        *ctx.probes.errors,
    ]
    return Findings(denials=tuple(problems))


def size_with_probes(ctx: Context) -> Findings:
    assert ctx.ports is not None and ctx.probes is not None
    declared = len(ctx.declared)
    least = bootstrap.least_size(len(ctx.ports.ports), len(ctx.probes.routes), declared)
    if least > ARG_MAX_BYTES:
        return Findings(denials=(_too_large(least, declared, at_least=True),))
    return NOTHING


def upstreams_and_mtls(ctx: Context) -> Findings:
    """The declared upstreams with their protocols and policies, and with mTLS who each
    must be and who may call."""
    assert ctx.access is not None
    if ctx.overrides.outbound_uds:
        ctx.outbound_socket = ctx.access.socket_path(OUTBOUND_UDS_PATH)
    config = ctx.config
    resolved = upstreams.resolve(
        ctx.overrides, ctx.namespace, config.cluster_domain, config.upstream_policy
    )
    mode = ctx.settings.mtls_mode
    account = pods.service_account(ctx.spec) if mode != "off" else ""
    secured = mtls.decide(ctx.overrides, config, mode, ctx.namespace, account, resolved.upstreams)
    ctx.upstreams, ctx.secured = secured.upstreams, secured.pod
    errors = (*resolved.errors, *secured.errors)
    found = (*resolved.warnings, *secured.warnings)
    return Findings(Reason.INVALID_ANNOTATION, errors, found)


def intercept(ctx: Context) -> Findings:
    assert ctx.resources is not None
    decided = interception.decide(ctx.pod, ctx.settings, ctx.config, ctx.resources, ctx.secured)
    if isinstance(decided, list):
        return Findings(Reason.INVALID_ANNOTATION, tuple(decided))
    ctx.interception = decided
    found = interception.pod_security_warnings(ctx.namespace, ctx.config, decided.cni)
    return Findings(warnings=tuple(found))


def start_and_stop(ctx: Context) -> Findings:
    """The pod's grace period, against how long the proxy drains (settings)."""
    ctx.grace_seconds = pods.termination_grace_seconds(ctx.spec)
    settings = ctx.settings
    found = lifecycle.grace_warnings(
        settings.native_sidecar, settings.drain_seconds, ctx.grace_seconds
    )
    return Findings(warnings=found)


def envoy_bootstrap(ctx: Context) -> Findings:
    """The sidecar's whole Envoy config, as its one argument."""
    assert ctx.ports is not None and ctx.probes is not None
    collector = observability.collector(ctx.config, ctx.namespace, ctx.secured)
    to = None if collector is None else collector.cluster
    metadata = pods.mapping(ctx.pod, "metadata", "pod")
    ctx.telemetry = observability.telemetry(ctx.settings, ctx.config, metadata, to)
    if collector is not None and any(u.cluster == to for u in ctx.upstreams):
        collector = None  # declared by the app too: its cluster is built already
    sidecar_plan = bootstrap.SidecarPlan(
        ports=ctx.ports.ports,
        probes=tuple(ctx.probes.routes),
        upstreams=ctx.upstreams,
        policy=ctx.config.upstream_policy,
        outbound_socket=ctx.outbound_socket,
        declared_only=ctx.settings.outbound_policy == "declared-only",
        dual_stack=ctx.config.dual_stack,
        mtls=ctx.secured,
        drain_hook=lifecycle.drains(ctx.settings.native_sidecar, ctx.settings.drain_seconds),
        telemetry=ctx.telemetry,
        collector=collector,
    )
    ctx.bootstrap = bootstrap.encoded(sidecar_plan)
    size = len(ctx.bootstrap) if ctx.bootstrap.isascii() else len(ctx.bootstrap.encode())
    if size > ARG_MAX_BYTES:
        return Findings(denials=(_too_large(size, len(ctx.declared)),))
    return NOTHING


Stage = Callable[[Context], Findings]
STAGES: tuple[Stage, ...] = (
    containers,
    node_reach,
    size_estimate,
    ports_and_resources,
    proxy_uid,
    pod_shape,
    size_with_probes,
    upstreams_and_mtls,
    intercept,
    start_and_stop,
    envoy_bootstrap,
)
"""In order: cheap checks first, each stage after those whose decisions it uses."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Every decision the engine made for one pod it injects: ``render`` only writes it."""

    apps: tuple[pods.Container, ...]
    ports: sockets.AppPorts
    probes: probes.ProbeChanges
    access: node_access.NodeAccess
    resources: sidecar.Resources
    existing_shm: str | None
    """The volume an app container already mounts at /dev/shm, which the proxy shares."""
    shm_size: str | None
    """sizeLimit of the pod's own shm volume; None where the pod brings one."""
    added_volumes: tuple[str, ...]
    new_volumes: tuple[Json, ...]
    outbound_socket: str | None
    interception: interception.Interception
    native: bool
    hold_application: bool
    bootstrap: str
    image: str
    workers: int
    log_level: str
    pull_policy: str | None
    pull_secrets: tuple[str, ...]
    drain_seconds: float
    grace_seconds: int
    status: Json
    """proxy.io/status, as it is written."""
    warnings: tuple[str, ...]
    mtls: mtls.PodMtls | None = None
    upstreams: tuple[upstreams.Upstream, ...] = ()
    outbound_policy: str = "allow-any"
    telemetry: Telemetry = DEFAULT_TELEMETRY

    @property
    def shm_volume_name(self) -> str:
        return self.existing_shm or SHM_VOLUME

    def summary(self) -> dict[str, Any]:
        """The decisions as plain data, for ``explain`` and ``bootstrap`` to show."""
        return {
            "ports": [
                {
                    "container": port.container,
                    "port": port.number,
                    "protocol": port.protocol,
                    "socket": port.socket,
                    "tcpFallback": port.tcp_fallback,
                    "tcpHint": port.tcp_hinted,
                }
                for port in self.ports.ports
            ],
            "upstreams": [upstreams.summary(u) for u in self.upstreams],
            "outboundPolicy": self.outbound_policy,
            "interception": "cni" if self.interception.cni else "init-container",
            "nativeSidecar": self.native,
            "holdApplication": self.hold_application,
            "image": self.image,
            "workers": self.workers,
            "logLevel": self.log_level,
            "shmVolume": self.shm_volume_name,
            "shmSize": self.shm_size,
            "outboundSocket": self.outbound_socket,
            "probesRewritten": len(self.probes.rewrites),
            "drainSeconds": self.drain_seconds,
            "mtls": _mtls_summary(self.mtls),
            **_telemetry_summary(self.telemetry),
        }


def run(ctx: Context) -> Plan | tuple[Reason, tuple[str, ...]]:
    """The plan, or the first stage's denial (its reason and problems). Raises
    ``pod.InvalidPod`` for a field of the wrong type, and ``InternalError`` naming the
    stage for anything else."""
    found: list[str] = []
    for stage in STAGES:
        try:
            findings = stage(ctx)
        except pods.InvalidPod:
            raise
        except Exception as exc:
            raise InternalError(f"stage {stage.__name__}") from exc
        if findings.denials:
            return findings.reason, findings.denials
        found += findings.warnings
    try:
        return _the_plan(ctx, found)
    except pods.InvalidPod:
        raise
    except Exception as exc:
        raise InternalError("the plan") from exc


def _the_plan(ctx: Context, found: list[str]) -> Plan:
    assert ctx.ports is not None and ctx.probes is not None and ctx.access is not None
    assert ctx.resources is not None and ctx.interception is not None
    overrides, config = ctx.overrides, ctx.config
    shm_size = None
    if ctx.existing_shm is None:
        shm_size = node_access.pod_volume_size(
            ctx.access, sidecar.shm_size(ctx.apps, overrides, config)
        )
    new_volumes = [sidecar.admin_volume(), *node_access.volumes(ctx.access)]
    if ctx.secured is not None:
        new_volumes += [mtls.identity_volume(config.mtls), mtls.sds_volume()]
    if shm_size is not None:
        new_volumes.insert(0, sidecar.shm_volume(shm_size))
    return Plan(
        apps=ctx.apps,
        ports=ctx.ports,
        probes=ctx.probes,
        access=ctx.access,
        resources=ctx.resources,
        existing_shm=ctx.existing_shm,
        shm_size=shm_size,
        added_volumes=tuple(ctx.added_volumes),
        new_volumes=tuple(new_volumes),
        outbound_socket=ctx.outbound_socket,
        interception=ctx.interception,
        native=ctx.settings.native_sidecar,
        hold_application=bool(overrides.hold_application),
        bootstrap=ctx.bootstrap,
        image=ctx.settings.image,
        workers=sidecar.concurrency(ctx.settings, ctx.resources.cpu_limit),
        log_level=ctx.settings.log_level,
        pull_policy=config.image_pull_policy,
        pull_secrets=config.image_pull_secrets,
        drain_seconds=ctx.settings.drain_seconds,
        grace_seconds=ctx.grace_seconds,
        status=_status(ctx),
        warnings=_bounded_warnings(found, ctx.parsed.unknown),
        mtls=ctx.secured,
        upstreams=ctx.upstreams,
        outbound_policy=ctx.settings.outbound_policy,
        telemetry=ctx.telemetry,
    )


def _status(ctx: Context) -> Json:
    assert ctx.interception is not None
    unknown = ctx.parsed.unknown
    ignored = unknown[: limits.IGNORED_KEYS]
    status: Json = {
        "version": __version__,
        "revision": ctx.config.revision,
        "configGeneration": ctx.config.sidecar_generation,
        "containers": [PROXY_CONTAINER],
        "initContainers": [ctx.interception.init_name],
        "volumes": list(ctx.added_volumes),
        "ignoredAnnotations": [limits.clip(u.key, limits.KEY_CHARS) for u in ignored],
        "mtls": ctx.secured.mode if ctx.secured else "off",
    }
    if ctx.settings.outbound_policy != "allow-any":
        status["outboundPolicy"] = ctx.settings.outbound_policy
    if ctx.secured is not None:
        status["identity"] = ctx.secured.identity
    if len(unknown) > len(ignored):
        status["ignoredAnnotationsNotListed"] = len(unknown) - len(ignored)
    return status


def _telemetry_summary(chosen: Telemetry) -> dict[str, Any]:
    logged = "inbound" + (", outbound" if chosen.outbound else "")
    logged += " HTTP" + (" and TCP" if chosen.tcp else "")
    traced = chosen.tracing
    return {
        "accessLog": "off" if chosen.access_log == "off" else f"{chosen.access_log}: {logged}",
        "tracing": "off"
        if traced is None
        else f"{traced.sampling:g}% of requests to {traced.collector} (OTLP/gRPC) as service "
        f"{traced.service}",
    }


def _mtls_summary(plan: mtls.PodMtls | None) -> dict[str, Any]:
    if plan is None:
        return {"mode": "off"}
    return {
        "mode": plan.mode,
        "identity": plan.identity,
        "source": plan.source,
        "plaintextRefused": plan.refuses_plaintext,
        "allowFrom": [str(peer) for peer in plan.allow_from],
    }


def _bounded_warnings(
    found: list[str], unknown: tuple[annotations.Unknown, ...]
) -> tuple[str, ...]:
    """At most ``limits.WARNINGS``, the last counting the rest; unknown keys come last and
    only the first few are ever made into sentences."""
    if not (found or unknown):
        return ()
    unlisted = max(len(unknown) - limits.WARNINGS, 0)
    shown = [*found, *(u.warning() for u in unknown[: limits.WARNINGS])]
    if not unlisted:
        return tuple(limits.first(shown, limits.WARNINGS, limits.WARNING_CHARS, "warnings"))
    # More than fit: the first few, and a count of every one left out.
    kept = [limits.clip(w, limits.WARNING_CHARS) for w in shown[: limits.WARNINGS - 1]]
    return (*kept, f"... and {len(shown) - len(kept) + unlisted:,} more warnings")


def _too_many_containers(count: int) -> str:
    return (
        f"spec.containers and spec.initContainers: {count:,} containers, more than the "
        f"{limits.CONTAINERS:,} proxy-injector injects a pod with"
    )


def _too_large(size: int, declared: int, at_least: bool = False) -> str:
    would_be = "would be at least" if at_least else "would be"
    return (
        f"the sidecar's Envoy bootstrap for this pod {would_be} {size:,} bytes, more than the "
        f"{ARG_MAX_BYTES:,} bytes Linux allows in one container argument; it grows by about "
        f"1,200 bytes per declared upstream (1,900 for one on a port of its own) and this "
        f"pod declares {declared:,} in proxy.io/upstreams"
    )


def _name_conflicts(spec: Json, added_volumes: list[str]) -> list[str]:
    problems = []
    init_names = {c.name for c in pods.containers(spec, "initContainers")}
    for ours in (INIT_CONTAINER, VALIDATE_CONTAINER):
        if ours in init_names:
            problems.append(f"the pod already has an init container named {ours}")
    volumes = {pods.text(v, "name", "spec.volumes") for v in pods.objects(spec, "volumes", "spec")}
    problems += [f"the pod already has a volume named {n}" for n in added_volumes if n in volumes]
    return problems


def _shm_volume(apps: tuple[pods.Container, ...]) -> tuple[str | None, list[str]]:
    """The volume the app already mounts at /dev/shm, if any, to be shared with the proxy."""
    mounted = {c.shm_volume: c.name for c in apps if c.shm_volume}
    if len(mounted) > 1:
        listed = ", ".join(f"{name} mounts {volume}" for volume, name in mounted.items())
        return None, [
            f"app containers mount different volumes at /dev/shm ({listed}); "
            "the proxy can share only one"
        ]
    return next(iter(mounted), None), []


def _proxy_uid_apps(spec: Json, apps: tuple[pods.Container, ...]) -> list[str]:
    """Apps whose traffic the rules leave alone: they run as the proxy's UID or GID."""
    pod_uid, pod_gid = pods.pod_run_as(spec)
    found = []
    for app in apps:
        uid, gid = app.run_as_user or pod_uid, app.run_as_group or pod_gid
        if uid == PROXY_UID:
            found.append(f"container {app.name} runs as UID {PROXY_UID}, the proxy's")
        elif gid == PROXY_GID:
            found.append(f"container {app.name} runs as GID {PROXY_GID} (runAsGroup), the proxy's")
    return [f"{line}: its traffic is never redirected and bypasses the proxy" for line in found]
