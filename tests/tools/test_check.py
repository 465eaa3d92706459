"""`proxy-injector check` through the real kubernetes client against the fake API: a
healthy installation passes, and each broken part of a broken one is named with a hint."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

from certs.authority import create_ca, write_for_service
from tests.fake_kube import FakeKube
from tests.support import CORPUS, apply, load_case, proxy_injector
from webhook.engine import inject
from webhook.engine.config import MeshConfig, from_mapping
from webhook.tools.check import expected_selectors

ROOT = Path(__file__).resolve().parents[2]
WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]
SHIPPED = yaml.safe_load((ROOT / "deploy/base/mutatingwebhookconfiguration.yaml").read_text())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pod(name: str, config: MeshConfig | None, annotations: dict | None = None) -> dict:
    """A running pod of Deployment web, injected under ``config`` (None: not injected)."""
    result = copy.deepcopy(WEB)
    result["metadata"] = {
        "name": name,
        "namespace": "shop",
        "labels": {"app": "web", "pod-template-hash": "7c9d8f"},
        "annotations": annotations or {},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7c9d8f",
                "uid": "u1",
                "controller": True,
            }
        ],
    }
    if config is not None:
        result = apply(result, list(inject(result, "shop", config).patch))
    return result


def installation(tmp_path: Path, fake: FakeKube, *, broken: bool) -> None:
    good = write_for_service(
        tmp_path / "good", "proxy-injector", "proxy-system", "cluster.local", 90
    )
    other = write_for_service(
        tmp_path / "other", "proxy-injector", "proxy-system", "cluster.local", 90
    )
    webhook = copy.deepcopy(SHIPPED)
    bundle = (other if broken else good).ca.read_bytes()
    for entry in webhook["webhooks"]:
        entry["clientConfig"]["caBundle"] = b64(bundle)
    fake.webhooks["proxy-injector"] = webhook
    shipped = yaml.safe_load((ROOT / "deploy/base/mesh-config.yaml").read_text())
    fake.config_maps[("proxy-system", "proxy-injector-mesh")] = shipped
    fake.secrets[("proxy-system", "proxy-injector-tls")] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "proxy-injector-tls", "namespace": "proxy-system"},
        "data": {"tls.crt": b64(good.cert.read_bytes()), "tls.key": b64(good.key.read_bytes())},
    }
    if not broken:
        fake.endpoints[("proxy-system", "proxy-injector")] = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "proxy-injector", "namespace": "proxy-system"},
            "subsets": [{"addresses": [{"ip": "10.0.0.7"}], "ports": [{"port": 8443}]}],
        }
    fake.namespaces["shop"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"proxy.io/inject": "enabled"}},
    }
    pods = [
        pod("web-7c9d8f-a", MeshConfig()),
        pod("web-7c9d8f-b", None, {"proxy.io/inject": "false"}),
    ]
    if broken:
        old = from_mapping({"proxyImage": "envoyproxy/envoy:v1.39.0"})
        pods += [pod("web-7c9d8f-old", old), pod("web-7c9d8f-bare", None)]
    fake.pods["shop"] = pods


@pytest.fixture
def fake():
    api = FakeKube()
    yield api
    api.close()


def check(fake: FakeKube, *args: str):
    return proxy_injector("check", "--kube-api", fake.url, *args)


def test_a_healthy_installation_passes(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=False)
    result = check(fake)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.count("ok  ") == 12
    assert (
        "ok   every revision that labels select is installed: installed: default" in result.stdout
    )
    assert (
        "namespace shop: revision default (namespace label proxy.io/inject=enabled); "
        "pods: 1 injected by default, 1 without the sidecar" in result.stdout
    )
    assert (
        "ok   the webhook's mesh config is readable: ConfigMap proxy-system/proxy-injector-mesh"
        in result.stdout
    )


def test_a_broken_installation_names_each_broken_part(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=True)
    result = check(fake)
    assert result.returncode == 1
    out = result.stdout
    assert (
        "FAIL its service has ready endpoints: "
        "service proxy-system/proxy-injector has no ready endpoint"
    ) in out
    assert "caBundle does not verify the certificate in the secret" in out
    assert "shop/web-7c9d8f-bare: would be injected now" in out
    assert "shop/web-7c9d8f-old: injected under another mesh config" in out
    assert "hint: kubectl -n shop rollout restart deployment/web" in out
    assert "web-7c9d8f-b:" not in out  # opted out on purpose
    assert "ok   failurePolicy, timeout and selectors are as deploy/ ships them" in out


def test_json_output_for_scripts(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=True)
    results = json.loads(check(fake, "-o", "json").stdout)
    failed = {r["check"] for r in results if not r["ok"]}
    assert failed == {
        "its service has ready endpoints",
        "caBundle verifies the serving certificate, outside its renewal window",
        "pods in enabled namespaces have the sidecar",
        "sidecars match the current version and mesh config",
    }


def test_a_changed_failure_policy_is_named(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=False)
    fake.webhooks["proxy-injector"]["webhooks"][0]["failurePolicy"] = "Ignore"
    result = check(fake)
    assert result.returncode == 1
    assert 'namespace.proxy.io.failurePolicy: "Ignore", expected "Fail"' in result.stdout


def test_the_expected_selectors_are_what_deploy_ships() -> None:
    for entry in SHIPPED["webhooks"]:
        expected = expected_selectors()[entry["name"]]
        assert {k: entry[k] for k in expected} == expected


def test_a_config_change_that_shapes_no_pod_makes_no_pod_stale(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=False)
    config = tmp_path / "mesh.yaml"
    config.write_text("events: false\nneverInjectNamespaces: [kube-system]\n")
    result = check(fake, "--config", str(config))
    assert result.returncode == 0, result.stdout
    config.write_text("logLevel: debug\n")
    result = check(fake, "--config", str(config))
    assert result.returncode == 1
    assert "shop/web-7c9d8f-a: injected under another mesh config" in result.stdout


POD_CERTIFICATES = {"mtls": {"identity": "pod-certificate"}}


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signer_running(
    fake: FakeKube, version: str = "v1beta1", renewed_ago: float = 1.0, ca_days: int = 3650
) -> None:
    """What a healthy signer leaves: its Lease renewed, its CA Secret, its bundle."""
    now = dt.datetime.now(dt.UTC)
    ca = create_ca(common_name="mesh CA", days=ca_days)
    fake.put_object(
        "leases",
        {
            "metadata": {"name": "proxy-signer", "namespace": "proxy-system"},
            "spec": {
                "holderIdentity": "signer-7f9c-a",
                "leaseDurationSeconds": 15,
                "renewTime": stamp(now - dt.timedelta(seconds=renewed_ago)),
            },
        },
    )
    fake.secrets[("proxy-system", "proxy-mesh-ca")] = {
        "metadata": {"name": "proxy-mesh-ca", "namespace": "proxy-system"},
        "data": {"tls.crt": b64(ca.cert_pem()), "tls.key": b64(ca.key_pem())},
    }
    fake.put_object(
        "clustertrustbundles",
        {
            "apiVersion": f"certificates.k8s.io/{version}",
            "metadata": {"name": "proxy.io:spiffe:bundle"},
            "spec": {"signerName": "proxy.io/spiffe", "trustBundle": ca.cert_pem().decode()},
        },
    )


def mtls_installation(tmp_path: Path, fake: FakeKube, identity: dict) -> Path:
    installation(tmp_path, fake, broken=False)
    config = from_mapping(identity)
    fake.pods["shop"] = [pod("web-7c9d8f-a", config), pod("web-7c9d8f-b", config)]
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(identity))
    return path


def proxies_report(fake: FakeKube, **counts: tuple[int, int]) -> None:
    """Each pod's proxy answers :15021/mtls with (mTLS, plaintext) connections on 8080."""
    for name, (secured, plaintext) in counts.items():
        line = f"8080 permissive mtls={secured} plaintext={plaintext} denied=0\n"
        fake.pod_ports[("shop", name.replace("_", "-"), 15021)] = {"/mtls": line}


def test_pod_certificates_not_served_are_named_with_the_feature_gates(tmp_path, fake) -> None:
    config = mtls_installation(tmp_path, fake, POD_CERTIFICATES)
    proxies_report(fake, web_7c9d8f_a=(0, 0), web_7c9d8f_b=(4, 0))
    result = check(fake, "--config", str(config))
    assert result.returncode == 1
    assert (
        "FAIL the API serves pod certificates (mtls.identity pod-certificate): not served: "
        "podcertificaterequests, clustertrustbundles"
    ) in result.stdout
    assert "PodCertificateRequest and ClusterTrustBundle feature gates" in result.stdout
    fake.served["certificates.k8s.io/v1beta1"] = ["podcertificaterequests", "clustertrustbundles"]
    signer_running(fake)
    result = check(fake, "--config", str(config))
    assert result.returncode == 0, result.stdout
    assert (
        "ok   the API serves pod certificates (mtls.identity pod-certificate): "
        "podcertificaterequests in certificates.k8s.io/v1beta1"
    ) in result.stdout
    assert (
        "ok   permissive pods receive no plaintext (the ports could go strict): 2 port(s)"
        in result.stdout
    )


def test_ports_still_receiving_plaintext_are_listed(tmp_path, fake) -> None:
    config = mtls_installation(tmp_path, fake, POD_CERTIFICATES)
    fake.served["certificates.k8s.io/v1"] = ["podcertificaterequests", "clustertrustbundles"]
    signer_running(fake, version="v1")
    proxies_report(fake, web_7c9d8f_a=(10, 3))
    result = check(fake, "--config", str(config))
    assert result.returncode == 1
    assert (
        "FAIL permissive pods receive no plaintext (the ports could go strict): 0 port(s)"
        in result.stdout
    )
    assert "shop/web-7c9d8f-a port 8080: 3 plaintext, 10 mTLS connections" in result.stdout
    assert "shop/web-7c9d8f-b: its proxy did not answer" in result.stdout


def test_the_csi_driver_must_be_installed(tmp_path, fake) -> None:
    config = mtls_installation(tmp_path, fake, {"mtls": {"identity": "csi-spiffe"}})
    proxies_report(fake, web_7c9d8f_a=(1, 0), web_7c9d8f_b=(1, 0))
    result = check(fake, "--config", str(config))
    assert "FAIL the CSI driver spiffe.csi.cert-manager.io is installed" in result.stdout
    assert "hint: install cert-manager's csi-driver-spiffe" in result.stdout
    fake.csi_drivers["spiffe.csi.cert-manager.io"] = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": "spiffe.csi.cert-manager.io"},
        "spec": {"podInfoOnMount": True},
    }
    result = check(fake, "--config", str(config))
    assert result.returncode == 0, result.stdout


def test_an_unhealthy_signer_is_named_with_each_problem(tmp_path, fake) -> None:
    config = mtls_installation(tmp_path, fake, POD_CERTIFICATES)
    proxies_report(fake, web_7c9d8f_a=(1, 0), web_7c9d8f_b=(1, 0))
    fake.served["certificates.k8s.io/v1beta1"] = ["podcertificaterequests", "clustertrustbundles"]
    result = check(fake, "--config", str(config))
    assert "no Lease proxy-system/proxy-signer: the signer has never run" in result.stdout
    assert "the trust bundle proxy.io:spiffe:bundle is not published" in result.stdout
    signer_running(fake, renewed_ago=60, ca_days=30)
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fake.put_object(
        "podcertificaterequests",
        {
            "metadata": {"name": "web-0-1", "namespace": "shop", "creationTimestamp": old},
            "spec": {"signerName": "proxy.io/spiffe", "podName": "web-0"},
        },
    )
    result = check(fake, "--config", str(config))
    assert result.returncode == 1
    out = result.stdout
    assert "no leader: the Lease was last renewed at" in out
    assert "inside its renewal window (run proxy-injector signer rotate-ca)" in out
    assert "1 request(s) pending longer than 30 s" in out
    assert f"shop/web-0-1 pending since {old}" in out
    assert "hint: kubectl -n proxy-system logs deploy/proxy-injector-signer" in out


def service(name: str, cluster_ip: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": cluster_ip, "ports": [{"port": 9080}]},
    }


def test_upstreams_that_resolve_to_one_address_are_named(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=False)
    upstreams = {"proxy.io/upstreams": "reviews:9080,ratings.shop:9080,api.stripe.example:443"}
    fake.pods["shop"] = [pod("web-7c9d8f-a", MeshConfig(), upstreams)]
    fake.services[("shop", "reviews")] = service("reviews", "10.96.4.2")
    fake.services[("shop", "ratings")] = service("ratings", "None")
    result = check(fake)
    assert result.returncode == 0, result.stdout
    assert (
        "ok   declared upstreams resolve to every pod (per-request balancing): "
        "1 of 2 resolve to every pod"
    ) in result.stdout
    assert "shop/reviews:9080: a ClusterIP Service, one address" in result.stdout
    assert "ratings:9080:" not in result.stdout  # headless: every pod
    assert "stripe" not in result.stdout  # not a Service of the cluster


def test_declared_only_pods_refusing_egress_are_listed(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=False)
    locked = {"proxy.io/upstreams": "reviews:9080", "proxy.io/outbound-policy": "declared-only"}
    fake.pods["shop"] = [
        pod("web-7c9d8f-a", MeshConfig(), locked),
        pod("web-7c9d8f-b", MeshConfig(), locked),
    ]
    refused = iter(range(3, 1000, 4))

    def moving() -> str:
        return (
            "# TYPE envoy_outbound_refused counter\n"
            f'envoy_outbound_refused{{port="5432"}} {next(refused)}\n'
            'envoy_outbound_refused{port="8080"} 1\n'
        )

    still = 'envoy_outbound_refused{port="443"} 7\n'
    fake.pod_ports[("shop", "web-7c9d8f-a", 15090)] = {"/stats/prometheus": moving}
    fake.pod_ports[("shop", "web-7c9d8f-b", 15090)] = {"/stats/prometheus": still}
    result = check(fake, "--egress-interval", "0.1")
    assert result.returncode == 1
    assert (
        "FAIL no sidecar is refusing egress now (declared-only pods): 2 declared-only pod(s)"
    ) in result.stdout
    assert "shop/web-7c9d8f-a: port 5432: 4 refused in 0.1s" in result.stdout
    assert "port 8080" not in result.stdout and "web-7c9d8f-b:" not in result.stdout
    assert "hint: the app calls something its proxy.io/upstreams does not declare" in result.stdout
    fake.pod_ports[("shop", "web-7c9d8f-a", 15090)] = {"/stats/prometheus": still}
    result = check(fake, "--egress-interval", "0.1")
    assert (
        "ok   no sidecar is refusing egress now (declared-only pods): "
        "2 declared-only pod(s), none refusing"
    ) in result.stdout


def test_pods_carrying_two_meshes_sidecars_are_listed(tmp_path, fake) -> None:
    installation(tmp_path, fake, broken=False)
    both = pod("web-7c9d8f-a", MeshConfig())
    both["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2:1.24.0"})
    fake.pods["shop"] = [both, pod("web-7c9d8f-b", MeshConfig())]
    result = check(fake)
    assert result.returncode == 1
    assert "FAIL no pod carries two meshes' sidecars: 1 pod(s)" in result.stdout
    assert "shop/web-7c9d8f-a: ours and Istio's istio-proxy" in result.stdout
    assert "web-7c9d8f-b: ours" not in result.stdout


def test_every_namespace_pods_can_be_injected_in_is_covered(tmp_path, fake) -> None:
    """An unlabelled namespace's pods labelled proxy.io/inject=true are injected by the pod
    entry, so check looks at them too; a label value no entry selects is named."""
    installation(tmp_path, fake, broken=False)
    fake.namespaces["tools"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "tools", "labels": {}},
    }
    fake.namespaces["legacy"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "legacy", "labels": {"proxy.io/inject": "true"}},
    }
    opted_in = pod("runner-0", None)
    opted_in["metadata"].update(namespace="tools", labels={"proxy.io/inject": "true"})
    opted_in["metadata"].pop("ownerReferences")
    other = pod("other-0", None)
    other["metadata"].update(namespace="tools", labels={})
    fake.pods["tools"] = [opted_in, other]
    fake.pods["legacy"] = [pod("old-0", None)]
    result = check(fake)
    assert result.returncode == 1
    assert "tools/runner-0: would be injected now" in result.stdout
    assert "tools/other-0" not in result.stdout  # not opted in: the webhook never sees it
    assert (
        "FAIL namespace labels proxy.io/inject are values the webhook selects: 1 namespace(s)"
    ) in result.stdout
    assert "namespace legacy: proxy.io/inject=true" in result.stdout


def test_an_unreachable_cluster_exits_3_and_yaml_output_reads_back(tmp_path, fake) -> None:
    unreachable = proxy_injector("check", "--kube-api", "http://127.0.0.1:9")
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("proxy-injector check: cannot read the cluster: ")
    installation(tmp_path, fake, broken=False)
    result = check(fake, "-o", "yaml")
    assert result.returncode == 0, result.stdout
    assert all(item["ok"] for item in yaml.safe_load(result.stdout))


def test_without_config_the_clusters_own_mesh_config_is_judged_with(tmp_path, fake) -> None:
    """An mTLS install checked with no --config: the mTLS checks run, pods are not all
    stale, as they were when check assumed the defaults."""
    mtls_installation(tmp_path, fake, POD_CERTIFICATES)
    # As deploy/components/mtls renders it: the base's mesh.yaml and the component's layer.
    shipped = yaml.safe_load((ROOT / "deploy/base/mesh-config.yaml").read_text())
    shipped["data"]["mtls.yaml"] = "mtls:\n  identity: pod-certificate\n"
    fake.config_maps[("proxy-system", "proxy-injector-mesh")] = shipped
    result = check(fake)
    assert "ok   the webhook's mesh config is readable" in result.stdout
    assert "the API serves pod certificates (mtls.identity pod-certificate)" in result.stdout
    del fake.config_maps[("proxy-system", "proxy-injector-mesh")]
    result = check(fake)
    assert result.returncode == 1
    assert (
        "FAIL the webhook's mesh config is readable: ConfigMap proxy-system/proxy-injector-mesh "
        "not found: judged with the defaults"
    ) in result.stdout


def test_version_shows_the_clusters_parts_and_the_sidecars_in_use(tmp_path, fake) -> None:
    from webhook import __version__ as ours

    installation(tmp_path, fake, broken=True)  # one pod injected by defaults, one by another
    deployment = yaml.safe_load((ROOT / "deploy/base/deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = f"reg.example/pi:{ours}"
    fake.by_path["/apis/apps/v1/namespaces/proxy-system/deployments/proxy-injector"] = deployment
    stale = pod("web-7c9d8f-c", None, {"proxy.io/status": '{"version": "0.2.0"}'})
    fake.pods["shop"].append(stale)
    result = proxy_injector("version", "--kube-api", fake.url, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "client": ours,
        "webhook": ours,
        "cniAgent": None,
        "signer": None,
        "sidecars": {"0.2.0": 1, ours: 2},
    }
    text = proxy_injector("version", "--kube-api", fake.url).stdout
    assert "cniAgent: not installed (no proxy-injector-cni)" in text
    assert f"sidecars: 0.2.0 (1 pods), {ours} (2 pods)" in text
    unreachable = proxy_injector("version", "--kube-api", "http://127.0.0.1:9")
    assert (unreachable.returncode, unreachable.stdout) == (3, f"client: {ours}\n")
