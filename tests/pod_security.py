"""Pod Security Standards, the checks Pod Security Admission makes (policy version latest,
as published at kubernetes.io/docs/concepts/security/pod-security-standards), over a pod's
spec. ``violations(pod, "baseline")`` lists what would make the API server reject it in a
namespace enforcing that level; restricted includes baseline."""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
LEVELS = ("baseline", "restricted")


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    kinds = ("initContainers", "containers", "ephemeralContainers")
    return [c for kind in kinds for c in spec.get(kind) or []]


def _baseline(spec: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    found = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    pod_context = spec.get("securityContext") or {}
    contexts = [("pod", pod_context)] + [
        (c["name"], c.get("securityContext") or {}) for c in _containers(spec)
    ]
    for name, context in contexts:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name}: hostProcess")
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        added = set((context.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"{name}: capabilities {sorted(added - BASELINE_CAPABILITIES)}")
        selinux = context.get("seLinuxOptions") or {}
        if (
            selinux.get("type", "") not in SELINUX_TYPES
            or selinux.get("user")
            or (selinux.get("role"))
        ):
            found.append(f"{name}: seLinuxOptions")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"{name}: seccomp Unconfined")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            found.append(f"{name}: AppArmor Unconfined")
    apparmor = "container.apparmor.security.beta.kubernetes.io/"
    found += [
        f"{key}={value}"
        for key, value in annotations.items()
        if key.startswith(apparmor) and value != "runtime/default"
        if not value.startswith("localhost/")
    ]
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"volume {volume['name']}: hostPath")
    for container in _containers(spec):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{container['name']}: hostPort {port['hostPort']}")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']}")
    return found


def _restricted(spec: dict[str, Any]) -> list[str]:
    found = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_context = spec.get("securityContext") or {}
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for container in _containers(spec):
        name, context = container["name"], container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation != false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{name}: runAsNonRoot != true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser=0")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities.drop lacks ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities.add beyond NET_BIND_SERVICE")
    if pod_context.get("runAsUser") == 0:
        found.append("pod: runAsUser=0")
    return found


def violations(pod: dict[str, Any], level: str) -> list[str]:
    spec = pod.get("spec") or {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    found = _baseline(spec, annotations)
    if level == "restricted":
        found += _restricted(spec)
    return found
