"""`proxy-injector inject` and `explain`: the webhook's engine on files, no cluster.

Each pod template comes out exactly as the running webhook patches a pod made from it
(asked over HTTPS), every document in order, others untouched, and strictly valid."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from tests.support import CORPUS, apply, corpus, object_errors, patch_of, proxy_injector, review

WEB_POD = yaml.safe_load((CORPUS / "01-web-single.yaml").read_text())["pod"]
TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": copy.deepcopy(WEB_POD["spec"])}
JOB_TEMPLATE = {
    "metadata": {"labels": {"app": "batch"}},
    "spec": {**copy.deepcopy(WEB_POD["spec"]), "restartPolicy": "OnFailure"},
}
SELECTOR = {"matchLabels": {"app": "web"}}


def workload(kind: str, api: str, spec: dict) -> dict:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": kind.lower()}, "spec": spec}


DOCUMENTS = [
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}]},
    },
    {**copy.deepcopy(WEB_POD), "metadata": {"name": "web-0", "namespace": "shop"}},
    workload("Deployment", "apps/v1", {"selector": SELECTOR, "template": TEMPLATE}),
    workload(
        "StatefulSet", "apps/v1", {"selector": SELECTOR, "serviceName": "web", "template": TEMPLATE}
    ),
    workload("DaemonSet", "apps/v1", {"selector": SELECTOR, "template": TEMPLATE}),
    workload("ReplicaSet", "apps/v1", {"selector": SELECTOR, "template": TEMPLATE}),
    workload("ReplicationController", "v1", {"selector": {"app": "web"}, "template": TEMPLATE}),
    workload("Job", "batch/v1", {"template": JOB_TEMPLATE}),
    workload(
        "CronJob",
        "batch/v1",
        {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": JOB_TEMPLATE}}},
    ),
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "b"}},
    {
        "apiVersion": "v1",
        "kind": "List",
        "items": [workload("Deployment", "apps/v1", {"selector": SELECTOR, "template": TEMPLATE})],
    },
]
TEMPLATE_PATHS = {
    "Pod": (),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "List": ("items", 0, "spec", "template"),
}


def run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def explained(document: dict, *flags: str) -> list[dict]:
    result = run("explain", "-f", "-", "-o", "json", *flags, stdin=yaml.safe_dump(document))
    reports = json.loads(result.stdout)
    denied = any(report["decision"] == "deny" for report in reports)
    assert result.returncode == (1 if denied else 0), result.stderr  # 1: would be denied
    return reports


def at(document: dict, path: tuple) -> dict:
    for part in path:
        document = document[part]
    return document


@pytest.fixture(scope="module")
def injected() -> list[dict]:
    result = run("inject", "-f", "-", "--namespace", "shop", stdin=yaml.safe_dump_all(DOCUMENTS))
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def test_every_document_comes_back_in_order_and_others_are_untouched(injected) -> None:
    assert [d["kind"] for d in injected] == [d["kind"] for d in DOCUMENTS]
    assert injected[0] == DOCUMENTS[0]
    assert injected[9] == DOCUMENTS[9]


def test_templates_are_patched_exactly_as_the_webhook_patches_the_pod(webhook, injected) -> None:
    for original, result in zip(DOCUMENTS, injected, strict=True):
        if original["kind"] in ("Service", "ConfigMap"):
            continue
        path = TEMPLATE_PATHS.get(original["kind"], ("spec", "template"))
        template = at(original, path)
        answer = webhook.mutate(review(template, "shop"))
        assert answer["response"]["allowed"] is True
        assert at(result, path) == apply(template, patch_of(answer)), original["kind"]


def test_the_output_is_strictly_valid(injected) -> None:
    for document in injected:
        items = document["items"] if document["kind"] == "List" else [document]
        for item in items:
            assert not object_errors(item), object_errors(item)[:3]


def test_injecting_injected_documents_changes_nothing(injected) -> None:
    again = run("inject", "-f", "-", "--namespace", "shop", stdin=yaml.safe_dump_all(injected))
    assert again.returncode == 0, again.stderr
    assert list(yaml.safe_load_all(again.stdout)) == injected


def test_a_denied_template_fails_naming_the_document(tmp_path) -> None:
    bad = copy.deepcopy(DOCUMENTS[2])
    bad["spec"]["template"]["metadata"]["annotations"] = {"proxy.io/concurrency": "lots"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([DOCUMENTS[0], bad]))
    result = proxy_injector("inject", "-f", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        "document 2 (Deployment deployment): invalid_annotation: "
        'annotation proxy.io/concurrency: "lots"'
    ) in result.stderr


def test_diff_shows_what_is_added() -> None:
    result = run("inject", "-f", "-", "--diff", stdin=yaml.safe_dump(DOCUMENTS[2]))
    assert result.returncode == 0, result.stderr
    assert (
        "+        - name: proxy-init" in result.stdout
        or "+      - name: proxy-init" in result.stdout
    )
    assert not any(
        line.startswith("-") and not line.startswith("---") for line in result.stdout.splitlines()
    )


def test_namespace_labels_apply_the_namespace_rule() -> None:
    (report,) = explained(DOCUMENTS[2], "--namespace-labels", "team=a")
    assert (report["decision"], report["reason"]) == ("skip", "namespace_not_enabled")
    assert report["decided_by"] == "no namespace label proxy.io/inject=enabled"


CASES = corpus()


def test_explain_gives_each_corpus_pod_its_reason_as_the_webhook_logs_it(webhook) -> None:
    reports = []
    for case in CASES:
        (report,) = explained(case["pod"], "--namespace", case["namespace"])
        assert report["reason"] == case.get("reason", "injected"), case["id"]
        assert report["decision"] == case["expect"], case["id"]
        reports.append((case, report))
        webhook.mutate(review(case["pod"], case["namespace"], uid=f"explain-{case['id']}"))
    logged = {line["uid"]: line for line in webhook.log_lines() if line.get("msg") == "admission"}
    for case, report in reports:
        line = logged[f"explain-{case['id']}"]
        assert (line["decision"], line["reason"], line["detail"]) == (
            report["decision"],
            report["reason"],
            report["detail"],
        ), case["id"]


def test_explain_shows_each_annotation_parsed_or_wrong() -> None:
    pod = copy.deepcopy(WEB_POD)
    pod["metadata"]["annotations"] = {
        "proxy.io/concurrency": "4",
        "proxy.io/cpu": "lots",
        "proxy.io/concurency": "2",
    }
    result = run("explain", "-f", "-", stdin=yaml.safe_dump(pod))
    assert result.returncode == 1, result.stderr  # the webhook would deny it
    assert run("explain", "-f", "-", "--exit-zero", stdin=yaml.safe_dump(pod)).returncode == 0
    yaml_report = run("explain", "-f", "-", "-o", "yaml", stdin=yaml.safe_dump(pod)).stdout
    assert yaml.safe_load(yaml_report)[0]["decision"] == "deny"
    assert "proxy.io/concurrency: '4' -> 4" in result.stdout
    assert 'proxy.io/cpu: annotation proxy.io/cpu: "lots" is not valid' in result.stdout
    assert (
        "proxy.io/concurency: unknown, ignored; did you mean proxy.io/concurrency?" in result.stdout
    )
    assert "deny" in result.stdout.splitlines()[0]


HOSTILE_FILES = {
    "binary.yaml": (bytes(range(256)) * 40, "not UTF-8 text: byte 0x80 at offset 128: not a YAML"),
    "deep-flow.yaml": (b"a: " + b"[" * 600 + b"]" * 600, "document 1: nested deeper than 100"),
    "deep.json": (b'{"a":' * 600 + b"1" + b"}" * 600, "document 1: nested deeper than 100"),
    "deep-block.yaml": (
        b"".join(b"  " * i + b"k:\n" for i in range(600)) + b"  " * 600 + b"v\n",
        "document 1: nested deeper than 100",
    ),
    "deeper-than-libyaml.yaml": (
        b"a: " + b"[" * 1000 + b"]" * 1000,
        "document 1: not valid YAML or JSON: line 1, column 1003: exceeded maximum nesting depth",
    ),
    # As in public manifests: a Deployment's selector given twice (kubectl refuses it too).
    "duplicate-key.yaml": (
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n"
        b"  selector:\n    matchLabels: {app: web}\n  selector:\n    matchLabels: {app: web}\n"
        b"  template:\n    metadata: {labels: {app: web}}\n"
        b"    spec: {containers: [{name: web, image: nginx}]}\n",
        "document 1: not valid YAML or JSON: line 8, column 3: key 'selector' is given twice "
        "in one mapping",
    ),
    "many.yaml": (b"---\na: 1\n" * 200_000, "more than 10000 documents (--max-documents)"),
    "big-annotation.yaml": (
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: big\n  annotations:\n    note: "
        + b"x" * (50 << 20)
        + b"\nspec:\n  containers: [{name: a, image: b}]\n",
        "document 1 (Pod big): invalid_pod: metadata.annotations: 52,428,804 characters",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
@pytest.mark.parametrize("command", ["inject", "explain", "bootstrap"])
def test_a_hostile_file_gets_one_line_naming_it(tmp_path, name, command) -> None:
    data, message = HOSTILE_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    done = proxy_injector(command, "-f", str(path), timeout=60)
    if command == "explain" and name == "big-annotation.yaml":
        # Explained, not refused as input; exit 1: the webhook would deny it.
        assert done.returncode == 1 and "invalid_pod" in done.stdout
        return
    if command == "bootstrap" and name == "big-annotation.yaml":
        message = "not injected: invalid_pod: metadata.annotations: 52,428,804 characters"
    # 2: the input is wrong; 1: a template the webhook would deny (bootstrap's finding).
    assert done.returncode == (1 if name == "big-annotation.yaml" else 2), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"proxy-injector {command}: ") and message in line, line
    if "document" not in message.split(":")[0] or "(Pod" not in message:
        assert str(path) in line


def test_an_endless_input_is_cut_at_max_bytes() -> None:
    done = proxy_injector("inject", "-f", "/dev/zero", "--max-bytes", "1048576", timeout=60)
    assert done.returncode == 2
    assert (
        done.stderr == "proxy-injector inject: /dev/zero: larger than 1048576 bytes (--max-bytes)\n"
    )


def created_pod(document: dict, ordinal: int = 0) -> dict:
    """The pod a workload's controller makes from its template (what the webhook sees):
    its owner set and, for a StatefulSet, its name, hostname and the claim volumes, which
    replace template volumes of the same name."""
    if document["kind"] == "Pod":
        return copy.deepcopy(document)
    path = TEMPLATE_PATHS.get(document["kind"], ("spec", "template"))
    template = copy.deepcopy(at(document, path))
    name = document["metadata"]["name"]
    metadata = {**template.get("metadata", {}), "generateName": f"{name}-"}
    metadata["ownerReferences"] = [
        {"apiVersion": document["apiVersion"], "kind": document["kind"], "name": name,
         "uid": "u-1", "controller": True}
    ]  # fmt: skip
    spec = template["spec"]
    if document["kind"] == "StatefulSet":
        metadata["name"] = f"{name}-{ordinal}"
        spec |= {"hostname": f"{name}-{ordinal}", "subdomain": document["spec"]["serviceName"]}
        claims = [c["metadata"]["name"] for c in document["spec"].get("volumeClaimTemplates", [])]
        volumes = [v for v in spec.get("volumes", []) if v["name"] not in claims]
        volumes += [{"name": c, "persistentVolumeClaim": {"claimName": f"{c}-{name}-{ordinal}"}}
                    for c in claims]  # fmt: skip
        if volumes:
            spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


STATEFULSET_WITH_CLAIMS = workload(
    "StatefulSet",
    "apps/v1",
    {
        "selector": SELECTOR,
        "serviceName": "web",
        "template": TEMPLATE,
        "volumeClaimTemplates": [
            {
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ],
    },
)


@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if d["kind"] not in ("Service", "ConfigMap", "List")]
    + [STATEFULSET_WITH_CLAIMS],
    ids=lambda d: d["kind"] + ("-claims" if "volumeClaimTemplates" in d["spec"] else ""),
)
def test_inject_equals_the_webhook_on_the_pod_the_controller_makes(document) -> None:
    from webhook.engine import inject as engine_inject
    from webhook.engine.config import MeshConfig

    done = run("inject", "-f", "-", "--namespace", "shop", stdin=yaml.safe_dump(document))
    assert done.returncode == 0, done.stderr
    (injected_document,) = yaml.safe_load_all(done.stdout)
    made = created_pod(document)
    result = engine_inject(made, "shop", MeshConfig())
    by_webhook = apply(made, list(result.patch))
    from_injected = created_pod(injected_document)
    for pod in (from_injected, by_webhook):  # the order of volumes means nothing
        pod["spec"]["volumes"] = sorted(pod["spec"].get("volumes", []), key=lambda v: v["name"])
    assert from_injected["spec"] == by_webhook["spec"], document["kind"]
    assert from_injected["metadata"] == by_webhook["metadata"], document["kind"]
    if "volumeClaimTemplates" in document["spec"]:
        # The data volume is the node's to own: no fsGroup that would re-own it.
        assert "fsGroup" not in from_injected["spec"].get("securityContext", {})


CUSTOM_KINDS = """\
apiVersion: ray.io/v1
kind: RayService
metadata: {name: rs, namespace: shop}
spec:
  rayClusterConfig:
    headGroupSpec:
      template:
        spec:
          containers:
            - {name: head, image: rayproject/ray:2.9, ports: [{containerPort: 8265, name: http}]}
    workerGroupSpecs:
      - groupName: workers
        template:
          metadata: {labels: {group: workers}}
          spec:
            containers: [{name: worker, image: rayproject/ray:2.9}]
---
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata: {name: js, namespace: shop}
spec:
  replicatedJobs:
    - name: workers
      template:
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{name: work, image: busybox:1.36}]
---
apiVersion: example.com/v1
kind: Runner
metadata: {name: bare, namespace: shop}
spec:
  podSpec:
    containers: [{name: run, image: busybox:1.36}]
"""
RAY_PATHS = (
    "spec.rayClusterConfig.headGroupSpec.template, "
    "spec.rayClusterConfig.workerGroupSpecs[0].template"
)


@pytest.mark.parametrize("command", ["inject", "explain"])
def test_kinds_inject_does_not_know_are_named_with_where_their_pods_are(command) -> None:
    done = run(command, "-f", "-", stdin=CUSTOM_KINDS)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert warnings == [
        "warning: document 1 (RayService rs): kind RayService is not one inject knows: pod "
        f"templates at {RAY_PATHS} are not injected (--all-kinds injects them)",
        "warning: document 2 (JobSet js): kind JobSet is not one inject knows: pod templates "
        "at spec.replicatedJobs[0].template.spec.template are not injected (--all-kinds "
        "injects them)",
        "warning: document 3 (Runner bare): kind Runner is not one inject knows: pod specs at "
        "spec.podSpec have no metadata to carry what the injector writes and are left alone",
    ]
    if command == "inject":
        assert list(yaml.safe_load_all(done.stdout)) == list(yaml.safe_load_all(CUSTOM_KINDS))


def test_all_kinds_injects_the_templates_found_in_them() -> None:
    done = run("inject", "--all-kinds", "-f", "-", stdin=CUSTOM_KINDS)
    assert done.returncode == 0, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Runner bare" in done.stderr
    ray, jobset, runner = yaml.safe_load_all(done.stdout)
    cluster = ray["spec"]["rayClusterConfig"]
    for template in (
        cluster["headGroupSpec"]["template"],
        cluster["workerGroupSpecs"][0]["template"],
        jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"],
    ):
        names = [c["name"] for c in template["spec"].get("initContainers", [])]
        assert "proxy" in names, template
        assert "proxy.io/status" in template["metadata"]["annotations"]
    assert runner == list(yaml.safe_load_all(CUSTOM_KINDS))[2]


MANIFESTS = CORPUS.parent / "manifests"


def template_lines(text: str) -> list[range]:
    """The line ranges of each ``template:`` block (by indentation) in ``text``."""
    lines = text.splitlines()
    found = []
    for start, line in enumerate(lines):
        if line.strip() == "template:":
            indent = len(line) - len(line.lstrip())
            end = start + 1
            while end < len(lines) and (
                not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
            ):
                end += 1
            found.append(range(start + 1, end + 1))
    return found


def test_comments_quotes_and_flow_style_are_kept_and_only_templates_change() -> None:
    import difflib

    before = (MANIFESTS / "commented.yaml").read_text()
    done = run("inject", "-f", str(MANIFESTS / "commented.yaml"), stdin="")
    assert done.returncode == 0, done.stderr
    after = done.stdout
    assert after.startswith("# Copyright 2024 Example Corp.\n# Licensed under")  # the header
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert [c for c in comments if c in after] == comments
    assert "ports: [{port: 80, targetPort: http}]   # flow style stays" in after
    assert "value: 'production'" in after and 'image: "registry.example/web:1.2"' in after
    allowed = template_lines(before)
    matcher = difflib.SequenceMatcher(None, before.splitlines(), after.splitlines(), False)
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            assert any(i1 in block or i1 == block.stop for block in allowed), (tag, i1, i2)
            assert any(i2 <= block.stop and i1 >= block.start for block in allowed), (i1, i2)
    # And the content is what the plain injection gives.
    plain = list(yaml.safe_load_all(after))
    assert [d["kind"] for d in plain] == ["Deployment", "Service", "StatefulSet"]
    db = plain[2]["spec"]["template"]["spec"]
    assert "fsGroup" not in db.get("securityContext", {})
    assert [c["name"] for c in db["initContainers"]] == ["proxy-init", "proxy"]


def test_json_in_gives_json_out() -> None:
    deployment = workload("Deployment", "apps/v1", {"selector": SELECTOR, "template": TEMPLATE})
    done = run("inject", "-f", "-", "--namespace", "shop", stdin=json.dumps(deployment, indent=4))
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert list(written) == list(deployment)
    assert written["spec"]["template"]["metadata"]["annotations"]["proxy.io/status"]


def test_bootstrap_prints_the_pods_envoy_config_readably(webhook) -> None:
    from tests.support import bootstrap_of

    pod = {**copy.deepcopy(WEB_POD), "metadata": {"name": "web-0", "namespace": "shop"}}
    injected_pod = apply(pod, patch_of(webhook.mutate(review(pod, "shop"))))
    expected = json.loads(bootstrap_of(injected_pod))
    for shown in (pod, injected_pod):  # would be injected; is injected
        done = run("bootstrap", "-f", "-", stdin=yaml.safe_dump(shown))
        assert done.returncode == 0, done.stderr
        assert yaml.safe_load(done.stdout) == expected
        head = [line for line in done.stdout.splitlines() if line.startswith("#")]
        assert "#   inbound: 0.0.0.0:15006" in head
        assert any(line.startswith("#     port 8080 -> inbound|8080 (http)") for line in head)
    skipped = {**pod, "metadata": {"name": "web-1", "annotations": {"proxy.io/inject": "false"}}}
    done = run("bootstrap", "-f", "-", stdin=yaml.safe_dump(skipped))
    assert done.returncode == 1
    assert done.stderr.startswith("proxy-injector bootstrap: -: Pod web-1: not injected: opted_out")


def test_the_readme_tour_runs() -> None:
    """README's five-minute tour, command by command, as written there."""
    readme = (CORPUS.parent.parent / "README.md").read_text()
    tour = [line for line in readme.splitlines() if line.startswith(".venv/bin/proxy-injector ")]
    assert len(tour) == 3
    for line in tour:
        args = line.split("|")[0].split()[1:]
        done = run(*args, stdin="")
        assert done.returncode == 0, (line, done.stderr)
        assert done.stdout.strip(), line


def test_explain_and_bootstrap_show_the_engines_plan() -> None:
    path = str(MANIFESTS / "commented.yaml")
    reports = json.loads(run("explain", "-o", "json", "-f", path, stdin="").stdout)
    web, db = reports
    assert web["plan"]["ports"] == [
        {"container": "web", "port": 8080, "protocol": "http",
         "socket": "/dev/shm/web-8080.sock", "tcpFallback": True, "tcpHint": False}
    ]  # fmt: skip
    assert (web["plan"]["interception"], web["plan"]["probesRewritten"]) == ("init-container", 1)
    assert db["plan"]["ports"][0]["protocol"] == "tcp"
    # What the patch's containers and volumes get is decided in the plan, and shown.
    assert {key: web["plan"][key] for key in ("image", "workers", "logLevel")} == {
        "image": "envoyproxy/envoy:v1.40.0",
        "workers": 2,
        "logLevel": "warning",
    }
    assert web["plan"]["holdApplication"] is False and web["plan"]["shmSize"]
    text = run("explain", "-f", path, stdin="").stdout
    assert "  plan: port 8080 (web, http): socket /dev/shm/web-8080.sock, else TCP" in text
    assert "  plan: proxy envoyproxy/envoy:v1.40.0, 2 worker(s), log level warning" in text
    shown = run("bootstrap", "-f", path, stdin="").stdout
    assert shown.startswith("# plan: port 8080 (web, http): socket /dev/shm/web-8080.sock")


def test_all_kinds_warns_only_about_what_it_still_leaves_alone() -> None:
    mixed = {
        "apiVersion": "example.com/v1",
        "kind": "Mixed",
        "metadata": {"name": "m"},
        "spec": {
            "a": {"template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}},
            "b": {"podSpec": {"containers": [{"name": "d", "image": "i:1"}]}},
        },
    }
    done = run("inject", "--all-kinds", "-f", "-", stdin=yaml.safe_dump(mixed))
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "warning: document 1 (Mixed m): kind Mixed is not one inject knows: pod specs at "
        "spec.b.podSpec have no metadata to carry what the injector writes and are left alone\n"
    )
    injected = yaml.safe_load(done.stdout)
    assert "proxy.io/status" in injected["spec"]["a"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("namespace_labels", "pod_labels", "pod_annotations", "decision", "said"),
    [
        ("proxy.io/inject=enabled", {}, {}, "inject", "namespace label proxy.io/inject=enabled"),
        ("team=a", {"proxy.io/inject": "true"}, {}, "inject", "pod label proxy.io/inject=true"),
        (
            "team=a",
            {},
            {"proxy.io/inject": "true"},
            "skip",
            'warning: the annotation proxy.io/inject: "true" does not opt a pod in',
        ),
        (
            "proxy.io/inject=true",
            {"proxy.io/inject": "true"},
            {},
            "skip",
            "warning: namespace label proxy.io/inject=true is neither enabled nor disabled",
        ),
        ("proxy.io/inject=disabled", {"proxy.io/inject": "true"}, {}, "skip", "=disabled"),
    ],
)
def test_explain_says_what_the_shipped_webhook_selectors_do(
    tmp_path, namespace_labels, pod_labels, pod_annotations, decision, said
) -> None:
    """As deploy/'s two webhook entries select: enabled namespaces, or pods labelled
    "true" in namespaces with no label; an annotation or another label value is never
    seen by the API server's selectors."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "labels": pod_labels, "annotations": pod_annotations},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    done = proxy_injector("explain", "-f", str(path), "--namespace-labels", namespace_labels)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith(f": {decision}"), done.stdout
    assert said in done.stdout


def test_bootstrap_picks_a_template_of_a_list_by_name_or_index(tmp_path) -> None:
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": name,
                        "image": "nginx",
                        "ports": [{"containerPort": port, "name": "http"}],
                    }
                ]
            },
        }
        for name, port in (("a-0", 8080), ("b-0", 9090))
    ]
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
    for flags in (("--name", "b-0"), ("--index", "1")):
        done = proxy_injector("bootstrap", "-f", str(path), *flags)
        assert done.returncode == 0, done.stderr
        assert "#     port 9090 -> inbound|9090 (http)" in done.stdout
    done = proxy_injector("bootstrap", "-f", str(path), "--name", "c-0")
    assert done.returncode == 2
    assert done.stderr.endswith("no pod or template named c-0 (a-0, b-0)\n")
    done = proxy_injector("bootstrap", "-f", str(path), "--index", "5")
    assert (done.returncode, "--index 5: only 2 template(s)" in done.stderr) == (2, True)
