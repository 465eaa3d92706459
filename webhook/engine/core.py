"""The engine's entry point: (pod, namespace, mesh config) -> patch, skip or denial.

Pure: no I/O, no clock, no globals written. The webhook, the offline CLI and the tests all
call ``inject`` and nothing below it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import orjson

from webhook import __version__
from webhook.engine import annotations as annotation_table
from webhook.engine import (
    bootstrap,
    lifecycle,
    limits,
    mtls,
    node_access,
    probes,
    sidecar,
    sockets,
    upstreams,
)
from webhook.engine import patch as jp
from webhook.engine import pod as pods
from webhook.engine.annotations import Overrides, pick
from webhook.engine.config import MeshConfig
from webhook.engine.names import (
    ADMIN_VOLUME,
    ARG_MAX_BYTES,
    IDENTITY_VOLUME,
    INIT_CONTAINER,
    INTERCEPTION_KEY,
    INTERCEPTION_SPEC_VERSION,
    OUTBOUND_UDS_ENV,
    OUTBOUND_UDS_PATH,
    PROXY_CONTAINER,
    PROXY_GID,
    PROXY_UID,
    SDS_VOLUME,
    SHM_VOLUME,
    STATUS_KEY,
    VALIDATE_CONTAINER,
)
from webhook.engine.policy import InvalidInjectValue, Reason, decide


class Outcome(StrEnum):
    INJECT = "inject"
    SKIP = "skip"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class InjectionResult:
    outcome: Outcome
    reason: Reason
    message: str
    patch: tuple[jp.Op, ...] = ()
    warnings: tuple[str, ...] = ()
    rule: str = ""
    """Which input decided whether to inject (see ``policy.Decision``)."""


def skip(reason: Reason) -> InjectionResult:
    return InjectionResult(Outcome.SKIP, reason, reason.sentence)


def deny(reason: Reason, problems: list[str] | tuple[str, ...]) -> InjectionResult:
    shown = limits.first(problems, limits.PROBLEMS, limits.PROBLEM_CHARS, "problems")
    return InjectionResult(Outcome.DENY, reason, "; ".join(shown))


class InternalError(Exception):
    """The engine failed in a way it did not foresee; ``__cause__`` is the exception."""

    def __init__(self, field: str) -> None:
        super().__init__(f"internal error while reading {field}")
        self.field = field


class _Reading:
    """Which part of the pod the engine is reading, for an ``InternalError``."""

    __slots__ = ("field",)

    def __init__(self) -> None:
        self.field = "the pod"


def inject(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> InjectionResult:
    """Raises ``pod.InvalidPod`` when a field the engine reads has the wrong type, and
    ``InternalError`` naming the part being read for anything else that goes wrong."""
    reading = _Reading()
    try:
        return _inject(pod, namespace, config, namespace_labels, reading)
    except pods.InvalidPod:
        raise
    except Exception as exc:
        raise InternalError(reading.field) from exc


def inject_or_deny(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> InjectionResult:
    """``inject``, with a pod field of the wrong type answered as a denial naming it (as
    the webhook, ``inject -f`` and ``check`` all answer it)."""
    try:
        return inject(pod, namespace, config, namespace_labels)
    except pods.InvalidPod as exc:
        return deny(Reason.INVALID_POD, [str(exc)])


def plan(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> Plan | InjectionResult:
    """The decisions ``inject`` turns into a patch, or the skip or denial it answers.
    Raises ``pod.InvalidPod`` as ``inject`` does."""
    reading = _Reading()
    prepared = _prepare(pod, namespace, config, namespace_labels, reading)
    if isinstance(prepared, InjectionResult):
        return prepared
    spec, parsed, _ = prepared
    return _plan(pod, spec, namespace, parsed, config, reading)


def _inject(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None,
    reading: _Reading,
) -> InjectionResult:
    prepared = _prepare(pod, namespace, config, namespace_labels, reading)
    if isinstance(prepared, InjectionResult):
        return prepared
    spec, parsed, rule = prepared
    return replace(_build(pod, spec, namespace, parsed, config, reading), rule=rule)


def _prepare(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None,
    reading: _Reading,
) -> tuple[dict[str, Any], annotation_table.Parsed, str] | InjectionResult:
    """Whether to inject at all, and the parsed annotations when so."""
    if not isinstance(pod, dict):
        raise pods.InvalidPod("(pod)", "expected an object")
    reading.field = "metadata"
    metadata = pods.mapping(pod, "metadata", "pod")
    spec = pods.mapping(pod, "spec", "pod")
    annotations = pods.string_map(metadata, "annotations", "metadata")
    labels = pods.string_map(metadata, "labels", "metadata")
    try:
        decision = decide(labels, annotations, spec, namespace, config, namespace_labels)
    except InvalidInjectValue as exc:
        return deny(Reason.INVALID_ANNOTATION, [str(exc)])
    if decision.reason is not Reason.INJECTED:
        return replace(skip(decision.reason), rule=decision.rule)
    reading.field = "metadata.annotations"
    size = sum(len(key) + len(value) for key, value in annotations.items())
    if size > limits.ANNOTATIONS_BYTES:
        return deny(Reason.INVALID_POD, [_annotations_too_large(size)])
    parsed = annotation_table.parse(annotations)
    if parsed.errors:
        return deny(Reason.INVALID_ANNOTATION, parsed.errors)
    return spec, parsed, decision.rule


def _annotations_too_large(size: int) -> str:
    # Characters, which are never more than bytes: when this says too large, so would the
    # API server, which checks the pod only after the mutating webhooks.
    return (
        f"metadata.annotations: {size:,} characters, more than the "
        f"{limits.ANNOTATIONS_BYTES:,} bytes the API server accepts for keys and values"
    )


def _name_conflicts(spec: dict[str, Any], added_volumes: list[str]) -> list[str]:
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


_EPHEMERAL_VOLUMES = {"name", "emptyDir", "configMap", "secret", "downwardAPI", "projected"}


def _fs_group_op(spec: dict[str, Any], plan: sockets.PortPlan) -> list[jp.Op]:
    """Give the shared volume a group Envoy is in (fsGroup 1337), so an app whose umask is
    002 makes sockets Envoy can connect to. Only where the pod sets no fsGroup and has no
    volume whose files the kubelet would re-own for it (a PVC, hostPath, CSI...)."""
    context = pods.mapping(spec, "securityContext", "spec")
    if "fsGroup" in context or not any(p.socket for p in plan.ports):
        return []
    if any(set(v) - _EPHEMERAL_VOLUMES for v in pods.objects(spec, "volumes", "spec")):
        return []
    return [
        jp.set_key(
            "/spec/securityContext",
            "securityContext" in spec and spec["securityContext"] is not None,
            "fsGroup",
            PROXY_GID,
        )
    ]


@dataclass(frozen=True, slots=True)
class Plan:
    """Every decision the engine made for one pod it injects; ``_render`` turns it into
    the patch. A new feature adds a field here and a step there."""

    apps: tuple[pods.Container, ...]
    ports: sockets.PortPlan
    probes: probes.ProbePlan
    access: node_access.NodeAccess
    resources: sidecar.Resources
    existing_shm: str | None
    """The volume an app container already mounts at /dev/shm, which the proxy shares."""
    added_volumes: tuple[str, ...]
    outbound_socket: str | None
    cni: bool
    init: dict[str, Any]
    """proxy-init, or proxy-validate in cni mode."""
    interception_spec: str | None
    """cni mode: the annotation the node's agent reads (proxy.io/interception-spec)."""
    native: bool
    bootstrap: str
    drain_seconds: float
    grace_seconds: int | None
    warnings: tuple[str, ...]
    mtls: mtls.MtlsPlan | None = None

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
                }
                for port in self.ports.ports
            ],
            "interception": "cni" if self.cni else "init-container",
            "nativeSidecar": self.native,
            "shmVolume": self.shm_volume_name,
            "outboundSocket": self.outbound_socket,
            "probesRewritten": len(self.probes.rewrites),
            "drainSeconds": self.drain_seconds,
            "mtls": _mtls_summary(self.mtls),
        }


def _mtls_summary(plan: mtls.MtlsPlan | None) -> dict[str, Any]:
    if plan is None:
        return {"mode": "off"}
    return {
        "mode": plan.mode,
        "identity": plan.identity,
        "source": plan.source,
        "plaintextRefused": plan.refuses_plaintext,
        "allowFrom": [str(peer) for peer in plan.allow_from],
    }


def _build(
    pod: dict[str, Any],
    spec: dict[str, Any],
    namespace: str,
    parsed: annotation_table.Parsed,
    config: MeshConfig,
    reading: _Reading,
) -> InjectionResult:
    plan = _plan(pod, spec, namespace, parsed, config, reading)
    if isinstance(plan, InjectionResult):
        return plan
    reading.field = "the patch"
    ops = _render(pod, spec, parsed, config, plan)
    return InjectionResult(
        Outcome.INJECT, Reason.INJECTED, Reason.INJECTED.sentence, ops, plan.warnings
    )


def _plan(
    pod: dict[str, Any],
    spec: dict[str, Any],
    namespace: str,
    parsed: annotation_table.Parsed,
    config: MeshConfig,
    reading: _Reading,
) -> Plan | InjectionResult:
    """Every decision, or the denial with all its reasons; cheap checks first."""
    overrides = parsed.overrides
    reading.field = "spec.containers"
    too_many = _too_many_containers(spec)
    if too_many:
        return deny(Reason.INVALID_POD, [too_many])
    apps = pods.containers(spec)
    if not apps:
        return deny(Reason.INVALID_POD, ["spec.containers: a pod needs at least one container"])
    declared = overrides.upstreams or ()
    access = node_access.plan(overrides, config)
    refused = node_access.refusals(access, namespace, config)
    if refused:
        return deny(Reason.NODE_ACCESS_NOT_ALLOWED, refused)
    # Checked before anything per port is built: a pod with tens of thousands of ports
    # would otherwise cost seconds only to be refused for its size.
    least = bootstrap.least_size(sockets.least_ports(apps, overrides, config), 0, len(declared))
    if least > ARG_MAX_BYTES:
        return deny(Reason.INVALID_POD, [_too_large(least, len(declared), at_least=True)])
    port_plan = sockets.plan(apps, overrides, config, access.socket_root)
    reading.field = "the app containers' probes"
    mtls_mode = mtls.mode_of(overrides, config)
    refuses_plaintext = mtls.refuses_plaintext(overrides, mtls_mode)
    probe_plan = probes.plan(
        apps, port_plan, pick(overrides.rewrite_probes, True), refuses_plaintext
    )
    reading.field = "the proxy's resources"
    sized = sidecar.resources(overrides, config)
    if port_plan.annotation_errors or sized.errors:
        return deny(Reason.INVALID_ANNOTATION, [*port_plan.annotation_errors, *sized.errors])
    reading.field = "spec.securityContext"
    proxy_uid_warnings = _proxy_uid_apps(spec, apps)
    if proxy_uid_warnings and config.deny_proxy_uid_apps:
        return deny(Reason.INVALID_POD, proxy_uid_warnings)
    reading.field = "spec.volumes and spec.initContainers"
    # In host mode the app's /dev/shm is the node's: a volume of its own there is refused.
    existing_shm, shm_errors = (None, []) if access.host_shm else _shm_volume(apps)
    added = [*([] if existing_shm else [SHM_VOLUME]), ADMIN_VOLUME, *access.volume_names]
    if mtls_mode != "off":
        added += [IDENTITY_VOLUME, SDS_VOLUME]
    conflicts = _name_conflicts(spec, added)
    conflicts += node_access.pod_problems(access, apps, overrides, config)
    if port_plan.pod_errors or shm_errors or conflicts or probe_plan.errors:
        problems = [*port_plan.pod_errors, *shm_errors, *conflicts, *probe_plan.errors]
        return deny(Reason.INVALID_POD, problems)
    reading.field = "proxy.io/upstreams"
    outbound_socket = access.socket_path(OUTBOUND_UDS_PATH) if overrides.outbound_uds else None
    least = bootstrap.least_size(len(port_plan.ports), len(probe_plan.routes), len(declared))
    if least > ARG_MAX_BYTES:
        return deny(Reason.INVALID_POD, [_too_large(least, len(declared), at_least=True)])
    upstream_list, upstream_warnings = upstreams.resolve(declared, namespace, config.cluster_domain)
    reading.field = "spec.serviceAccountName"
    account = pods.service_account(spec) if mtls_mode != "off" else ""
    secured = mtls.decide(overrides, config, mtls_mode, namespace, account, upstream_list)
    if secured.errors:
        return deny(Reason.INVALID_ANNOTATION, secured.errors)
    reading.field = "spec"
    cni = pick(overrides.interception, config.interception) == "cni"
    interception = _interception(pod, overrides, config, sized.resources, cni, secured.plan)
    if isinstance(interception, InjectionResult):
        return interception
    init, interception_spec = interception
    reading.field = "spec.terminationGracePeriodSeconds"
    native = pick(overrides.native_sidecar, config.native_sidecar)
    drain_seconds = pick(overrides.drain_duration, config.drain_duration)
    grace_seconds = pods.termination_grace_seconds(spec)
    reading.field = "the sidecar's bootstrap"
    sidecar_plan = bootstrap.SidecarPlan(
        port_plan.ports,
        tuple(probe_plan.routes),
        secured.upstreams,
        config.upstream_policy,
        outbound_socket,
        dual_stack=config.dual_stack,
        mtls=secured.plan,
        drain_hook=lifecycle.drains(native, drain_seconds),
    )
    encoded = bootstrap.encoded(sidecar_plan)
    size = len(encoded) if encoded.isascii() else len(encoded.encode())
    if size > ARG_MAX_BYTES:
        return deny(Reason.INVALID_POD, [_too_large(size, len(declared))])
    warnings = _bounded_warnings(
        [
            *sized.warnings,
            *port_plan.warnings,
            *probe_plan.warnings,
            *upstream_warnings,
            *secured.warnings,
            *proxy_uid_warnings,
            *lifecycle.grace_warnings(native, drain_seconds, grace_seconds),
            *node_access.warnings(access),
            *_pod_security_warnings(namespace, config, cni),
        ],
        parsed.unknown,
    )
    return Plan(
        apps=apps,
        ports=port_plan,
        probes=probe_plan,
        access=access,
        resources=sized.resources,
        existing_shm=existing_shm,
        added_volumes=tuple(added),
        outbound_socket=outbound_socket,
        cni=cni,
        init=init,
        interception_spec=interception_spec,
        native=native,
        bootstrap=encoded,
        drain_seconds=drain_seconds,
        grace_seconds=grace_seconds,
        warnings=warnings,
        mtls=secured.plan,
    )


def _render(
    pod: dict[str, Any],
    spec: dict[str, Any],
    parsed: annotation_table.Parsed,
    config: MeshConfig,
    plan: Plan,
) -> tuple[jp.Op, ...]:
    """The patch ops of a plan, in the order the API server applies them."""
    overrides, access = parsed.overrides, plan.access
    init_name = VALIDATE_CONTAINER if plan.cni else INIT_CONTAINER
    added = list(plan.added_volumes)
    ops: list[jp.Op] = [
        _status_op(pod, parsed, added, init_name, config.sidecar_generation, plan.mtls)
    ]
    new_volumes = [sidecar.admin_volume(), *node_access.volumes(access)]
    if plan.mtls is not None:
        new_volumes += [mtls.identity_volume(config.mtls), mtls.sds_volume()]
    if plan.existing_shm is None:
        size = node_access.pod_volume_size(access, sidecar.shm_size(plan.apps, overrides, config))
        new_volumes.insert(0, sidecar.shm_volume(size))
    ops += jp.append("/spec/volumes", isinstance(spec.get("volumes"), list), new_volumes)
    if access.host_shm and spec.get("hostIPC") is not True:
        ops.append(jp.add("/spec/hostIPC", True))
    ops += _fs_group_op(spec, plan.ports)
    # After the status annotation, which made the annotations object if there was none.
    if plan.interception_spec is not None:
        ops.append(
            jp.add(jp.pointer("metadata", "annotations", INTERCEPTION_KEY), plan.interception_spec)
        )
    ops += _pull_secrets_ops(spec, config.image_pull_secrets)
    ops.append(
        jp.prepend("/spec/initContainers", isinstance(spec.get("initContainers"), list), plan.init)
    )
    app_mounts = node_access.app_mounts(access, plan.shm_volume_name)
    for app in plan.apps:
        ops += _app_container_ops(app, app_mounts, plan.ports, plan.outbound_socket)
    ops += _probe_ops(plan.probes.rewrites)
    proxy = sidecar.proxy_container(
        image=overrides.image or config.proxy_image,
        bootstrap=plan.bootstrap,
        workers=sidecar.concurrency(overrides, config, plan.resources.cpu_limit),
        log_level=overrides.log_level or config.log_level,
        limits=plan.resources,
        mounts=[
            *node_access.proxy_mounts(access, plan.shm_volume_name),
            sidecar.admin_mount(),
            *(mtls.proxy_mounts() if plan.mtls else []),
        ],
        drain_seconds=plan.drain_seconds,
        pull_policy=config.image_pull_policy,
    )
    proxy = lifecycle.stopping_after_the_app(
        proxy,
        native=plan.native,
        drain_seconds=plan.drain_seconds,
        grace_seconds=plan.grace_seconds,
    )
    ops.append(_proxy_op(proxy, plan.native, bool(overrides.hold_application)))
    return tuple(ops)


def _bounded_warnings(
    found: list[str], unknown: tuple[annotation_table.Unknown, ...]
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


def _too_many_containers(spec: dict[str, Any]) -> str | None:
    count = len(pods.array(spec, "containers", "spec")) + len(
        pods.array(spec, "initContainers", "spec")
    )
    if count <= limits.CONTAINERS:
        return None
    return (
        f"spec.containers and spec.initContainers: {count:,} containers, more than the "
        f"{limits.CONTAINERS:,} proxy-injector injects a pod with"
    )


def _pull_secrets_ops(spec: dict[str, Any], wanted: tuple[str, ...]) -> list[jp.Op]:
    """The mesh config's pull secrets (our images may sit in a private registry), each
    added once: the pod's own come first and are never repeated."""
    if not wanted:
        return []
    listed = pods.objects(spec, "imagePullSecrets", "spec")
    have = {pods.text(item, "name", "spec.imagePullSecrets") for item in listed}
    missing = [{"name": name} for name in wanted if name not in have]
    return jp.append(
        "/spec/imagePullSecrets", isinstance(spec.get("imagePullSecrets"), list), missing
    )


def _probe_ops(rewrites: list[probes.Rewrite]) -> list[jp.Op]:
    ops: list[jp.Op] = []
    for rewrite in rewrites:
        base = ("spec", "containers", rewrite.container_index, rewrite.kind)
        ops += [jp.remove(jp.pointer(*base, handler)) for handler in rewrite.removed]
        ops.append(jp.add(jp.pointer(*base, "httpGet"), rewrite.http_get))
    return ops


def _too_long_args(container: dict[str, Any]) -> list[str]:
    """The annotations an init container flag comes from can hold more than one argument
    may: such a pod would fail to start, so it is denied here."""
    args = container["args"]
    if max(map(len, args)) * 4 <= ARG_MAX_BYTES:  # UTF-8 takes at most 4 bytes a character
        return []
    return [
        f"container {container['name']} would get {flag} {len(value.encode()):,} bytes long, "
        f"more than the {ARG_MAX_BYTES:,} bytes Linux allows in one argument"
        for flag, value in itertools.pairwise(args)
        if len(value) * 4 > ARG_MAX_BYTES and len(value.encode()) > ARG_MAX_BYTES
    ]


def _proxy_op(proxy: dict[str, Any], native: bool, hold: bool) -> jp.Op:
    """Where the proxy goes: right after proxy-init as a native sidecar, so the app's own
    init containers already have the proxy; else a regular container, first if it must
    hold the app. Added last, so the app containers' ops above kept their indexes."""
    if native:
        return jp.add("/spec/initContainers/1", sidecar.as_native_sidecar(proxy))
    if hold:
        return jp.add("/spec/containers/0", lifecycle.holding_the_app(proxy))
    return jp.add("/spec/containers/-", proxy)


def _proxy_uid_apps(spec: dict[str, Any], apps: tuple[pods.Container, ...]) -> list[str]:
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


def _too_large(size: int, declared: int, at_least: bool = False) -> str:
    would_be = "would be at least" if at_least else "would be"
    return (
        f"the sidecar's Envoy bootstrap for this pod {would_be} {size:,} bytes, more than the "
        f"{ARG_MAX_BYTES:,} bytes Linux allows in one container argument; it grows by about "
        f"900 bytes per declared upstream and this pod declares {declared:,} in "
        "proxy.io/upstreams"
    )


def _status_op(
    pod: dict[str, Any],
    parsed: annotation_table.Parsed,
    volumes: list[str],
    init_name: str,
    generation: str,
    secured: mtls.MtlsPlan | None,
) -> jp.Op:
    ignored = parsed.unknown[: limits.IGNORED_KEYS]
    status: dict[str, Any] = {
        "version": __version__,
        "configGeneration": generation,
        "containers": [PROXY_CONTAINER],
        "initContainers": [init_name],
        "volumes": volumes,
        "ignoredAnnotations": [limits.clip(u.key, limits.KEY_CHARS) for u in ignored],
        "mtls": secured.mode if secured else "off",
    }
    if secured is not None:
        status["identity"] = secured.identity
    if len(parsed.unknown) > len(ignored):
        status["ignoredAnnotationsNotListed"] = len(parsed.unknown) - len(ignored)
    encoded = orjson.dumps(status).decode()
    return jp.set_nested(pod, ("metadata", "annotations"), STATUS_KEY, encoded)


def _app_container_ops(
    app: pods.Container,
    mounts: list[dict[str, Any]],
    plan: sockets.PortPlan,
    outbound_socket: str | None,
) -> list[jp.Op]:
    """``mounts``: the pod volume's first; a container that already mounts a volume at
    /dev/shm (shared with the proxy instead) does not get it again."""
    base = jp.pointer("spec", "containers", app.index)
    ops: list[jp.Op] = []
    wanted_mounts = mounts if app.shm_volume is None else mounts[1:]
    if wanted_mounts:
        ops += jp.append(base + "/volumeMounts", app.has_mounts, wanted_mounts)
    wanted = plan.env_for(app.name)
    if outbound_socket:
        wanted.append({"name": OUTBOUND_UDS_ENV, "value": outbound_socket})
    new_env = []
    positions = app.env_positions({var["name"] for var in wanted}) if wanted else {}
    for var in wanted:
        index = positions.get(var["name"])
        if index is not None:
            ops.append(jp.replace(f"{base}/env/{index}", var))
        else:
            new_env.append(var)
    ops += jp.append(base + "/env", app.has_env, new_env)
    return ops


def _interception(
    pod: dict[str, Any],
    overrides: Overrides,
    config: MeshConfig,
    resources: sidecar.Resources,
    cni: bool,
    secured: mtls.MtlsPlan | None,
) -> tuple[dict[str, Any], str | None] | InjectionResult:
    """The init container that sets up interception (proxy-init) or checks the CNI plugin
    did (proxy-validate, with the spec the plugin reads), or the denial that stops it.
    With mTLS it also writes the proxy's SDS files, from its own args."""
    init_args = sidecar.init_args(overrides, config)
    sds_args = mtls.sds_args(secured.files) if secured else ()
    mounts = [mtls.init_mount()] if secured else None
    if not cni:
        init = sidecar.init_container(
            image=config.init_image,
            args=[*init_args, *sds_args],
            limits=resources,
            pull_policy=config.image_pull_policy,
            mounts=mounts,
        )
        long_args = _too_long_args(init)
        return deny(Reason.INVALID_ANNOTATION, long_args) if long_args else (init, None)
    target = sidecar.validation_target(overrides, config)
    if target is None:
        return deny(Reason.INVALID_ANNOTATION, [_nothing_to_validate()])
    spec = _interception_spec(init_args)
    too_large = _spec_too_large(pod, spec)
    if too_large:
        return deny(Reason.INVALID_ANNOTATION, [too_large])
    init = sidecar.validate_container(
        image=config.init_image,
        target=target,
        limits=resources,
        pull_policy=config.image_pull_policy,
        extra_args=sds_args,
        mounts=mounts,
    )
    return init, spec


def _interception_spec(init_args: list[str]) -> str:
    """What the CNI agent applies: the init-iptables flags, versioned."""
    spec = {"version": INTERCEPTION_SPEC_VERSION, "initIptables": init_args[1:]}
    return orjson.dumps(spec).decode()


def _spec_too_large(pod: dict[str, Any], spec: str) -> str | None:
    """The spec repeats the pod's port and range annotations: with them it may take the
    annotations past what the API server accepts, which it would say without naming us."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    size = sum(len(k) + len(v) for k, v in annotations.items()) + len(INTERCEPTION_KEY) + len(spec)
    if size <= limits.ANNOTATIONS_BYTES:
        return None
    return (
        f"{INTERCEPTION_KEY} ({len(spec):,} characters, the interception flags the CNI plugin "
        f"reads) would take metadata.annotations to {size:,} characters, more than the "
        f"{limits.ANNOTATIONS_BYTES:,} bytes the API server accepts; shorten the proxy.io "
        "port and IP-range annotations"
    )


def _nothing_to_validate() -> str:
    return (
        "proxy.io/interception cni: the pod redirects no outbound address (see "
        "proxy.io/include-outbound-ip-ranges and the exclusions), so proxy-validate has "
        "nothing to check the CNI plugin's rules with"
    )


def _pod_security_warnings(namespace: str, config: MeshConfig, cni: bool) -> list[str]:
    if cni or namespace not in config.pod_security_namespaces:
        return []
    return [
        f"namespace {namespace} enforces Pod Security (mesh config podSecurityNamespaces): "
        "proxy-init runs as root with NET_ADMIN and NET_RAW, which baseline and restricted "
        "reject; use proxy.io/interception: cni with the proxy-injector CNI plugin"
    ]
