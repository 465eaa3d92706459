"""deploy/components/monitoring: its PodMonitors and PrometheusRule valid against
prometheus-operator's CRD schemas, every alert tested with promtool on series written here
(it fires when it should and stays quiet otherwise), and the dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_deploy import DEPLOY, render_with

ROOT = DEPLOY.parent
COMPONENT = DEPLOY / "components" / "monitoring"
NODE_MODULES = ROOT / ".cache" / "npm" / "node_modules"
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def rendered(tmp_path: Path) -> list[dict]:
    return render_with(("cni", "mtls", "monitoring"), tmp_path)


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing (scripts/test installs Debian's prometheus)"
    return found


def test_podmonitors_and_rules_are_valid_against_the_operators_schemas(tmp_path) -> None:
    assert (NODE_MODULES / "@kubernetes-models" / "prometheus-operator").is_dir(), (
        "scripts/test installs @kubernetes-models/prometheus-operator into .cache/npm"
    )
    objects = [o for o in rendered(tmp_path) if o["kind"] in OPERATOR_KINDS]
    assert {o["kind"] for o in objects} == {"PodMonitor", "PrometheusRule"}
    done = validated(objects)
    assert done.returncode == 0, done.stdout + done.stderr
    # The check can fail: a PodMonitor whose endpoints are not a list is refused.
    broken = [{**objects[0], "spec": {"podMetricsEndpoints": "every pod"}}]
    done = validated(broken)
    assert done.returncode == 1 and "PodMonitor/" in done.stdout, done.stdout + done.stderr


def validated(objects: list[dict]) -> subprocess.CompletedProcess[str]:
    script = ROOT / "tests" / "apps" / "validate_crds.mjs"
    return subprocess.run(["node", str(script), str(NODE_MODULES)], input=json.dumps(objects),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def rules() -> dict:
    document = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    return {"groups": document["spec"]["groups"]}


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for group in rules()["groups"] for r in group["rules"]}


DAY = 86400
ERRORS = 'proxy_injector_admissions_total{decision="deny",reason="internal_error"}'
BUCKET = "proxy_injector_admission_duration_seconds_bucket"
CNI_NODE = {"instance": "node-a:9964"}
REPAIRS = 'proxy_injector_cni_repairs_total{action="%s",instance="node-a:9964"}'
REFUSED = 'envoy_outbound_refused{namespace="shop",pod="web-0",port="443"}'


def series(name: str, values: str) -> dict[str, str]:
    return {"series": name, "values": values}


def buckets(counts: dict[str, int]) -> list[dict[str, str]]:
    return [series(f'{BUCKET}{{le="{le}"}}', f"0+{n}x30") for le, n in counts.items()]


FIRING: dict[str, tuple[list[dict], str, dict[str, str]]] = {
    # alert: (input series, when it is evaluated, the labels it must carry)
    "ProxyInjectorDown": ([series("up", "1x20")], "10m", {}),
    "ProxyInjectorAdmissionErrors": ([series(ERRORS, "0+5x30")], "20m", {}),
    "ProxyInjectorSlowAdmissions": (
        buckets({"0.25": 0, "0.5": 0, "1": 100, "+Inf": 100}),
        "20m",
        {},
    ),
    "ProxyInjectorCertificateExpiring": (
        [series("proxy_injector_certificate_expiry_timestamp_seconds", f"{10 * DAY}x200")],
        "2h",
        {},
    ),
    "ProxySignerRequestsPending": ([series("proxy_signer_pending_requests", "3x30")], "20m", {}),
    "ProxySignerNoLeader": (
        [series(f'proxy_signer_leader{{pod="signer-{i}"}}', "0x20") for i in (0, 1)],
        "10m",
        {},
    ),
    "ProxySignerCAExpiring": (
        [series("proxy_signer_ca_expiry_timestamp_seconds", f"{20 * DAY}x200")],
        "2h",
        {},
    ),
    "ProxyCNINotInstalled": (
        [series('proxy_injector_cni_installed{instance="node-a:9964"}', "0x20")],
        "10m",
        CNI_NODE,
    ),
    "ProxyCNIRepairing": ([series(REPAIRS % "deleted", "0 0 0 1 1 1 1 1 1 1")], "6m", CNI_NODE),
    "ProxySidecarRefusingEgress": (
        [series(REFUSED, "0+2x20")],
        "15m",
        {"namespace": "shop", "pod": "web-0"},
    ),
}
QUIET: dict[str, list[dict]] = {
    "ProxyInjectorDown": [series('proxy_injector_build_info{version="0.3.0"}', "1x30")],
    "ProxyInjectorAdmissionErrors": [
        series(ERRORS, "3x30"),
        series('proxy_injector_admissions_total{decision="inject",reason="injected"}', "0+50x30"),
    ],
    "ProxyInjectorSlowAdmissions": buckets(
        dict.fromkeys(("0.005", "0.25", "0.5", "1", "+Inf"), 100)
    ),
    "ProxyInjectorCertificateExpiring": [
        series("proxy_injector_certificate_expiry_timestamp_seconds", f"{90 * DAY}x200")
    ],
    "ProxySignerRequestsPending": [series("proxy_signer_pending_requests", "0x30")],
    "ProxySignerNoLeader": [
        series('proxy_signer_leader{pod="signer-0"}', "1x20"),
        series('proxy_signer_leader{pod="signer-1"}', "0x20"),
    ],
    "ProxySignerCAExpiring": [
        series("proxy_signer_ca_expiry_timestamp_seconds", f"{365 * DAY}x200")
    ],
    "ProxyCNINotInstalled": [
        series('proxy_injector_cni_installed{instance="node-a:9964"}', "1x20")
    ],
    "ProxyCNIRepairing": [series(REPAIRS % "failed", "0+1x10")],
    "ProxySidecarRefusingEgress": [series(REFUSED, "5x20")],
}


def _expanded(text: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)


def test_every_alert_fires_on_its_series_and_stays_quiet_otherwise(tmp_path) -> None:
    shipped = alerts()
    assert set(FIRING) == set(shipped) == set(QUIET), "every alert has a firing and a quiet case"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules()))
    checked = subprocess.run([promtool(), "check", "rules", str(tmp_path / "rules.yaml")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = []
    for name, (series, at, labels) in FIRING.items():
        rule = shipped[name]
        wanted = {**labels, **rule["labels"]}
        annotations = {k: _expanded(v, wanted) for k, v in rule["annotations"].items()}
        tests.append({
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": name,
                                 "exp_alerts": [{"exp_labels": wanted,
                                                 "exp_annotations": annotations}]}],
        })  # fmt: skip
        tests.append(
            {
                "interval": "1m",
                "input_series": QUIET[name],
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": []}],
            }
        )
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    done = subprocess.run([promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads((COMPONENT / "dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_dashboard_is_a_configmap_grafana_loads(tmp_path) -> None:
    (config_map,) = [
        o for o in rendered(tmp_path) if o["metadata"]["name"] == "proxy-injector-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["proxy-injector.json"])
    assert dashboard["uid"] == "proxy-injector" and len(dashboard_queries()) >= 9
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"uid": "${datasource}"}, panel["title"]


@pytest.mark.parametrize("query", dashboard_queries())
def test_every_dashboard_query_parses(query, tmp_path) -> None:
    """promtool's own parser, through a rule it checks (the real query API runs each one
    against scraped data in tests/test_prometheus_e2e.py)."""
    expr = query.replace("$namespace", ".*")
    (tmp_path / "q.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "q:check", "expr": expr}]}]})
    )
    done = subprocess.run([promtool(), "check", "rules", str(tmp_path / "q.yaml")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
