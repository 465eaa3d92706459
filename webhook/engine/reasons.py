"""The one table of reason codes: every answer the engine gives carries one, and logs,
metrics, Kubernetes Events and the CLI all read them from here."""

from __future__ import annotations

from enum import Enum


class Reason(Enum):
    INJECTED = ("injected", "the sidecar was injected")
    OPTED_OUT_BY_ANNOTATION = ("opted_out_by_annotation", 'the pod sets proxy.io/inject: "false"')
    OPTED_OUT_BY_LABEL = ("opted_out_by_label", 'the pod is labelled proxy.io/inject: "false"')
    HOST_NETWORK = ("host_network", "the pod uses the host's network namespace")
    WINDOWS = ("windows_pod", "the pod runs on Windows nodes, where Envoy and iptables do not")
    ALREADY_INJECTED = ("already_injected", "the pod already has the sidecar")
    OTHER_MESH = (
        "other_mesh_sidecar",
        "the pod already carries another mesh's sidecar (Istio's or Linkerd's)",
    )
    PROXY_NAME_TAKEN = (
        "proxy_name_taken",
        "the pod has a container named proxy, the sidecar's name, that is not our sidecar",
    )
    NAMESPACE_NEVER_INJECT = (
        "namespace_never_inject",
        "the namespace is in the mesh config's neverInjectNamespaces",
    )
    NAMESPACE_DISABLED = (
        "namespace_disabled",
        "the namespace is labelled proxy.io/inject: disabled",
    )
    NAMESPACE_NOT_ENABLED = (
        "namespace_not_enabled",
        "the namespace is not labelled proxy.io/inject: enabled",
    )
    OTHER_REVISION = (
        "other_revision",
        "the pod's or its namespace's proxy.io/rev label selects another revision of the injector",
    )
    INVALID_ANNOTATION = ("invalid_annotation", "a proxy.io annotation has an invalid value")
    INVALID_POD = ("invalid_pod", "the pod cannot be injected as it is")
    NODE_ACCESS_NOT_ALLOWED = (
        "node_access_not_allowed",
        "the pod asks for the node's shared memory or directories, which the mesh config "
        "does not allow for it",
    )
    INTERNAL_ERROR = ("internal_error", "the webhook failed on this pod")
    NOT_A_POD = ("not_a_pod", "the webhook only injects pods")
    NOT_CREATE = ("not_create", "the webhook only injects pods when they are created")

    def __init__(self, code: str, sentence: str) -> None:
        self.code = code
        self.sentence = sentence
