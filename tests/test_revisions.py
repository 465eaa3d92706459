"""Revisions of the injector (deploy/components/revision): a second injector renders beside
the default with every name its own, in any mix of components, and the webhook entries of
the default and of two revisions never select the same pod, exactly as ``explain`` and
``check`` reckon it (``selection.called_revision``)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import yaml

from tests.support import CORPUS, load_case, object_errors, proxy_injector
from tests.test_deploy import (
    CERT_MANAGER_KINDS,
    COMBINATIONS,
    DEPLOY,
    OPERATOR_KINDS,
    mesh_config_of,
    one,
    render,
    render_with,
)
from webhook.engine import Outcome, inject
from webhook.engine.config import from_mapping
from webhook.engine.selection import called_revision
from webhook.tools.check import expected_selectors

NODE_WIDE = {"DaemonSet", "Namespace"}


def render_revision(revision: str, components: tuple[str, ...], folder: Path) -> list[dict]:
    """Revision ``revision`` over ``components``, as docs/install.md has one written."""
    folder.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(DEPLOY, folder))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(rel / "base")],
        "components": [str(rel / "components" / name) for name in (*components, "revision")],
        "configMapGenerator": [
            {
                "name": "proxy-injector-revision",
                "namespace": "proxy-system",
                "literals": [f"revision={revision}"],
            }
        ],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(folder)


def ids(objects: list[dict]) -> set[tuple[str, str, str]]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects}


def args_of(objects: list[dict], name: str) -> dict[str, str]:
    (webhook,) = one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return dict(arg.split("=", 1) for arg in webhook["args"] if "=" in arg)


@pytest.mark.parametrize(
    "components", [(), *COMBINATIONS], ids=["base", *("+".join(c) for c in COMBINATIONS)]
)
def test_a_revision_renders_beside_the_default_sharing_no_object(components, tmp_path) -> None:
    default = render_with(components, tmp_path) if components else render(DEPLOY)
    canary = render_revision("canary", components, tmp_path / "canary")
    for obj in canary:
        if obj["kind"] not in CERT_MANAGER_KINDS | OPERATOR_KINDS:
            assert object_errors(obj) == [], (obj["kind"], obj["metadata"]["name"])
    # Nothing of the default's is applied or deleted with the revision: not the
    # Namespace, not the node-wide CNI agent or signer.
    assert ids(default) & ids(canary) == set()
    assert not {o["kind"] for o in canary} & NODE_WIDE
    assert not [o for o in canary if "signer" in o["metadata"]["name"]]
    for obj in canary:
        name = obj["metadata"]["name"]
        assert name.endswith("-canary") or name.startswith("proxy-injector-revision-"), name
    # Its mesh config is the default's layers and its own revision.
    mesh, own = (
        mesh_config_of(default),
        mesh_config_of(
            [o for o in canary if o["metadata"]["name"] == "proxy-injector-mesh-canary"]
        ),
    )
    assert own.revision == "canary" and mesh.revision == "default"
    assert own.model_copy(update={"revision": "default"}) == mesh
    # What --manage-certs keeps, the RBAC that allows it and the Service all agree.
    deployment = one(canary, "Deployment", "proxy-injector-canary")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["proxy.io/revision"] == "canary"
    own_app = {"app": "proxy-injector-canary"}
    assert deployment["spec"]["selector"]["matchLabels"] == own_app
    assert one(canary, "Service")["spec"]["selector"] == own_app
    assert one(canary, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == own_app
    assert one(canary, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == own_app
    for spread in pod["spec"]["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"] == own_app
    webhook = one(canary, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["name"] == "proxy-injector-canary"
    for entry in webhook["webhooks"]:
        assert entry["clientConfig"]["service"]["name"] == "proxy-injector-canary"
    expected = expected_selectors("canary")
    assert [e["name"] for e in webhook["webhooks"]] == list(expected)
    for entry in webhook["webhooks"]:
        assert {key: entry[key] for key in expected[entry["name"]]} == expected[entry["name"]]
    if "cert-manager" in components:
        certificate = one(canary, "Certificate", "proxy-injector-tls-canary")["spec"]
        assert "proxy-injector-canary.proxy-system.svc" in certificate["dnsNames"]
        assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            "proxy-system/proxy-injector-tls-canary"
        )
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "serving-cert")
        assert volume["secret"]["secretName"] == certificate["secretName"]
    else:
        args = args_of(canary, "proxy-injector-canary")
        assert args["--service"] == one(canary, "Service")["metadata"]["name"]
        assert args["--webhook-configuration"] == webhook["metadata"]["name"]
        role = one(canary, "Role", "proxy-injector-certs-canary")
        assert role["rules"][0]["resourceNames"] == [args["--secret"]]
        cluster_role = one(canary, "ClusterRole", "proxy-injector-webhook-canary")
        assert cluster_role["rules"][0]["resourceNames"] == [args["--webhook-configuration"]]
    if "autoscaling" in components:
        hpa = one(canary, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
        assert hpa["name"] == "proxy-injector-canary"
    if "monitoring" in components:  # its webhook's PodMonitor; the cluster-wide rest stays
        monitor = one(canary, "PodMonitor")
        assert monitor["metadata"]["name"] == "proxy-injector-canary"
        assert monitor["spec"]["selector"]["matchLabels"] == own_app
        assert not [o for o in canary if o["kind"] == "PrometheusRule"]


def the_example() -> list[dict]:
    return render(DEPLOY / "examples" / "revision-canary")


def test_the_documented_example_is_revision_canary() -> None:
    objects = the_example()
    assert (
        mesh_config_of(
            [o for o in objects if o["kind"] == "ConfigMap" and "mesh" in o["metadata"]["name"]]
        ).revision
        == "canary"
    )
    assert "revision-canary" in (DEPLOY.parent / "docs" / "install.md").read_text()


def _matches(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector, as the API server evaluates it."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for term in selector.get("matchExpressions") or []:
        key, operator, values = term["key"], term["operator"], term.get("values") or []
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def _label_sets(values: dict[str, tuple[str | None, ...]]) -> list[dict[str, str]]:
    keys = list(values)
    return [
        {k: v for k, v in zip(keys, combo, strict=True) if v is not None}
        for combo in itertools.product(*(values[k] for k in keys))
    ]


def test_no_pod_matches_two_revisions_and_explain_names_the_one_it_matches(tmp_path) -> None:
    """Every combination of namespace and pod labels against the default's entries and
    those of revisions canary and stable-2, rendered side by side."""
    entries = {
        revision: one(objects, "MutatingWebhookConfiguration")["webhooks"]
        for revision, objects in (
            ("default", render(DEPLOY)),
            ("canary", render_revision("canary", (), tmp_path / "canary")),
            ("stable-2", render_revision("stable-2", ("cni",), tmp_path / "stable-2")),
        )
    }
    namespace_sets = _label_sets(
        {
            "proxy.io/inject": (None, "enabled", "disabled", "true"),
            "proxy.io/rev": (None, "canary", "stable-2", "ghost"),
        }
    )
    pod_sets = _label_sets(
        {
            "proxy.io/inject": (None, "true", "false"),
            "proxy.io/rev": (None, "canary", "stable-2", "ghost"),
        }
    )
    checked = 0
    for namespace_name in ("shop", "kube-system"):
        for namespace_labels in namespace_sets:
            labels = {**namespace_labels, "kubernetes.io/metadata.name": namespace_name}
            for pod_labels in pod_sets:
                called = [
                    revision
                    for revision, webhooks in entries.items()
                    for entry in webhooks
                    if _matches(entry["namespaceSelector"], labels)
                    and _matches(entry["objectSelector"], pod_labels)
                ]
                assert len(called) <= 1, (labels, pod_labels, called)
                reckoned, _ = called_revision(namespace_labels, pod_labels)
                if namespace_name == "kube-system" or pod_labels.get("proxy.io/inject") == "false":
                    assert called == [], (labels, pod_labels)
                elif reckoned in entries:
                    assert called == [reckoned], (labels, pod_labels, reckoned)
                else:
                    assert called == [], (labels, pod_labels, reckoned)
                checked += 1
    assert checked == 2 * 16 * 12


WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]


def test_the_revision_a_pod_gets_is_recorded_in_its_status() -> None:
    canary = from_mapping({"revision": "canary"})
    result = inject(WEB, "shop", canary, namespace_labels={"proxy.io/rev": "canary"})
    assert result.outcome == Outcome.INJECT
    status = next(op for op in result.patch if op["path"] == "/metadata/annotations")
    assert '"revision":"canary"' in status["value"]["proxy.io/status"]
    assert canary.sidecar_generation == from_mapping({}).sidecar_generation
    other = inject(WEB, "shop", from_mapping({}), namespace_labels={"proxy.io/rev": "canary"})
    assert other.outcome == Outcome.SKIP
    assert other.reason.code == "other_revision"


def test_explain_says_which_revision_is_called(tmp_path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(yaml.safe_dump(WEB))
    done = proxy_injector(
        "explain", "-f", str(manifest), "--namespace-labels", "proxy.io/rev=canary"
    )
    assert done.returncode == 0, done.stderr
    assert "other_revision" in done.stdout
    assert "revision canary's injector is called, not default's" in done.stdout
    layers = tmp_path / "canary"
    layers.mkdir()
    (layers / "mesh.yaml").write_text("{}\n")
    (layers / "revision.yaml").write_text("revision: canary\n")
    done = proxy_injector(
        "explain", "-f", str(manifest), "--namespace-labels", "proxy.io/rev=canary",
        "--config", str(layers),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "namespace label proxy.io/rev=canary" in done.stdout
    assert "other_revision" not in done.stdout


@pytest.mark.parametrize("name", ["Canary", "-x", "a" * 49, "a.b"])
def test_a_revision_name_that_cannot_name_its_objects_is_refused(name) -> None:
    with pytest.raises(ValueError, match=r"revision: .* is not a revision name"):
        from_mapping({"revision": name})


def test_check_groups_pods_by_revision_and_names_what_needs_a_restart(tmp_path) -> None:
    """The default and revision canary installed as rendered (canary with another log
    level, as a canary of a config change is): a namespace moved to canary whose pod
    still has the default's sidecar is listed with the restart; one labelled for a
    revision that is not installed is a finding."""
    from certs.authority import write_for_service
    from tests.fake_kube import FakeKube
    from tests.tools.test_check import b64, check, installation, pod

    fake = FakeKube()
    try:
        installation(tmp_path, fake, broken=False)
        rendered = the_example()
        webhook = one(rendered, "MutatingWebhookConfiguration")
        served = write_for_service(
            tmp_path / "canary", "proxy-injector-canary", "proxy-system", "cluster.local", 90
        )
        for entry in webhook["webhooks"]:
            entry["clientConfig"]["caBundle"] = b64(served.ca.read_bytes())
        fake.webhooks["proxy-injector-canary"] = webhook
        config_map = next(
            o for o in rendered if o["metadata"]["name"] == "proxy-injector-mesh-canary"
        )
        config_map["data"]["zz-canary.yaml"] = "logLevel: debug\n"
        fake.config_maps[("proxy-system", "proxy-injector-mesh-canary")] = config_map
        fake.secrets[("proxy-system", "proxy-injector-tls-canary")] = {
            "metadata": {"name": "proxy-injector-tls-canary", "namespace": "proxy-system"},
            "data": {
                "tls.crt": b64(served.cert.read_bytes()),
                "tls.key": b64(served.key.read_bytes()),
            },
        }
        fake.endpoints[("proxy-system", "proxy-injector-canary")] = {
            "metadata": {"name": "proxy-injector-canary", "namespace": "proxy-system"},
            "subsets": [{"addresses": [{"ip": "10.0.0.8"}], "ports": [{"port": 8443}]}],
        }
        canary = mesh_config_of([config_map])
        assert canary.revision == "canary" and canary.log_level == "debug"
        fake.namespaces["cart"] = {
            "metadata": {"name": "cart", "labels": {"proxy.io/rev": "canary"}},
        }
        moved, before = pod("web-7c9d8f-new", canary), pod("web-7c9d8f-old", from_mapping({}))
        for one_pod in (moved, before):
            one_pod["metadata"]["namespace"] = "cart"
        fake.pods["cart"] = [moved, before]
        result = check(fake)
        out = result.stdout
        assert result.returncode == 1, out
        assert "ok   the MutatingWebhookConfiguration exists: proxy-injector-canary" in out
        assert "ok   failurePolicy, timeout and selectors are as deploy/ ships them" in out
        failed = [line for line in out.splitlines() if line.startswith("FAIL")]
        assert failed == ["FAIL sidecars match the current version and mesh config: 1 stale pods"]
        assert (
            "cart/web-7c9d8f-old: injected by revision default; namespace label "
            "proxy.io/rev=canary now selects revision canary: injected under another mesh "
            "config" in out
        )
        assert "cart/web-7c9d8f-new" not in out
        assert "kubectl -n cart rollout restart deployment/web" in out
        assert "installed: canary, default" in out
        assert (
            "namespace cart: revision canary (namespace label proxy.io/rev=canary); "
            "pods: 1 injected by canary, 1 injected by default" in out
        )
        fake.namespaces["ghost"] = {"metadata": {"name": "ghost", "labels": {"proxy.io/rev": "v2"}}}
        out = check(fake).stdout
        assert (
            "FAIL every revision that labels select is installed: installed: canary, default" in out
        )
        assert "namespace ghost: namespace label proxy.io/rev=v2" in out
    finally:
        fake.close()
