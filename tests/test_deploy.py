"""deploy/: rendered with kubectl kustomize, every object validated against the real schemas,
checkov clean, and the settings `failurePolicy: Fail` depends on pinned by assertions."""

from __future__ import annotations

import os
import shutil
import subprocess
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from tests.support import apply, container, object_errors
from webhook.cli import parser
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping, layer_order, parse_layers
from webhook.server.settings import Limits

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
"""Validated against prometheus-operator's schemas in tests/test_monitoring.py."""


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing (scripts/test installs Debian's kubernetes-client)"
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


BASE = render(DEPLOY)
CERT_MANAGER = render(DEPLOY / "overlays" / "cert-manager")
REVISION = render(DEPLOY / "examples" / "revision-canary")


def mesh_config_of(objects: list[dict]) -> MeshConfig:
    """The mesh config the rendered ConfigMap gives the webhook: mesh.yaml, then each
    component's layer, as ``--config=<the mounted directory>`` reads them."""
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("proxy-injector-mesh")
    ]
    data = config_map["data"]
    return parse_layers([(key, data[key]) for key in layer_order(list(data))], "ConfigMap")


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("objects", [BASE, CERT_MANAGER], ids=["base", "cert-manager"])
def test_every_rendered_object_validates_strictly(objects) -> None:
    for obj in objects:
        if obj["kind"] in CERT_MANAGER_KINDS:
            assert obj["apiVersion"] == "cert-manager.io/v1"
            continue
        assert object_errors(obj) == []


def test_base_installs_everything_in_proxy_system() -> None:
    kinds = sorted(o["kind"] for o in BASE)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRole",  # Events
            "ClusterRoleBinding",
            "ConfigMap",
            "ResourceQuota",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "NetworkPolicy",
            "MutatingWebhookConfiguration",
        ]
    )
    namespaced = [
        o
        for o in BASE
        if o["kind"]
        not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration")
    ]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"proxy-system"}


def test_the_webhook_pod_is_locked_down_and_highly_available() -> None:
    deployment = one(BASE, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["template"]["metadata"]["labels"]["proxy.io/inject"] == "false"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Spread across zones and nodes; scheduled (and kept) before ordinary workloads, in a
    # namespace whose quota admits the critical class where a cluster reserves it.
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    assert pod["priorityClassName"] == "system-cluster-critical"
    quota = one(BASE, "ResourceQuota")["spec"]["scopeSelector"]["matchExpressions"][0]
    assert "system-cluster-critical" in quota["values"]
    (webhook,) = pod["containers"]
    assert webhook["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert webhook["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert webhook["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert webhook["resources"]["limits"] and webhook["resources"]["requests"]
    assert one(BASE, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    service = one(BASE, "Service")["spec"]["ports"][0]
    assert (service["port"], service["targetPort"]) == (443, "https")
    assert webhook["ports"][0] == {"name": "https", "containerPort": 8443, "protocol": "TCP"}


@pytest.mark.parametrize(
    "objects", [BASE, CERT_MANAGER, REVISION], ids=["base", "cert-manager", "revision"]
)
def test_the_deployment_runs_a_command_line_that_exists(objects) -> None:
    webhook = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = parser().parse_args(webhook["args"])
    assert args.command == "serve"
    assert (args.host, args.port) == ("0.0.0.0", 8443)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pre_stop = int(webhook["lifecycle"]["preStop"]["exec"]["command"][1])
    # preStop, the drain, closing the listener, handshakes under way, the settle second and
    # the wait for requests in progress fit in the grace period, or the kubelet kills the
    # webhook with requests unanswered.
    limits = Limits()
    closing = limits.close_grace_seconds + limits.handshake_timeout + limits.settle_seconds
    needed = pre_stop + args.drain_seconds + closing + limits.shutdown_timeout
    assert needed < pod["terminationGracePeriodSeconds"]
    mounts = {m["mountPath"] for m in webhook["volumeMounts"]}
    assert Path(args.config).as_posix() in mounts  # the ConfigMap, every layer of it
    if args.manage_certs:
        assert args.certs_dir.as_posix() in mounts
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        assert ("Service", args.service) in names
        assert ("MutatingWebhookConfiguration", args.webhook_configuration) in names
    else:
        assert Path(args.cert).parent.as_posix() in mounts


def test_the_mesh_config_map_holds_every_default() -> None:
    mesh = yaml.safe_load(one(BASE, "ConfigMap")["data"]["mesh.yaml"])
    assert from_mapping(mesh) == MeshConfig()
    assert set(mesh) == set(MeshConfig().model_dump(by_alias=True))


def test_webhook_entries_select_as_designed() -> None:
    entries = {w["name"]: w for w in one(BASE, "MutatingWebhookConfiguration")["webhooks"]}
    assert set(entries) == {"namespace.proxy.io", "pod.proxy.io"}
    for entry in entries.values():
        assert entry["failurePolicy"] == "Fail"
        assert entry["sideEffects"] == "None"
        assert entry["admissionReviewVersions"] == ["v1"]
        assert entry["timeoutSeconds"] <= 10
        assert entry["reinvocationPolicy"] == "IfNeeded"
        assert entry["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        assert entry["clientConfig"]["service"] == {
            "name": "proxy-injector",
            "namespace": "proxy-system",
            "path": "/mutate",
            "port": 443,
        }
        never = {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["proxy-system", "kube-system"],
        }
        assert never in entry["namespaceSelector"]["matchExpressions"]
    by_namespace = entries["namespace.proxy.io"]
    assert by_namespace["namespaceSelector"]["matchLabels"] == {"proxy.io/inject": "enabled"}
    assert by_namespace["objectSelector"]["matchExpressions"] == [
        {"key": "proxy.io/inject", "operator": "NotIn", "values": ["false"]}
    ]
    by_pod = entries["pod.proxy.io"]
    assert {"key": "proxy.io/inject", "operator": "DoesNotExist"} in by_pod["namespaceSelector"][
        "matchExpressions"
    ]
    assert by_pod["objectSelector"]["matchLabels"] == {"proxy.io/inject": "true"}


def test_rbac_reaches_only_the_injectors_own_secret_and_webhook() -> None:
    role = one(BASE, "Role")["rules"]
    named = [r for r in role if "resourceNames" in r]
    assert named == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["proxy-injector-tls"],
            "verbs": ["get", "update"],
        }
    ]
    assert [r["verbs"] for r in role if "resourceNames" not in r] == [["create"]]
    roles = {o["metadata"]["name"]: o["rules"] for o in BASE if o["kind"] == "ClusterRole"}
    assert roles == {
        "proxy-injector-webhook": [
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": ["proxy-injector"],
                "verbs": ["get", "patch"],
            }
        ],
        "proxy-injector-events": [
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}
        ],
    }


def test_cert_manager_overlay_injects_the_ca_and_drops_the_api_access() -> None:
    webhook = one(CERT_MANAGER, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "proxy-system/proxy-injector-tls"
    )
    kept = [o["metadata"]["name"] for o in CERT_MANAGER if o["kind"] in ("Role", "ClusterRole")]
    assert kept == ["proxy-injector-events"]
    pod = one(CERT_MANAGER, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    certificate = one(CERT_MANAGER, "Certificate", "proxy-injector-tls")["spec"]
    assert certificate["secretName"] == "proxy-injector-tls"
    assert "proxy-injector.proxy-system.svc" in certificate["dnsNames"]


def checkov() -> str:
    local = ROOT / ".venv-checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    assert found, "checkov is missing (scripts/test installs it into .venv-checkov)"
    return found


def test_checkov_passes_on_the_rendered_manifests(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump_all(BASE))
    (tmp_path / "cert-manager.yaml").write_text(yaml.safe_dump_all(CERT_MANAGER))
    assert_checkov_passes(DEPLOY / "checkov.yaml", tmp_path)


def assert_checkov_passes(settings: Path, folder: Path) -> None:
    result = subprocess.run(
        [checkov(), "--config-file", str(settings), "-d", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Failed checks: 0" in result.stdout


NODE_AGENT = DEPLOY / "examples" / "node-agent"


def test_the_node_agent_example_validates_and_its_app_is_injected_as_described() -> None:
    objects = render(NODE_AGENT)
    for obj in objects:
        assert object_errors(obj) == []
    agent = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert agent["hostIPC"] is True
    node_paths = {v["hostPath"]["path"] for v in agent["volumes"]}
    assert node_paths == {"/dev/shm", "/var/run/agent"}
    fragment = yaml.safe_load((NODE_AGENT / "mesh-config-fragment.yaml").read_text())
    config = from_mapping(fragment)
    app = one(objects, "Deployment")
    template = {"apiVersion": "v1", "kind": "Pod", **app["spec"]["template"]}
    namespace = app["metadata"]["namespace"]
    assert namespace in config.node_shm.namespaces
    result = inject(template, namespace, config)
    assert result.outcome == Outcome.INJECT, result.message
    pod = apply(template, list(result.patch))
    assert object_errors(pod) == []
    assert pod["spec"]["hostIPC"] is True
    web = {m["mountPath"]: m["name"] for m in container(pod, "web")["volumeMounts"]}
    assert web == {
        "/var/run/proxy": "proxy-shm",
        "/dev/shm": "proxy-node-shm",
        "/var/run/agent": "proxy-node-sockets-0",
    }
    # The namespace the agent runs in is not meshed: the agent gets no sidecar.
    namespaces = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Namespace"}
    assert "proxy.io/inject" not in namespaces["node-agent"]["metadata"].get("labels", {})
    assert namespaces[namespace]["metadata"]["labels"]["proxy.io/inject"] == "enabled"


def test_checkov_passes_on_the_node_agent_example_with_its_one_justified_skip(tmp_path) -> None:
    settings = yaml.safe_load((NODE_AGENT / "checkov.yaml").read_text())
    assert settings["skip-check"] == ["CKV_K8S_18"]  # hostIPC, the agent's reason to exist
    (tmp_path / "node-agent.yaml").write_text(yaml.safe_dump_all(render(NODE_AGENT)))
    assert_checkov_passes(NODE_AGENT / "checkov.yaml", tmp_path)


CNI_OVERLAY = DEPLOY / "overlays" / "cni"


def test_the_cni_overlay_adds_one_privileged_daemonset_that_always_starts() -> None:
    objects = render(CNI_OVERLAY)
    for obj in objects:
        assert object_errors(obj) == []
    daemonset = one(objects, "DaemonSet", "proxy-injector-cni")
    assert daemonset["metadata"]["namespace"] == "proxy-system"
    assert "proxy-system" in MeshConfig().never_inject_namespaces
    assert "proxy-system" in MeshConfig().cni.exclude_namespaces
    pod = daemonset["spec"]["template"]["spec"]
    # It never waits on a pod network (ours included), and every taint is tolerated.
    assert pod["hostNetwork"] is True and "hostPID" not in pod
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["serviceAccountName"] == "proxy-injector-cni"
    (agent,) = pod["containers"]
    args = parser().parse_args(agent["args"])
    assert args.action == "agent"
    assert (args.cni_bin_dir.as_posix(), args.cni_conf_dir.as_posix()) == (
        "/opt/cni/bin",
        "/etc/cni/net.d",
    )
    assert agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": args.http_port}
    # The paths it writes and serves are the node's, at the same place.
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert {mounts[name] for name in host_paths} == set(host_paths.values())
    assert args.socket.parent.as_posix() in host_paths.values()
    # Its mesh config is the injector's.
    config = next(v for v in pod["volumes"] if v["name"] == "mesh-config")
    assert config["configMap"]["name"] == "proxy-injector-mesh"
    assert args.config.as_posix() == mounts["mesh-config"]
    # The component turns CNI interception on: that is what it is for.
    assert mesh_config_of(objects).interception == "cni"
    role = one(objects, "ClusterRole", "proxy-injector-cni")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["get", "list", "watch", "delete", "patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
    ]
    privileged = [
        c["name"]
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
        for c in o["spec"]["template"]["spec"]["containers"]
        if c.get("securityContext", {}).get("privileged")
    ]
    assert privileged == ["cni-agent"]


def test_checkov_passes_on_the_cni_overlay_with_every_skip_justified(tmp_path) -> None:
    settings = (DEPLOY / "components" / "cni" / "checkov.yaml").read_text()
    for check in yaml.safe_load(settings)["skip-check"]:
        # Each skip sits under a comment that names why.
        above = settings.split(f"  - {check}\n")[0].rstrip().splitlines()
        assert any(line.lstrip().startswith("#") for line in above[-8:]), check
    (tmp_path / "cni.yaml").write_text(yaml.safe_dump_all(render(CNI_OVERLAY)))
    assert_checkov_passes(DEPLOY / "components" / "cni" / "checkov.yaml", tmp_path)


MTLS_OVERLAY = DEPLOY / "overlays" / "mtls"


def test_the_mtls_overlay_adds_the_signer_locked_down_with_least_privilege() -> None:
    from tests.pod_security import violations

    objects = render(MTLS_OVERLAY)
    for obj in objects:
        assert object_errors(obj) == []
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("proxy-injector-mesh")
    ]
    data = config_map["data"]
    assert data["mesh.yaml"] == one(BASE, "ConfigMap")["data"]["mesh.yaml"]  # one base copy
    mesh = mesh_config_of(objects)
    assert mesh.mtls.identity == "pod-certificate"
    assert mesh.model_copy(update={"mtls": MeshConfig().mtls}) == MeshConfig()
    signer = one(objects, "Deployment", "proxy-injector-signer")
    assert signer["spec"]["replicas"] == 2
    pod = signer["spec"]["template"]
    assert violations({"metadata": pod["metadata"], "spec": pod["spec"]}, "restricted") == []
    (container_,) = pod["spec"]["containers"]
    args = parser().parse_args(container_["args"])
    assert (args.command, args.create_ca, args.http_port) == ("signer", True, 9966)
    assert container_["securityContext"]["readOnlyRootFilesystem"] is True
    assert mesh.mtls.signer_name == "proxy.io/spiffe"
    cluster_role = one(objects, "ClusterRole", "proxy-injector-signer")
    signers = next(r for r in cluster_role["rules"] if r["resources"] == ["signers"])
    assert signers == {
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["signers"],
        "resourceNames": ["proxy.io/spiffe"],
        "verbs": ["sign", "attest"],
    }
    granted = {
        (group, resource, verb)
        for rule in cluster_role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert ("certificates.k8s.io", "podcertificaterequests", "update") not in granted
    assert ("", "secrets", "get") not in granted  # secrets only in its namespace, by name
    role = one(objects, "Role", "proxy-injector-signer")
    by_name = [r for r in role["rules"] if "resourceNames" in r]
    assert {(r["resources"][0], tuple(r["resourceNames"])) for r in by_name} == {
        ("secrets", ("proxy-mesh-ca",)),
        ("leases", ("proxy-signer",)),
    }
    # The webhook's own roles gain nothing.
    for kind in ("ClusterRole", "Role"):
        ours = [o for o in objects if o["kind"] == kind and "signer" not in o["metadata"]["name"]]
        assert ours == [o for o in BASE if o["kind"] == kind]


def test_checkov_passes_on_the_mtls_overlay(tmp_path) -> None:
    (tmp_path / "mtls.yaml").write_text(yaml.safe_dump_all(render(MTLS_OVERLAY)))
    assert_checkov_passes(DEPLOY / "checkov.yaml", tmp_path)


COMPONENTS = ("cni", "mtls", "cert-manager", "autoscaling", "monitoring")
COMBINATIONS = [
    combo for size in range(1, len(COMPONENTS) + 1) for combo in combinations(COMPONENTS, size)
]


def render_with(components: tuple[str, ...], folder: Path) -> list[dict]:
    """The base with ``components``, as a kustomization of the user's own lists them."""
    rel = Path(os.path.relpath(DEPLOY, folder))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(rel / "base")],
        "components": [str(rel / "components" / name) for name in components],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(folder)


@pytest.mark.parametrize("components", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_components_combine_in_any_mix_over_one_base(components, tmp_path) -> None:
    """Each component adds its objects and its layer of the one mesh config; none copies
    the base or clashes with another (the Namespace once, one ConfigMap)."""
    objects = render_with(components, tmp_path)
    for obj in objects:
        if obj["kind"] not in CERT_MANAGER_KINDS | OPERATOR_KINDS:
            assert object_errors(obj) == [], (obj["kind"], obj["metadata"]["name"])
    assert [o["kind"] for o in objects].count("Namespace") == 1
    mesh = mesh_config_of(objects)
    assert (mesh.interception == "cni") == ("cni" in components)
    assert (mesh.mtls.identity == "pod-certificate") == ("mtls" in components)
    assert any(o["kind"] == "DaemonSet" for o in objects) == ("cni" in components)
    if "cert-manager" in components:
        assert one(objects, "Certificate", "proxy-injector-tls")
    webhook = one(objects, "Deployment", "proxy-injector")["spec"]
    assert ("replicas" in webhook) == ("autoscaling" not in components)
    if "autoscaling" in components:
        hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
        assert (hpa["minReplicas"], hpa["scaleTargetRef"]["name"]) == (2, "proxy-injector")
    # The webhook and every part that reads the mesh config read the whole directory.
    for workload in (o for o in objects if o["kind"] in ("Deployment", "DaemonSet")):
        (main_container,) = workload["spec"]["template"]["spec"]["containers"]
        assert "--config=/etc/proxy-injector" in main_container["args"], workload["metadata"]


def test_checkov_passes_on_every_component_together(tmp_path) -> None:
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    objects = render_with(COMPONENTS, tmp_path)
    (rendered / "all.yaml").write_text(yaml.safe_dump_all(objects))
    assert_checkov_passes(DEPLOY / "components" / "cni" / "checkov.yaml", rendered)
