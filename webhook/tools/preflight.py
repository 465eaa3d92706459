"""``check --pre``: can this cluster take the injector, before it is installed?

One result per question, each failure with its hint, as ``check``: the Kubernetes version
(native sidecars), the installer's permissions, other mutating webhooks on pods (another
mesh's injector above all), namespaces whose Pod Security refuses what the mesh config
would add, and the API that mTLS with pod certificates needs.
"""

from __future__ import annotations

import re
from typing import Any

from webhook.engine.config import MeshConfig
from webhook.tools import identity
from webhook.tools.reading import Reader, Result

MIN_VERSION = (1, 29)
"""Native sidecars (restartPolicy: Always on an init container) are on by default."""
POD_CERTIFICATES_VERSION = (1, 34)

INSTALLS = (
    ("", "namespaces", False),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", False),
    ("rbac.authorization.k8s.io", "clusterroles", False),
    ("rbac.authorization.k8s.io", "clusterrolebindings", False),
    ("", "serviceaccounts", True),
    ("", "configmaps", True),
    ("", "services", True),
    ("", "resourcequotas", True),
    ("rbac.authorization.k8s.io", "roles", True),
    ("rbac.authorization.k8s.io", "rolebindings", True),
    ("apps", "deployments", True),
    ("apps", "daemonsets", True),
    ("policy", "poddisruptionbudgets", True),
    ("networking.k8s.io", "networkpolicies", True),
)
"""(group, resource, namespaced) of what deploy/ and its components create."""

OTHER_INJECTORS = re.compile(r"istio|linkerd", re.IGNORECASE)
ENFORCE = "pod-security.kubernetes.io/enforce"


def run(reader: Reader, config: MeshConfig, namespace: str) -> list[Result]:
    version = _version(reader)
    hooks = _pod_webhooks(reader)
    namespaces = reader.namespaces("")
    return [
        _kubernetes_version(version),
        _permissions(reader, namespace),
        _other_meshes(hooks),
        _other_webhooks(hooks),
        _pod_security(config, namespaces, namespace),
        _pod_certificates(reader, config, version),
    ]


def _version(reader: Reader) -> tuple[int, int] | None:
    found = reader.get("/version") or {}
    matched = re.match(r"v?(\d+)\.(\d+)", str(found.get("gitVersion", "")))
    return (int(matched[1]), int(matched[2])) if matched else None


def _shown(version: tuple[int, int] | None) -> str:
    return "unknown" if version is None else f"{version[0]}.{version[1]}"


def _kubernetes_version(version: tuple[int, int] | None) -> Result:
    name = f"Kubernetes is {_shown(MIN_VERSION)} or newer"
    if version is None or version < MIN_VERSION:
        hint = (
            "upgrade the control plane; on older clusters set nativeSidecar: false in a mesh "
            "config layer (the proxy as a regular container)"
        )
        return Result(name, False, f"the API server is {_shown(version)}", hint)
    return Result(name, True, _shown(version))


def _permissions(reader: Reader, namespace: str) -> Result:
    name = "you may create what the install creates"
    missing = [
        f"create {resource}" + (f" in {namespace}" if namespaced else " (cluster-wide)")
        for group, resource, namespaced in INSTALLS
        if not reader.can("create", group, resource, namespace if namespaced else "")
    ]
    if missing:
        hint = "install as a cluster administrator (cluster-admin), or have one grant these"
        return Result(name, False, f"{len(missing)} not allowed", hint, missing)
    return Result(name, True, f"{len(INSTALLS)} kinds")


def _selects_pod_creation(rule: dict[str, Any]) -> bool:
    def has(key: str, wanted: str) -> bool:
        return bool({wanted, "*"} & set(rule.get(key) or []))

    resources = set(rule.get("resources") or [])
    return (
        has("operations", "CREATE")
        and has("apiGroups", "")
        and bool({"pods", "*", "*/*"} & resources)
    )


def _pod_webhooks(reader: Reader) -> list[str]:
    """``configuration/entry`` of every mutating webhook called on pod creation, ours
    (proxy-injector*) left out."""
    listed = reader.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")
    found = []
    for configuration in (listed or {}).get("items") or []:
        name = (configuration.get("metadata") or {}).get("name", "")
        if name.startswith("proxy-injector"):
            continue
        for entry in configuration.get("webhooks") or []:
            if any(_selects_pod_creation(rule) for rule in entry.get("rules") or []):
                found.append(f"{name}/{entry.get('name')}")
    return found


def _other_meshes(hooks: list[str]) -> Result:
    name = "no other mesh's injector is installed"
    meshes = [hook for hook in hooks if OTHER_INJECTORS.search(hook)]
    if meshes:
        hint = (
            "keep the two meshes' namespaces apart (a pod carrying Istio's or Linkerd's "
            "sidecar is skipped as other_mesh_sidecar), or move as docs/install.md says"
        )
        return Result(name, False, f"{len(meshes)} webhook(s)", hint, meshes)
    return Result(name, True)


def _other_webhooks(hooks: list[str]) -> Result:
    """Informational: their order with ours is the API server's; ours is reinvoked."""
    name = "other mutating webhooks on pod creation"
    detail = (
        f"{len(hooks)}: ours is called again (reinvocationPolicy IfNeeded) when one "
        "changes a pod after it"
        if hooks
        else "none"
    )
    return Result(name, True, detail, "", hooks)


def _pod_security(config: MeshConfig, namespaces: list[dict[str, Any]], own: str) -> Result:
    """With the init container (NET_ADMIN, NET_RAW, root), injected pods are refused in
    namespaces enforcing baseline or restricted; with the CNI agent, its privileged
    DaemonSet is refused in the injector's namespace if that enforces either."""
    name = "Pod Security admits what the mesh config adds"
    refused = []
    for namespace in namespaces:
        metadata = namespace.get("metadata") or {}
        level = (metadata.get("labels") or {}).get(ENFORCE, "privileged")
        ns = metadata.get("name", "")
        if level == "privileged" or (ns in config.never_inject_namespaces and ns != own):
            continue
        if ns == own and config.interception == "cni":
            refused.append(f"{ns}: enforces {level}; the CNI agent's DaemonSet is privileged")
        elif ns != own and config.interception == "init-container":
            refused.append(f"{ns}: enforces {level}; proxy-init needs NET_ADMIN and NET_RAW")
    if refused:
        hint = (
            "mesh these namespaces with components/cni (interception: cni: the pods pass "
            f"restricted), and label {own} {ENFORCE}=privileged for its agent"
        )
        return Result(name, False, f"{len(refused)} namespace(s)", hint, refused)
    return Result(name, True, f"interception {config.interception}")


def _pod_certificates(
    reader: Reader, config: MeshConfig, version: tuple[int, int] | None
) -> Result:
    """Required when the mesh config asks for pod certificates; else said for later."""
    served = identity.served_pod_certificates(reader)
    name = "mTLS with pod certificates is available (components/mtls)"
    needed = config.mtls.identity == "pod-certificate"
    if version is not None and version < POD_CERTIFICATES_VERSION:
        wanted = _shown(POD_CERTIFICATES_VERSION)
        problem = f"needs Kubernetes {wanted}+, the API server is {_shown(version)}"
    elif served is not None:
        problem = served
    else:
        return Result(name, True, "PodCertificateRequest and ClusterTrustBundle served")
    hint = identity.FEATURE_GATES_HINT
    if needed:
        return Result(name, False, problem, hint)
    return Result(name, True, f"not now ({problem}); mtls.identity is {config.mtls.identity}")
