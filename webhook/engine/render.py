"""A plan turned into JSONPatch operations, in the order the API server applies them.

Nothing is decided here: every value comes from the ``Plan`` (``stages``); the pod is read
only for the shape of what the ops add to (a list that exists or not, an env var already
set).
"""

from __future__ import annotations

from typing import Any

import orjson

from webhook.engine import lifecycle, mtls, node_access, observability, probes, sidecar, sockets
from webhook.engine import patch as jp
from webhook.engine import pod as pods
from webhook.engine.names import (
    INTERCEPTION_KEY,
    OUTBOUND_UDS_ENV,
    PROXY_GID,
    STATUS_KEY,
)
from webhook.engine.stages import Plan


def render(pod: dict[str, Any], spec: dict[str, Any], plan: Plan) -> tuple[jp.Op, ...]:
    """The patch ops of a plan."""
    status = orjson.dumps(plan.status).decode()
    ops: list[jp.Op] = [jp.set_nested(pod, ("metadata", "annotations"), STATUS_KEY, status)]
    ops += jp.append("/spec/volumes", isinstance(spec.get("volumes"), list), list(plan.new_volumes))
    if plan.access.host_shm and spec.get("hostIPC") is not True:
        ops.append(jp.add("/spec/hostIPC", True))
    ops += _fs_group_op(spec, plan.ports)
    # After the status annotation, which made the annotations object if there was none.
    if plan.interception.spec is not None:
        key = jp.pointer("metadata", "annotations", INTERCEPTION_KEY)
        ops.append(jp.add(key, plan.interception.spec))
    ops += _pull_secrets_ops(spec, plan.pull_secrets)
    has_inits = isinstance(spec.get("initContainers"), list)
    ops.append(jp.prepend("/spec/initContainers", has_inits, plan.interception.init))
    app_mounts = node_access.app_mounts(plan.access, plan.shm_volume_name)
    for app in plan.apps:
        ops += _app_container_ops(app, app_mounts, plan.ports, plan.outbound_socket)
    ops += _probe_ops(plan.probes.rewrites)
    ops.append(_proxy_op(_proxy(plan), plan.native, plan.hold_application))
    return tuple(ops)


def _proxy(plan: Plan) -> dict[str, Any]:
    proxy = sidecar.proxy_container(
        image=plan.image,
        bootstrap=plan.bootstrap,
        workers=plan.workers,
        log_level=plan.log_level,
        limits=plan.resources,
        mounts=[
            *node_access.proxy_mounts(plan.access, plan.shm_volume_name),
            sidecar.admin_mount(),
            *(mtls.proxy_mounts() if plan.mtls else []),
        ],
        drain_seconds=plan.drain_seconds,
        pull_policy=plan.pull_policy,
        env=observability.proxy_env(plan.telemetry),
    )
    return lifecycle.stopping_after_the_app(
        proxy,
        native=plan.native,
        drain_seconds=plan.drain_seconds,
        grace_seconds=plan.grace_seconds,
    )


_EPHEMERAL_VOLUMES = {"name", "emptyDir", "configMap", "secret", "downwardAPI", "projected"}


def _fs_group_op(spec: dict[str, Any], plan: sockets.AppPorts) -> list[jp.Op]:
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


def _proxy_op(proxy: dict[str, Any], native: bool, hold: bool) -> jp.Op:
    """Where the proxy goes: right after proxy-init as a native sidecar, so the app's own
    init containers already have the proxy; else a regular container, first if it must
    hold the app. Added last, so the app containers' ops above kept their indexes."""
    if native:
        return jp.add("/spec/initContainers/1", sidecar.as_native_sidecar(proxy))
    if hold:
        return jp.add("/spec/containers/0", lifecycle.holding_the_app(proxy))
    return jp.add("/spec/containers/-", proxy)


def _app_container_ops(
    app: pods.Container,
    mounts: list[dict[str, Any]],
    plan: sockets.AppPorts,
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
