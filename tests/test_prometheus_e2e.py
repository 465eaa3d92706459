"""deploy/components/monitoring's scrape configuration with a real Prometheus (Debian's):
it scrapes a meshed pod's sidecar (:15090) and the webhook's metrics port, and the request
counters it stores move with requests made here. Every dashboard query runs through its
query API on the scraped data.

Debian builds Prometheus without Kubernetes discovery, so each job's
``kubernetes_sd_configs`` is replaced by file discovery fed the labels Kubernetes pod
discovery gives (``__meta_kubernetes_*`` for every container port, init containers
included, in the namespaces it names): the shipped relabeling runs as it is, on the pod
objects as the API serves them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import netns
from tests.meshed_pod import MeshedPod
from tests.processes import Nginx, shared_folder, wait_for
from tests.support import CORPUS, apply, load_case, review
from tests.test_monitoring import COMPONENT, dashboard_queries, rendered
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

WEBHOOK = netns.CLIENT_V4
PROMETHEUS = "127.0.0.1:9091"


def server_spec() -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-0", "namespace": "shop", "labels": {"app": "orders"}},
        "spec": {"containers": [{"name": "orders", "image": "nginx:1.27",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }  # fmt: skip
    result = inject(pod, "shop", MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


def running(pod: dict, address: str) -> dict:
    """``pod`` as the API serves it once scheduled: its address, phase Running."""
    return {**pod, "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}}


def webhook_pod(tmp_path: Path) -> dict:
    """A webhook pod as the monitoring component's Deployment makes it."""
    (deployment,) = [o for o in rendered(tmp_path) if o["kind"] == "Deployment"
                     and o["metadata"]["name"] == "proxy-injector"]  # fmt: skip
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "proxy-injector-7d9f-x2",
                     "namespace": "proxy-system"},
        "spec": template["spec"],
    }  # fmt: skip


def _label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod: dict) -> list[dict]:
    """What Prometheus' Kubernetes pod discovery makes of ``pod``: a target per port."""
    metadata, spec = pod["metadata"], pod["spec"]
    common = {
        "__meta_kubernetes_namespace": metadata["namespace"],
        "__meta_kubernetes_pod_name": metadata["name"],
        "__meta_kubernetes_pod_ip": pod["status"]["podIP"],
        **{f"__meta_kubernetes_pod_label_{_label(k)}": v
           for k, v in metadata.get("labels", {}).items()},
        **{f"__meta_kubernetes_pod_annotation_{_label(k)}": v
           for k, v in metadata.get("annotations", {}).items()},
    }  # fmt: skip
    targets = []
    for key, init in (("containers", "false"), ("initContainers", "true")):
        for container in spec.get(key, []):
            for port in container.get("ports", []):
                labels = {
                    **common,
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_init": init,
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
                address = f"{pod['status']['podIP']}:{port['containerPort']}"
                targets.append({"targets": [address], "labels": labels})
    return targets


def scrape_config(pods: list[dict], folder: Path) -> dict:
    """The shipped scrape configuration, its pod discovery fed ``pods`` through files."""
    shipped = yaml.safe_load((COMPONENT / "prometheus-scrape.yaml").read_text())
    for job in shipped["scrape_configs"]:
        (discovery,) = job.pop("kubernetes_sd_configs")
        assert discovery["role"] == "pod"
        names = discovery.get("namespaces", {}).get("names")
        chosen = [p for p in pods if names is None or p["metadata"]["namespace"] in names]
        path = folder / f"{job['job_name']}.json"
        path.write_text(json.dumps([t for pod in chosen for t in pod_targets(pod)]))
        job["file_sd_configs"] = [{"files": [str(path)], "refresh_interval": "1s"}]
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, **shipped}


@dataclass
class Scraped:
    net: netns.Network
    server: MeshedPod

    def query(self, expr: str) -> dict:
        done = self.net.run(
            self.net.client, "curl", "-s", "--max-time", "5", "--get", "--data-urlencode",
            f"query={expr}", f"http://{PROMETHEUS}/api/v1/query",
        )  # fmt: skip
        return json.loads(done.stdout) if done.stdout.startswith("{") else {"status": "down"}

    def value(self, expr: str) -> float | None:
        answer = self.query(expr)
        found = answer.get("data", {}).get("result", [])
        return float(found[0]["value"][1]) if answer["status"] == "success" and found else None


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> Iterator[Scraped]:
    if shutil.which("prometheus") is None:
        raise AssertionError("prometheus is missing (scripts/test installs Debian's prometheus)")
    tmp_path = tmp_path_factory.mktemp("prometheus")
    net = netns.Network().create()
    try:
        folder = shared_folder()
        server = MeshedPod(net, folder, "nft", server_spec())
        assert server.run_init().returncode == 0
        nginx = Nginx(folder, sockets=[str(folder / "orders-8080.sock")], tcp_ports=[])
        nginx.command_prefix = net.exec(net.pod)
        nginx.start()
        net.processes.append(nginx.process)
        server.start_envoy()
        net.start(
            net.client, sys.executable, "-m", "webhook", "serve", "--self-signed",
            "--certs-dir", str(tmp_path / "certs"), "--host", WEBHOOK, "--port", "8443",
            "--metrics-port", "9090", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        pods = [running(server.spec, netns.POD_V4), running(webhook_pod(tmp_path), WEBHOOK)]
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(pods, tmp_path)))
        net.start(
            net.client, "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={PROMETHEUS}",
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
        )  # fmt: skip
        found = Scraped(net, server)

        def both_up() -> bool:
            return all(
                found.value(f'up{{job="{job}"}}') == 1
                for job in ("proxy-sidecars", "proxy-injector")
            )

        wait_for(both_up, 60, "Prometheus scraping the sidecar and the webhook")
        yield found
    finally:
        net.destroy()


def test_the_sidecar_and_webhook_counters_move_in_prometheus(scraped) -> None:
    requests = 'sum(envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="inbound_8080"})'
    before = scraped.value(requests) or 0.0
    for _ in range(5):
        status, _ = scraped.net.curl(scraped.net.client, f"http://{netns.POD_V4}:8080/")
        assert status == 200
    wait_for(lambda: (scraped.value(requests) or 0) >= before + 5, 30,
             "the sidecar's request counter moving in Prometheus")  # fmt: skip
    labelled = scraped.query("envoy_http_downstream_rq_total")["data"]["result"]
    assert {(s["metric"]["namespace"], s["metric"]["pod"]) for s in labelled} == {
        ("shop", "orders-0")
    }
    body = json.dumps(review(load_case(CORPUS / "01-web-single.yaml")["pod"]))
    posted = scraped.net.run(
        scraped.net.client, "curl", "-sk", "--max-time", "5", "-H",
        "Content-Type: application/json", "--data", body, f"https://{WEBHOOK}:8443/mutate",
    )  # fmt: skip
    assert '"allowed":true' in posted.stdout.replace(" ", "")
    admissions = 'sum(proxy_injector_admissions_total{decision="inject"})'
    wait_for(lambda: (scraped.value(admissions) or 0) >= 1, 30,
             "the webhook's admission counter in Prometheus")  # fmt: skip


def test_every_dashboard_query_runs_on_the_scraped_data(scraped) -> None:
    deadline = time.monotonic() + 30
    while scraped.value("sum(rate(envoy_http_downstream_rq_total[5m]))") is None:
        assert time.monotonic() < deadline, "no rate yet"
        time.sleep(0.5)
    answers = {q: scraped.query(q.replace("$namespace", ".*")) for q in dashboard_queries()}
    failed = {q: a for q, a in answers.items() if a["status"] != "success"}
    assert not failed, failed
    requests = next(q for q in answers if "envoy_http_downstream_rq_total" in q and " / " not in q)
    assert answers[requests]["data"]["result"], "the sidecars' request panel is empty"
