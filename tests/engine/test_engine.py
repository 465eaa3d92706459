"""Behaviour of the pure engine: what an injected pod looks like, decided without I/O."""

from __future__ import annotations

import copy
import json

import pytest

from tests.support import CORPUS, apply, container, load_case
from webhook.cli import parser
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping
from webhook.engine.pod import InvalidPod

DEFAULTS = MeshConfig()


def case(name: str) -> dict:
    return load_case(CORPUS / f"{name}.yaml")["pod"]


def injected(pod: dict, config: MeshConfig = DEFAULTS, **kwargs) -> dict:
    result = inject(pod, "shop", config, **kwargs)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


def pod_with(containers: list[dict], annotations: dict | None = None) -> dict:
    metadata: dict = {"name": "p"}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": containers},
    }


def app(name: str = "app", memory: str | None = None, ports: tuple[int, ...] = ()) -> dict:
    spec: dict = {"name": name, "image": "registry.example/app:1"}
    if memory:
        spec["resources"] = {"limits": {"memory": memory}}
    if ports:
        spec["ports"] = [{"containerPort": p} for p in ports]
    return spec


def shm_limit(pod: dict) -> str:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == "proxy-shm")["emptyDir"][
        "sizeLimit"
    ]


def env(pod: dict, name: str) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(pod, name).get("env", [])}


def arg(pod: dict, flag: str, name: str = "proxy", key: str | None = None) -> str:
    args = container(pod, name, key)["args"]
    return args[args.index(flag) + 1]


def test_engine_does_not_modify_its_input() -> None:
    pod = case("05-existing-dev-shm")
    before = copy.deepcopy(pod)
    inject(pod, "ml", DEFAULTS)
    assert pod == before


@pytest.mark.parametrize(
    ("memories", "expected"),
    [
        (["512Mi"], "256Mi"),
        (["1Gi", "512Mi"], "768Mi"),
        (["1Gi", None], "512Mi"),
        ([None, None], "64Mi"),
        (["1G"], "488281Ki"),
    ],
)
def test_shm_size_is_half_the_app_memory_limits(memories, expected) -> None:
    pod = pod_with([app(f"c{i}", memory) for i, memory in enumerate(memories)])
    assert shm_limit(injected(pod)) == expected


def test_shm_size_follows_the_mesh_config_and_the_annotation() -> None:
    config = from_mapping({"shm": {"sizeFraction": 0.25, "defaultSize": "128Mi"}})
    assert shm_limit(injected(pod_with([app(memory="1Gi")]), config)) == "256Mi"
    assert shm_limit(injected(pod_with([app()]), config)) == "128Mi"
    annotated = pod_with([app(memory="1Gi")], {"proxy.io/shm-size": "2Gi"})
    assert shm_limit(injected(annotated, config)) == "2Gi"


def test_existing_dev_shm_volume_is_shared_not_mounted_twice() -> None:
    pod = injected(case("05-existing-dev-shm"))
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["dshm", "models", "proxy-admin"]
    for name in ("triton", "loader", "proxy"):
        shm = [m for m in container(pod, name)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm == [{"name": "dshm", "mountPath": "/dev/shm"}], name


def test_two_different_dev_shm_volumes_are_denied() -> None:
    pod = pod_with(
        [
            {**app("a"), "volumeMounts": [{"name": "one", "mountPath": "/dev/shm"}]},
            {**app("b"), "volumeMounts": [{"name": "two", "mountPath": "/dev/shm/"}]},
        ]
    )
    pod["spec"]["volumes"] = [{"name": "one", "emptyDir": {}}, {"name": "two", "emptyDir": {}}]
    result = inject(pod, "shop", DEFAULTS)
    assert result.outcome == Outcome.DENY
    assert "a mounts one, b mounts two" in result.message


@pytest.mark.parametrize(
    ("annotations", "workers"),
    [
        ({}, "2"),
        ({"proxy.io/cpu-limit": "3.5"}, "4"),
        ({"proxy.io/cpu-limit": "500m", "proxy.io/cpu": "100m"}, "2"),
        ({"proxy.io/cpu-limit": "100"}, "64"),
        ({"proxy.io/concurrency": "1"}, "1"),
    ],
)
def test_concurrency_comes_from_the_annotation_or_the_cpu_limit(annotations, workers) -> None:
    assert arg(injected(pod_with([app()], annotations)), "--concurrency") == workers


def test_mesh_config_concurrency_applies_when_the_pod_says_nothing() -> None:
    config = from_mapping({"concurrency": 6})
    assert arg(injected(pod_with([app()]), config), "--concurrency") == "6"


def test_each_container_learns_its_own_sockets() -> None:
    pod = injected(pod_with([app("api", ports=(8080, 9090)), app("admin", ports=(3000,))]))
    assert env(pod, "api") == {
        "PROXY_UDS_PATH": "/dev/shm/api-8080.sock",
        "PROXY_UDS_PATH_8080": "/dev/shm/api-8080.sock",
        "PROXY_UDS_PATH_9090": "/dev/shm/api-9090.sock",
    }
    assert env(pod, "admin")["PROXY_UDS_PATH"] == "/dev/shm/admin-3000.sock"


def test_an_existing_socket_env_var_is_replaced_not_duplicated() -> None:
    pod = injected(case("23-env-already-set"))
    names = [e["name"] for e in container(pod, "notes")["env"]]
    assert names.count("PROXY_UDS_PATH") == 1
    assert env(pod, "notes")["PROXY_UDS_PATH"] == "/dev/shm/notes-8080.sock"
    assert "DB_URL" in names


def test_upstream_tcp_points_envoy_at_loopback() -> None:
    pod = injected(pod_with([app(ports=(8080,))], {"proxy.io/upstream": "tcp"}))
    bootstrap = json.loads(arg(pod, "--config-yaml"))
    cluster = next(
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "inbound|8080"
    )
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
    assert "env" not in container(pod, "app")


def test_excluded_inbound_port_gets_no_socket_and_no_cluster() -> None:
    pod = injected(pod_with([app(ports=(8080, 9090))], {"proxy.io/exclude-inbound-ports": "9090"}))
    clusters = [
        c["name"] for c in json.loads(arg(pod, "--config-yaml"))["static_resources"]["clusters"]
    ]
    assert "inbound|8080" in clusters
    assert "inbound|9090" not in clusters
    assert "PROXY_UDS_PATH_9090" not in env(pod, "app")


def test_admin_is_a_socket_only_the_proxy_can_open_in_a_volume_only_it_mounts() -> None:
    pod = injected(pod_with([app()]))
    bootstrap = json.loads(arg(pod, "--config-yaml"))
    assert bootstrap["admin"]["address"] == {
        "pipe": {"path": "/var/run/proxy-admin/admin.sock", "mode": 0o600}
    }
    bound = [
        item["address"].get("socket_address", {}).get("port_value")
        for item in bootstrap["static_resources"]["listeners"]
    ]
    assert 15000 not in bound and 15021 in bound
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "proxy-admin")
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert {"name": "proxy-admin", "mountPath": "/var/run/proxy-admin"} in container(pod, "proxy")[
        "volumeMounts"
    ]
    assert all(
        m["name"] != "proxy-admin"
        for c in pod["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    )


def test_long_container_name_overflows_the_socket_path_limit() -> None:
    config = from_mapping({"udsPath": "/dev/shm/" + "d" * 80 + "/{container}-{port}.sock"})
    result = inject(pod_with([app("a" * 30, ports=(8080,))]), "shop", config)
    assert result.outcome == Outcome.DENY
    assert result.message.startswith("mesh config udsPath:")


def test_proxy_container_is_locked_down() -> None:
    proxy = container(injected(pod_with([app()])), "proxy")
    assert proxy["securityContext"] == {
        "runAsUser": 1337,
        "runAsGroup": 1337,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert [p["containerPort"] for p in proxy["ports"]] == [15006, 15001, 15021, 15090]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/app", "port": 15021}
    assert proxy["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    assert "--disable-hot-restart" in proxy["args"]


def test_init_container_has_network_capabilities_only_and_the_proxy_resources() -> None:
    pod = injected(pod_with([app()], {"proxy.io/memory-limit": "512Mi"}))
    init = container(pod, "proxy-init", "initContainers")
    assert init["securityContext"]["capabilities"] == {
        "add": ["NET_ADMIN", "NET_RAW"],
        "drop": ["ALL"],
    }
    assert init["securityContext"]["privileged"] is False
    assert init["securityContext"]["runAsUser"] == 0
    assert init["resources"] == container(pod, "proxy")["resources"]


def test_init_container_args_are_what_init_iptables_accepts() -> None:
    pod = injected(case("20-interception-overrides"))
    init = container(pod, "proxy-init", "initContainers")
    assert init["command"] == ["proxy-injector"]
    args = parser().parse_args(init["args"])
    assert args.command == "init-iptables"
    assert args.proxy_uid == 1337 and args.proxy_gid == 1337
    assert (args.inbound_capture_port, args.outbound_capture_port) == (15006, 15001)
    assert args.exclude_inbound_ports == "9090,15000,15001,15006,15021,15090"
    assert args.exclude_outbound_ports == "5432,6379"
    assert args.include_outbound_ip_ranges == "10.0.0.0/8,2001:db8::/32"
    assert args.exclude_outbound_ip_ranges == "169.254.169.254/32,10.96.0.0/12,fd00::/8"
    assert args.include_inbound_ports == "*"


@pytest.mark.parametrize(
    ("namespace_label", "pod_label", "by_default", "expected"),
    [
        ("enabled", None, False, "injected"),
        ("enabled", "true", False, "injected"),
        ("enabled", "false", False, "opted_out_by_label"),
        ("disabled", None, False, "namespace_disabled"),
        ("disabled", "true", False, "namespace_disabled"),
        (None, None, False, "namespace_not_enabled"),
        (None, "true", False, "injected"),
        (None, None, True, "injected"),
        (None, "false", True, "opted_out_by_label"),
    ],
)
def test_namespace_rule_when_namespace_labels_are_known(
    namespace_label, pod_label, by_default, expected
) -> None:
    pod = pod_with([app()])
    if pod_label:
        pod["metadata"]["labels"] = {"proxy.io/inject": pod_label}
    namespace_labels = {"proxy.io/inject": namespace_label} if namespace_label else {}
    config = from_mapping({"injectByDefault": by_default})
    result = inject(pod, "shop", config, namespace_labels=namespace_labels)
    assert result.reason.code == expected


@pytest.mark.parametrize(
    "windows",
    [{"os": {"name": "windows"}}, {"nodeSelector": {"kubernetes.io/os": "windows"}}],
)
def test_a_windows_pod_is_admitted_unchanged(windows) -> None:
    pod = load_case(CORPUS / "01-web-single.yaml")["pod"]
    pod["spec"].update(windows)
    result = inject(pod, "shop", DEFAULTS)
    assert (result.outcome, result.reason.code, result.patch) == (Outcome.SKIP, "windows_pod", ())


def test_custom_never_inject_namespaces() -> None:
    config = from_mapping({"neverInjectNamespaces": ["monitoring"]})
    assert inject(pod_with([app()]), "monitoring", config).reason.code == "namespace_never_inject"
    assert inject(pod_with([app()]), "kube-system", config).outcome == Outcome.INJECT


def test_an_existing_proxy_init_container_is_a_conflict() -> None:
    pod = pod_with([app()])
    pod["spec"]["initContainers"] = [{"name": "proxy-init", "image": "busybox"}]
    result = inject(pod, "shop", DEFAULTS)
    assert result.outcome == Outcome.DENY
    assert "init container named proxy-init" in result.message


@pytest.mark.parametrize(
    ("pod", "field"),
    [
        ({"metadata": [], "spec": {}}, "pod.metadata"),
        ({"spec": {"containers": {"name": "x"}}}, "spec.containers"),
        ({"spec": {"containers": ["x"]}}, "spec.containers[0]"),
        (
            {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": "80"}]}]}},
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            {"metadata": {"annotations": {"proxy.io/cpu": 1}}, "spec": {}},
            "metadata.annotations[proxy.io/cpu]",
        ),
        (
            {"spec": {"containers": [{"name": "a", "resources": {"limits": {"memory": "lots"}}}]}},
            "spec.containers[0].resources.limits.memory",
        ),
    ],
)
def test_wrong_types_raise_invalid_pod_naming_the_field(pod, field) -> None:
    with pytest.raises(InvalidPod) as error:
        inject(pod, "shop", DEFAULTS)
    assert error.value.path == field


def _webhook_imports(package: str) -> list[tuple[str, str]]:
    """(file, module) for every webhook.* module imported under webhook/<package>/."""
    import ast
    from pathlib import Path

    found = []
    for path in (Path(__file__).parents[2] / "webhook" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            found += [(path.name, n) for n in names if n.startswith("webhook") and n != "webhook"]
    return found


def test_the_engine_imports_nothing_from_the_shells_around_it() -> None:
    """webhook/engine/ is what decides; the HTTP layer, the CLI, iptables, Events and
    metrics are shells around it and never the other way round."""
    for path, name in _webhook_imports("engine"):
        assert name.startswith("webhook.engine"), f"{path} imports {name}"


SHARED = {"node": ("webhook.kube",), "signer": ("webhook.kube",)}
"""Beside the engine and webhook/common/, the asyncio API client is shared by the shells
that watch the API."""


@pytest.mark.parametrize("room", ["node", "server", "tools", "signer", "kube", "common"])
def test_each_shell_imports_only_itself_and_the_engine(room) -> None:
    """webhook/node/ runs on nodes and in pods, webhook/server/ is the admission server,
    webhook/tools/ the offline tools, webhook/signer/ the certificate signer: none reaches
    into another (only the CLI sees all); node and signer share webhook/kube/, and every
    shell may use webhook/common/ (which the engine never does)."""
    found = _webhook_imports(room)
    assert found
    allowed = (f"webhook.{room}", "webhook.engine", "webhook.common", *SHARED.get(room, ()))
    for path, name in found:
        assert name.startswith(allowed), f"{room}/{path}: {name}"


def test_dual_stack_false_listens_on_ipv4_only() -> None:
    """Mesh config dualStack: false is for nodes booted with ipv6.disable=1, where a
    listener on [::] cannot bind: no listener may ask for one."""

    def ipv6_listeners(config: MeshConfig) -> list[str]:
        bootstrap = json.loads(arg(injected(pod_with([app()]), config), "--config-yaml"))
        return [
            item["name"]
            for item in bootstrap["static_resources"]["listeners"]
            if "additional_addresses" in item
        ]

    assert ipv6_listeners(from_mapping({})) == ["readiness", "prometheus", "inbound", "outbound"]
    assert ipv6_listeners(from_mapping({"dualStack": False})) == []
