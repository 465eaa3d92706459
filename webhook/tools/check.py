"""``proxy-injector check``: is the installation healthy, and which pods need attention?

One result per check, each failure with a hint of what to do, like ``linkerd check``. The
cluster is read through ``Reader`` (the kubernetes client in ``kube_reader``; the tests'
fake API behind it), the verdicts come from the engine and certs/check.py: nothing is
decided here that the webhook decides elsewhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from cryptography import x509

from certs.check import due_for_renewal, names_of, signed_by_any
from webhook import __version__
from webhook.engine import Outcome, inject_or_deny
from webhook.engine.config import BASE_FILE, ConfigError, MeshConfig, layer_order, parse_layers
from webhook.engine.names import (
    DEFAULT_REVISION,
    INJECT_KEY,
    PROXY_CONTAINER,
    REVISION_KEY,
    REVISION_LABEL,
    STATUS_KEY,
)
from webhook.engine.selection import (
    NAMESPACE_VALUES,
    called_revision,
    container_names,
    other_mesh,
)
from webhook.tools import identity, traffic
from webhook.tools.reading import Reader, Result, injection_status

EXPECTED_ENTRY = {
    "failurePolicy": "Fail",
    "sideEffects": "None",
    "reinvocationPolicy": "IfNeeded",
}
_NEVER = {
    "key": "kubernetes.io/metadata.name",
    "operator": "NotIn",
    "values": ["proxy-system", "kube-system"],
}
_NOT_FALSE = {"key": INJECT_KEY, "operator": "NotIn", "values": ["false"]}
_NO_INJECT_LABEL = {"key": INJECT_KEY, "operator": "DoesNotExist"}
_NO_REV = {"key": REVISION_KEY, "operator": "DoesNotExist"}


def expected_selectors(revision: str = DEFAULT_REVISION) -> dict[str, dict[str, Any]]:
    """The entries deploy/ ships: deploy/base for the default revision, components/revision
    for another (a test keeps them equal)."""
    if revision == DEFAULT_REVISION:
        return {
            "namespace.proxy.io": {
                "namespaceSelector": {
                    "matchLabels": {INJECT_KEY: "enabled"},
                    "matchExpressions": [_NEVER],
                },
                "objectSelector": {"matchExpressions": [_NOT_FALSE]},
            },
            "pod.proxy.io": {
                "namespaceSelector": {"matchExpressions": [_NO_INJECT_LABEL, _NO_REV, _NEVER]},
                "objectSelector": {
                    "matchLabels": {INJECT_KEY: "true"},
                    "matchExpressions": [_NO_REV],
                },
            },
        }
    chosen = {"key": REVISION_KEY, "operator": "In", "values": [revision]}
    return {
        "rev.namespace.proxy.io": {
            "namespaceSelector": {"matchExpressions": [chosen, _NO_INJECT_LABEL, _NEVER]},
            "objectSelector": {"matchExpressions": [_NOT_FALSE]},
        },
        "rev.pod.proxy.io": {
            "namespaceSelector": {"matchExpressions": [_NO_INJECT_LABEL, _NO_REV, _NEVER]},
            "objectSelector": {"matchExpressions": [chosen, _NOT_FALSE]},
        },
    }


@dataclass(frozen=True)
class Target:
    namespace: str = "proxy-system"
    service: str = "proxy-injector"
    secret: str = "proxy-injector-tls"
    webhook_configuration: str = "proxy-injector"
    egress_seconds: float = 5.0
    """How far apart the two reads of declared-only pods' refused-egress counters are."""
    mesh_config: str = "proxy-injector-mesh"
    """The ConfigMap the Deployment mounts (key mesh.yaml), read when --config is not given."""

    def of_revision(self, revision: str) -> Target:
        """The names components/revision gives revision ``revision``'s pieces."""
        if revision == DEFAULT_REVISION:
            return self
        return replace(
            self,
            service=f"{self.service}-{revision}",
            secret=f"{self.secret}-{revision}",
            webhook_configuration=f"{self.webhook_configuration}-{revision}",
            mesh_config=f"{self.mesh_config}-{revision}",
        )


Configs = dict[str, MeshConfig]
"""Each installed revision's mesh config, by revision name."""


def run(reader: Reader, config: MeshConfig | None, target: Target = Target()) -> list[Result]:
    """``config`` None: the cluster's own mesh config, as the webhook reads it. The other
    revisions' are always read from the cluster (their ConfigMaps are labelled)."""
    results = []
    if config is None:
        config, read = _cluster_mesh_config(reader, target)
        results.append(read)
    configs: Configs = {DEFAULT_REVISION: config}
    for revision in _revisions_installed(reader, target):
        configs[revision], read = _cluster_mesh_config(reader, target.of_revision(revision))
        results.append(read)
    for revision in configs:
        results += _webhook(reader, revision, target.of_revision(revision))
    namespaces, listed, unknown = _meshed_namespaces(reader, config)
    results += [
        *_pods(configs, namespaces, listed),
        _namespace_values(unknown),
        _revisions(configs, namespaces, listed),
    ]
    injected = [
        (ns, pod)
        for ns, pods in listed.items()
        for pod in pods
        if STATUS_KEY in ((pod.get("metadata") or {}).get("annotations") or {})
    ]
    results += [
        _two_meshes(injected),
        traffic.balancing(reader, injected, config.cluster_domain),
        traffic.refused_egress(reader, injected, target.egress_seconds),
    ]
    if config.mtls.identity != "none":
        results += identity.checks(reader, config, namespaces, target.namespace)
    return results


def _webhook(reader: Reader, revision: str, target: Target) -> list[Result]:
    webhook = reader.webhook_configuration(target.webhook_configuration)
    results = [_exists(webhook, target)]
    if webhook is not None:
        results += [
            _endpoints(reader, webhook),
            _certificate(reader, webhook, target),
            _entries(webhook, revision),
        ]
    return results


def _revisions_installed(reader: Reader, target: Target) -> list[str]:
    """The revisions beside the default: their mesh ConfigMaps carry proxy.io/revision."""
    path = f"/api/v1/namespaces/{target.namespace}/configmaps?labelSelector={REVISION_LABEL}"
    listed = reader.get(path) or {}
    names = {
        ((item.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL, "")
        for item in listed.get("items") or []
    }
    return sorted(name for name in names if name and name != DEFAULT_REVISION)


def _cluster_mesh_config(reader: Reader, target: Target) -> tuple[MeshConfig, Result]:
    """The mesh config in the ConfigMap the webhook mounts; its defaults when there is
    none or it does not parse (said, since every verdict after depends on it)."""
    name = "the webhook's mesh config is readable"
    where = f"ConfigMap {target.namespace}/{target.mesh_config}"
    found = reader.get(f"/api/v1/namespaces/{target.namespace}/configmaps/{target.mesh_config}")
    data = (found or {}).get("data") or {}
    hint = "kubectl apply -k deploy/, or pass the mesh config the webhook runs with as --config"
    if BASE_FILE not in data:
        missing = "not found" if found is None else f"has no {BASE_FILE}"
        return MeshConfig(), Result(
            name, False, f"{where} {missing}: judged with the defaults", hint
        )
    layers = [(key, data[key]) for key in layer_order(list(data))]
    try:
        config = parse_layers(layers, where)
    except ConfigError as exc:
        return MeshConfig(), Result(name, False, f"{exc}; judged with the defaults", hint)
    where += f" ({', '.join(key for key, _ in layers)})"
    return config, Result(name, True, f"{where}, generation {config.sidecar_generation}")


def _exists(webhook: dict[str, Any] | None, target: Target) -> Result:
    name = "the MutatingWebhookConfiguration exists"
    if webhook is None:
        return Result(name, False, target.webhook_configuration, "kubectl apply -k deploy/")
    return Result(name, True, target.webhook_configuration)


def _service(webhook: dict[str, Any]) -> dict[str, Any]:
    entries = webhook.get("webhooks") or [{}]
    return (entries[0].get("clientConfig") or {}).get("service") or {}


def _endpoints(reader: Reader, webhook: dict[str, Any]) -> Result:
    name = "its service has ready endpoints"
    service = _service(webhook)
    endpoints = reader.endpoints(service.get("namespace", ""), service.get("name", ""))
    ready = [
        address.get("ip")
        for subset in (endpoints or {}).get("subsets") or []
        for address in subset.get("addresses") or []
    ]
    where = f"{service.get('namespace')}/{service.get('name')}"
    if not ready:
        hint = (
            f"kubectl -n {service.get('namespace')} get pods -l app=proxy-injector: are the "
            "injector's pods running and ready (/readyz)?"
        )
        return Result(name, False, f"service {where} has no ready endpoint", hint)
    return Result(name, True, f"service {where}: {len(ready)} ready")


def _certificate(reader: Reader, webhook: dict[str, Any], target: Target) -> Result:
    name = "caBundle verifies the serving certificate, outside its renewal window"
    hint = (
        "restart the injector (serve --manage-certs renews and patches caBundle), or with "
        "cert-manager check the Certificate and the CA injection"
    )
    secret = reader.secret(target.namespace, target.secret)
    bundle = ((webhook.get("webhooks") or [{}])[0].get("clientConfig") or {}).get("caBundle")
    if secret is None or not bundle:
        missing = "secret" if secret is None else "caBundle"
        return Result(name, False, f"no {missing}", hint)
    try:
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        authorities = x509.load_pem_x509_certificates(base64.b64decode(bundle))
    except (KeyError, ValueError) as exc:
        return Result(name, False, f"unreadable: {exc}", hint)
    now = dt.datetime.now(dt.UTC)
    service = _service(webhook)
    dns = f"{service.get('name')}.{service.get('namespace')}.svc"
    problems = []
    if not signed_by_any(cert, authorities):
        problems.append("caBundle does not verify the certificate in the secret")
    if now >= cert.not_valid_after_utc:
        problems.append("the certificate has expired")
    elif due_for_renewal(cert, now):
        problems.append("the certificate is inside its renewal window")
    if dns not in names_of(cert):
        problems.append(f"the certificate is not valid for {dns}")
    if problems:
        return Result(name, False, "; ".join(problems), hint)
    return Result(name, True, f"valid for {dns} until {cert.not_valid_after_utc:%Y-%m-%d}")


def _entries(webhook: dict[str, Any], revision: str) -> Result:
    name = "failurePolicy, timeout and selectors are as deploy/ ships them"
    problems = []
    entries = {e.get("name"): e for e in webhook.get("webhooks") or []}
    for entry_name, selectors in expected_selectors(revision).items():
        entry = entries.get(entry_name)
        if entry is None:
            problems.append(f"{entry_name}: missing")
            continue
        wanted = {**EXPECTED_ENTRY, **selectors}
        problems += [
            f"{entry_name}.{key}: {json.dumps(entry.get(key))}, expected {json.dumps(value)}"
            for key, value in wanted.items()
            if entry.get(key) != value
        ]
        timeout = entry.get("timeoutSeconds")
        if not isinstance(timeout, int) or not 1 <= timeout <= 10:
            problems.append(f"{entry_name}.timeoutSeconds: {timeout!r}, expected 1 to 10")
    if problems:
        return Result(name, False, "; ".join(problems), "kubectl apply -k deploy/", problems)
    return Result(name, True)


def _owner(pod: dict[str, Any]) -> str:
    """The workload to restart: a Deployment for a ReplicaSet's pods (its name less the
    pod-template-hash), else the controller itself, else the pod."""
    metadata = pod.get("metadata") or {}
    owners = [o for o in metadata.get("ownerReferences") or [] if o.get("controller")]
    if not owners:
        return f"pod/{metadata.get('name')}"
    owner = owners[0]
    template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
    if owner.get("kind") == "ReplicaSet" and template_hash:
        return f"deployment/{owner['name'].removesuffix('-' + template_hash)}"
    return f"{owner.get('kind', '').lower()}/{owner.get('name')}"


def _stale(pod: dict[str, Any], status: dict[str, Any], config: MeshConfig) -> str | None:
    if status.get("version") != __version__:
        return f"injected by {status.get('version')}, now {__version__}"
    if status.get("configGeneration") != config.sidecar_generation:
        return "injected under another mesh config"
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    wanted = annotations.get("proxy.io/image") or config.proxy_image
    spec = pod.get("spec") or {}
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    image = next((c.get("image") for c in containers if c.get("name") == PROXY_CONTAINER), None)
    if image != wanted:
        return f"proxy image {image}, now {wanted}"
    return None


def _pods(
    configs: Configs, namespaces: list[dict[str, Any]], listed: dict[str, list[dict[str, Any]]]
) -> list[Result]:
    missing: list[str] = []
    stale: dict[str, list[str]] = {}
    for namespace in namespaces:
        labels = (namespace.get("metadata") or {}).get("labels") or {}
        ns = namespace["metadata"]["name"]
        for pod in listed[ns]:
            metadata = pod.get("metadata") or {}
            name = f"{ns}/{metadata.get('name')}"
            called, rule = called_revision(labels, metadata.get("labels") or {})
            raw = (metadata.get("annotations") or {}).get(STATUS_KEY)
            if raw is None:
                config = configs.get(called or DEFAULT_REVISION)
                reason = config and _would_be(pod, ns, config, labels)
                if reason:
                    missing.append(f"{name}: {reason}")
                continue
            why = _stale_in(pod, injection_status(raw), configs, called, rule)
            if why:
                stale.setdefault(f"{ns} {_owner(pod)}", []).append(f"{name}: {why}")
    return [_missing_result(missing), _stale_result(stale)]


def _stale_in(
    pod: dict[str, Any], status: dict[str, Any], configs: Configs, called: str | None, rule: str
) -> str | None:
    """Why an injected pod is not what the revision its labels select would make of it
    now. A pod moved to a revision whose sidecar is the same (version and mesh config)
    needs no restart."""
    injected_by = status.get("revision", DEFAULT_REVISION)
    judge = called if called in configs else injected_by
    config = configs.get(judge)
    if config is None:
        return f"injected by revision {injected_by}, which is not installed"
    why = _stale(pod, status, config)
    if why and judge != injected_by:
        return f"injected by revision {injected_by}; {rule} now selects revision {judge}: {why}"
    return why


def _would_be(
    pod: dict[str, Any], namespace: str, config: MeshConfig, labels: dict[str, str]
) -> str | None:
    """Why a pod running without the sidecar lacks it, from the engine as it decides now;
    None for the pods the engine leaves out on purpose (opted out, host network...)."""
    result = inject_or_deny(pod, namespace, config, labels)
    if result.outcome == Outcome.INJECT:
        return (
            "would be injected now: created before the namespace was enabled, or while "
            "the webhook was down"
        )
    if result.outcome == Outcome.DENY:
        return f"{result.reason.code}: {result.message}"
    return None


def _meshed_namespaces(
    reader: Reader, config: MeshConfig
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], list[str]]:
    """Every namespace where a revision's webhook can inject, with the pods it can inject
    there: all of a namespace labelled enabled or proxy.io/rev, those labelled
    proxy.io/inject=true or proxy.io/rev in one with neither; and the namespaces whose
    label value no webhook entry selects."""
    namespaces, listed, unknown = [], {}, []
    for namespace in reader.namespaces(""):
        name = namespace["metadata"]["name"]
        labels = (namespace.get("metadata") or {}).get("labels") or {}
        state = labels.get(INJECT_KEY)
        if name in config.never_inject_namespaces or state == "disabled":
            continue
        if state is not None and state not in NAMESPACE_VALUES:
            unknown.append(f"namespace {name}: {INJECT_KEY}={state}")
            continue
        whole = state == "enabled" or REVISION_KEY in labels
        pods = reader.pods(name) if whole else _opted_in(reader, name)
        if whole or pods:
            namespaces.append(namespace)
            listed[name] = pods
    return namespaces, listed, unknown


def _opted_in(reader: Reader, namespace: str) -> list[dict[str, Any]]:
    """The pods of a namespace with no label that a pod entry can select."""
    pods = {}
    for selector in (f"{INJECT_KEY}=true", REVISION_KEY):
        for pod in reader.pods(namespace, selector):
            pods[(pod.get("metadata") or {}).get("name")] = pod
    return list(pods.values())


def _namespace_values(unknown: list[str]) -> Result:
    name = f"namespace labels {INJECT_KEY} are values the webhook selects"
    if unknown:
        hint = (
            f"label them {INJECT_KEY}=enabled (or disabled): no webhook entry selects other "
            "values, so their pods are never injected"
        )
        return Result(name, False, f"{len(unknown)} namespace(s)", hint, unknown)
    return Result(name, True)


def _revisions(
    configs: Configs, namespaces: list[dict[str, Any]], listed: dict[str, list[dict[str, Any]]]
) -> Result:
    """Which revision each namespace gets and which revision injected its pods; every
    revision a label names is installed."""
    name = "every revision that labels select is installed"
    lines, absent = [], []
    for namespace in namespaces:
        metadata = namespace.get("metadata") or {}
        ns, labels = metadata["name"], metadata.get("labels") or {}
        gets, rule = called_revision(labels, {})
        if gets is not None and gets not in configs:
            absent.append(f"namespace {ns}: {rule}")
        by: dict[str, int] = {}
        for pod in listed[ns]:
            pod_meta = pod.get("metadata") or {}
            raw = (pod_meta.get("annotations") or {}).get(STATUS_KEY)
            revision = injection_status(raw).get("revision", DEFAULT_REVISION) if raw else None
            state = f"injected by {revision}" if revision else "without the sidecar"
            by[state] = by.get(state, 0) + 1
            called, pod_rule = called_revision(labels, pod_meta.get("labels") or {})
            if called is not None and called not in configs:
                absent.append(f"{ns}/{pod_meta.get('name')}: {pod_rule}")
        pods = ", ".join(f"{count} {state}" for state, count in sorted(by.items())) or "none"
        where = f"revision {gets} ({rule})" if gets else "pods that opt in by label"
        lines.append(f"namespace {ns}: {where}; pods: {pods}")
    installed = ", ".join(sorted(configs))
    if absent:
        hint = (
            "install that revision (docs/install.md, canary of the injector) or relabel: "
            "no webhook is called for these pods, they run without the sidecar"
        )
        return Result(name, False, f"installed: {installed}", hint, absent + lines)
    return Result(name, True, f"installed: {installed}", "", lines)


def _two_meshes(injected: list[tuple[str, dict[str, Any]]]) -> Result:
    """Our sidecar beside another mesh's: one of the two proxies cannot hold its ports."""
    name = "no pod carries two meshes' sidecars"
    items = []
    for ns, pod in injected:
        metadata = pod.get("metadata") or {}
        names = container_names(pod.get("spec") or {})
        other = other_mesh(metadata.get("annotations") or {}, names)
        if other:
            items.append(f"{ns}/{metadata.get('name')}: ours and {other}")
    if items:
        hint = (
            "turn the other mesh's injection off for these namespaces (Istio: the "
            "istio-injection label; Linkerd: the linkerd.io/inject annotation), then "
            "kubectl rollout restart their workloads (docs/install.md)"
        )
        return Result(name, False, f"{len(items)} pod(s)", hint, items)
    return Result(name, True)


def _missing_result(missing: list[str]) -> Result:
    name = "pods in enabled namespaces have the sidecar"
    if missing:
        hint = "kubectl rollout restart the workloads of these pods (explain -f shows why)"
        return Result(name, False, f"{len(missing)} without it", hint, missing)
    return Result(name, True)


def _stale_result(stale: dict[str, list[str]]) -> Result:
    name = "sidecars match the current version and mesh config"
    if stale:
        restarts = [
            f"kubectl -n {key.split(' ')[0]} rollout restart {key.split(' ')[1]}" for key in stale
        ]
        items = [item for pods in stale.values() for item in pods]
        return Result(name, False, f"{len(items)} stale pods", "; ".join(restarts), items)
    return Result(name, True)


def text(results: list[Result]) -> str:
    lines = []
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        lines.append(f"{mark} {result.check}" + (f": {result.detail}" if result.detail else ""))
        lines += [f"       {item}" for item in result.items]
        if not result.ok and result.hint:
            lines.append(f"     hint: {result.hint}")
    return "\n".join(lines) + "\n"


def as_json(results: list[Result]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


def as_yaml(results: list[Result]) -> str:
    import yaml

    return yaml.safe_dump([asdict(r) for r in results], sort_keys=False, width=100)


def kube_reader(api_client: Any) -> Reader:
    """The Reader on the real API, objects as the API serves them (camelCase dicts)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    plain: Callable[[Any], Any] = api_client.sanitize_for_serialization

    def found(call: Callable[[], Any]) -> dict[str, Any] | None:
        try:
            return plain(call())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    class KubeReader:
        def webhook_configuration(self, name: str) -> dict[str, Any] | None:
            return found(lambda: admission.read_mutating_webhook_configuration(name))

        def endpoints(self, namespace: str, name: str) -> dict[str, Any] | None:
            return found(lambda: core.read_namespaced_endpoints(name, namespace))

        def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
            return found(lambda: core.read_namespaced_secret(name, namespace))

        def namespaces(self, label_selector: str) -> list[dict[str, Any]]:
            return plain(core.list_namespace(label_selector=label_selector))["items"]

        def pods(self, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
            listed = core.list_namespaced_pod(namespace, label_selector=label_selector)
            return plain(listed)["items"]

        def _text(self, path: str, accept: str) -> str | None:
            """The body at an API path as the server sends it (no parameter encoding, so
            a pod proxy path keeps its slashes), or None for 404."""
            method, url, headers, _, _ = api_client.param_serialize(
                "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
            )
            response = api_client.call_api(method, url, headers)
            response.read()
            if response.status == 404:
                return None
            if response.status != 200:
                raise ApiException(status=response.status, reason=response.reason)
            return response.data.decode() if isinstance(response.data, bytes) else response.data

        def get(self, path: str) -> dict[str, Any] | None:
            """Any object by its API path, or None when there is none."""
            text = self._text(path, "application/json")
            return None if text is None else json.loads(text)

        def served(self, group_version: str) -> list[str] | None:
            """API discovery of one group version: the resources it serves, or None."""
            found = self.get(f"/apis/{group_version}")
            return None if found is None else [item["name"] for item in found["resources"]]

        def csi_driver(self, name: str) -> dict[str, Any] | None:
            return found(lambda: client.StorageV1Api(api_client).read_csi_driver(name))

        def can(self, verb: str, group: str, resource: str, namespace: str) -> bool:
            """A SelfSubjectAccessReview: may the caller do this?"""
            attributes = client.V1ResourceAttributes(
                verb=verb, group=group, resource=resource, namespace=namespace or None
            )
            review = client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
            )
            answer = client.AuthorizationV1Api(api_client).create_self_subject_access_review(review)
            return bool(answer.status and answer.status.allowed)

        def pod_port(self, namespace: str, pod: str, port: int, path: str) -> str | None:
            """What ``path`` on a pod's port answers through the API server's pod proxy."""
            try:
                return self._text(
                    f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}", "*/*"
                )
            except ApiException:
                return None

    return KubeReader()
