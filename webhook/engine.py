"""The injection engine: (pod, namespace, mesh config) -> patch, skip or denial.

Pure: no I/O, no clock, no globals written. The webhook, the offline CLI and the tests all
call ``inject`` and nothing below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from webhook import __version__, bootstrap, sidecar, sockets
from webhook import annotations as annotation_table
from webhook import patch as jp
from webhook import pod as pods
from webhook.config import MeshConfig
from webhook.names import (
    INIT_CONTAINER,
    PROXY_CONTAINER,
    SHM_VOLUME,
    STATUS_KEY,
)
from webhook.policy import InvalidInjectValue, Reason, decide


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


def skip(reason: Reason) -> InjectionResult:
    return InjectionResult(Outcome.SKIP, reason, reason.sentence)


def deny(reason: Reason, problems: list[str] | tuple[str, ...]) -> InjectionResult:
    return InjectionResult(Outcome.DENY, reason, "; ".join(problems))


def inject(
    pod: Any,
    namespace: str,
    config: MeshConfig,
    namespace_labels: Mapping[str, str] | None = None,
) -> InjectionResult:
    """Raises ``pod.InvalidPod`` when a field the engine reads has the wrong type."""
    if not isinstance(pod, dict):
        raise pods.InvalidPod("(pod)", "expected an object")
    metadata = pods.mapping(pod, "metadata", "pod")
    spec = pods.mapping(pod, "spec", "pod")
    annotations = pods.string_map(metadata, "annotations", "metadata")
    labels = pods.string_map(metadata, "labels", "metadata")
    try:
        reason = decide(labels, annotations, spec, namespace, config, namespace_labels)
    except InvalidInjectValue as exc:
        return deny(Reason.INVALID_ANNOTATION, [str(exc)])
    if reason is not Reason.INJECTED:
        return skip(reason)
    parsed = annotation_table.parse(annotations)
    if parsed.errors:
        return deny(Reason.INVALID_ANNOTATION, parsed.errors)
    return _build(pod, metadata, spec, parsed, config)


def _name_conflicts(spec: dict[str, Any], adds_volume: bool) -> list[str]:
    problems = []
    init_names = {c.name for c in pods.containers(spec, "initContainers")}
    if INIT_CONTAINER in init_names:
        problems.append(f"the pod already has an init container named {INIT_CONTAINER}")
    volumes = {pods.text(v, "name", "spec.volumes") for v in pods.objects(spec, "volumes", "spec")}
    if adds_volume and SHM_VOLUME in volumes:
        problems.append(f"the pod already has a volume named {SHM_VOLUME}")
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


def _build(
    pod: dict[str, Any],
    metadata: dict[str, Any],
    spec: dict[str, Any],
    parsed: annotation_table.Parsed,
    config: MeshConfig,
) -> InjectionResult:
    overrides = parsed.overrides
    apps = pods.containers(spec)
    plan = sockets.plan(apps, overrides, config)
    limits, limit_errors = sidecar.resources(overrides, config)
    if plan.annotation_errors or limit_errors:
        return deny(Reason.INVALID_ANNOTATION, [*plan.annotation_errors, *limit_errors])
    existing_shm, shm_errors = _shm_volume(apps)
    conflicts = _name_conflicts(spec, adds_volume=existing_shm is None)
    if plan.pod_errors or shm_errors or conflicts:
        return deny(Reason.INVALID_POD, [*plan.pod_errors, *shm_errors, *conflicts])

    volume_name = existing_shm or SHM_VOLUME
    ops: list[jp.Op] = []
    status = {
        "version": __version__,
        "containers": [PROXY_CONTAINER],
        "initContainers": [INIT_CONTAINER],
        "volumes": [] if existing_shm else [SHM_VOLUME],
        "ignoredAnnotations": [u.key for u in parsed.unknown],
    }
    ops.append(
        jp.set_key(
            "/metadata/annotations",
            "annotations" in metadata and metadata["annotations"] is not None,
            STATUS_KEY,
            orjson.dumps(status).decode(),
        )
    )
    if existing_shm is None:
        volume = sidecar.shm_volume(sidecar.shm_size(apps, overrides, config))
        ops += jp.append("/spec/volumes", isinstance(spec.get("volumes"), list), [volume])
    init = sidecar.init_container(
        image=config.init_image, args=sidecar.init_args(overrides, config), limits=limits
    )
    ops.append(
        jp.prepend("/spec/initContainers", isinstance(spec.get("initContainers"), list), init)
    )
    for app in apps:
        ops += _app_container_ops(app, volume_name, plan.ports)
    proxy = sidecar.proxy_container(
        image=overrides.image or config.proxy_image,
        bootstrap=bootstrap.encode(bootstrap.build(plan.ports)),
        workers=sidecar.concurrency(overrides, config, limits.cpu_limit),
        log_level=overrides.log_level or config.log_level,
        limits=limits,
        shm_volume_name=volume_name,
    )
    ops += jp.append("/spec/containers", True, [proxy])
    warnings = (*plan.warnings, *(u.warning() for u in parsed.unknown))
    return InjectionResult(
        Outcome.INJECT, Reason.INJECTED, Reason.INJECTED.sentence, tuple(ops), warnings
    )


def _app_container_ops(
    app: pods.Container, volume: str, ports: tuple[sockets.AppPort, ...]
) -> list[jp.Op]:
    base = jp.pointer("spec", "containers", app.index)
    ops: list[jp.Op] = []
    if app.shm_volume is None:
        ops += jp.append(base + "/volumeMounts", app.has_mounts, [sidecar.shm_mount(volume)])
    new_env = []
    for var in sockets.env_for(app.name, ports):
        if var["name"] in app.env_names:
            index = app.env_names.index(var["name"])
            ops.append(jp.replace(f"{base}/env/{index}", var))
        else:
            new_env.append(var)
    ops += jp.append(base + "/env", app.has_env, new_env)
    return ops
