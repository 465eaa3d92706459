"""Pods that talk to a node agent: proxy.io/shm: host (hostIPC and the node's /dev/shm) and
proxy.io/node-sockets (node directories), granted only where the mesh config allows them,
with the app's sockets kept out of the node's shared memory."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import apply, bootstrap_of, container, envoy_validate, object_errors
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping
from webhook.engine.reasons import Reason

AGENTS = "telemetry"
ALLOWED = from_mapping(
    {"nodeShm": {"namespaces": [AGENTS], "socketDirs": ["/var/run/datadog", "/run/agents"]}}
)


def pod(annotations: dict[str, str], mounts: list[dict] | None = None) -> dict:
    web = {
        "name": "web",
        "image": "registry.example/web:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "resources": {"limits": {"memory": "512Mi"}},
    }
    volumes = []
    if mounts:
        web["volumeMounts"] = mounts
        volumes = [{"name": m["name"], "emptyDir": {}} for m in mounts]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-7d9f-abcde", "annotations": annotations},
        "spec": {"containers": [web], "volumes": volumes},
    }


HOST = {"proxy.io/shm": "host"}
DOGSTATSD = {"proxy.io/node-sockets": "/var/run/datadog"}


def injected(spec: dict, namespace: str = AGENTS, config: MeshConfig = ALLOWED) -> dict:
    result = inject(spec, namespace, config)
    assert result.outcome == Outcome.INJECT, result.message
    out = apply(spec, list(result.patch))
    assert object_errors(out) == []
    return out


def denied(spec: dict, namespace: str = AGENTS, config: MeshConfig = ALLOWED) -> tuple[str, str]:
    result = inject(spec, namespace, config)
    assert result.outcome == Outcome.DENY
    return result.reason.code, result.message


def volume(out: dict, name: str) -> dict:
    return next(v for v in out["spec"]["volumes"] if v["name"] == name)


def mounts(out: dict, name: str) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container(out, name)["volumeMounts"]}


def socket_paths(out: dict) -> set[str]:
    """The sockets Envoy shares with the app (not its admin socket, in a volume of its own)."""
    found = set(re.findall(r'"pipe":\{"path":"([^"]+)"', bootstrap_of(out)))
    return {path for path in found if not path.startswith("/var/run/proxy-admin/")}


def test_host_mode_gives_the_app_the_nodes_shm_and_ipc_and_moves_the_sockets_out() -> None:
    out = injected(pod({**HOST, "proxy.io/outbound-uds": "true"}))
    assert out["spec"]["hostIPC"] is True
    assert volume(out, "proxy-node-shm")["hostPath"] == {"path": "/dev/shm", "type": "Directory"}
    assert mounts(out, "web") == {"/var/run/proxy": "proxy-shm", "/dev/shm": "proxy-node-shm"}
    env = {e["name"]: e["value"] for e in container(out, "web")["env"]}
    assert env["PROXY_UDS_PATH"] == "/var/run/proxy/web-8080.sock"
    assert env["PROXY_OUTBOUND_UDS"] == "/var/run/proxy/proxy-outbound.sock"
    assert socket_paths(out) == {
        "/var/run/proxy/web-8080.sock",
        "/var/run/proxy/proxy-outbound.sock",
    }
    assert envoy_validate(bootstrap_of(out)).returncode == 0


def test_sockets_live_in_a_volume_of_each_pod_never_on_the_node() -> None:
    """Two replicas on one node share the node's /dev/shm but never a socket: the socket
    directory is the pod's own emptyDir, and the proxy never mounts the node's /dev/shm
    (its /dev/shm is that private volume too, where the runtime would put the node's)."""
    out = injected(pod(HOST))
    assert volume(out, "proxy-shm") == {
        "name": "proxy-shm",
        "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
    }
    assert mounts(out, "proxy") == {
        "/dev/shm": "proxy-shm",
        "/var/run/proxy": "proxy-shm",
        "/var/run/proxy-admin": "proxy-admin",
    }
    assert not any(p.startswith("/dev/shm") for p in socket_paths(out))


def test_node_sockets_are_mounted_at_their_own_path_in_the_app_only() -> None:
    out = injected(pod({"proxy.io/node-sockets": "/var/run/datadog, /run/agents/trace/"}))
    assert [volume(out, f"proxy-node-sockets-{i}")["hostPath"] for i in (0, 1)] == [
        {"path": "/var/run/datadog", "type": "Directory"},
        {"path": "/run/agents/trace", "type": "Directory"},
    ]
    assert mounts(out, "web") == {
        "/dev/shm": "proxy-shm",
        "/var/run/datadog": "proxy-node-sockets-0",
        "/run/agents/trace": "proxy-node-sockets-1",
    }
    assert "/var/run/datadog" not in mounts(out, "proxy")
    status = json.loads(out["metadata"]["annotations"]["proxy.io/status"])
    assert status["volumes"] == [
        "proxy-shm",
        "proxy-admin",
        "proxy-node-sockets-0",
        "proxy-node-sockets-1",
    ]


def test_nothing_more_is_granted_than_asked() -> None:
    sockets_only = injected(pod(DOGSTATSD))
    assert "hostIPC" not in sockets_only["spec"]
    assert "proxy-node-shm" not in {v["name"] for v in sockets_only["spec"]["volumes"]}
    host_only = injected(pod(HOST))
    host_paths = [v for v in host_only["spec"]["volumes"] if "hostPath" in v]
    assert [v["name"] for v in host_paths] == ["proxy-node-shm"]
    plain = injected(pod({}), namespace="shop", config=MeshConfig())
    assert "hostIPC" not in plain["spec"]
    assert not any("hostPath" in v for v in plain["spec"]["volumes"])


def test_a_pod_asking_again_after_injection_gets_nothing_more() -> None:
    out = injected(pod({**HOST, **DOGSTATSD}))
    again = inject(out, AGENTS, ALLOWED)
    assert (again.outcome, again.reason, again.patch) == (Outcome.SKIP, Reason.ALREADY_INJECTED, ())


def test_outside_the_allowed_namespaces_both_are_denied_naming_the_field_to_change() -> None:
    code, message = denied(pod({**HOST, **DOGSTATSD}), namespace="shop")
    assert code == "node_access_not_allowed"
    assert 'annotation proxy.io/shm: "host" is not allowed in namespace "shop"' in message
    assert "annotation proxy.io/node-sockets is not allowed in namespace" in message
    assert message.count("mesh config nodeShm.namespaces") == 2
    code, message = denied(pod(HOST), config=MeshConfig())
    assert code == "node_access_not_allowed" and f'namespace "{AGENTS}"' in message


def test_a_directory_outside_the_allowed_prefixes_is_denied() -> None:
    for directory in ("/etc/kubernetes", "/var/run/datadogX", "/var/run"):
        code, message = denied(pod({"proxy.io/node-sockets": directory}))
        assert code == "node_access_not_allowed"
        assert (
            f'annotation proxy.io/node-sockets: "{directory}" is not under a directory in mesh '
            "config nodeShm.socketDirs (/var/run/datadog, /run/agents); add it there" in message
        )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("var/run/agent", "must be an absolute directory other than /"),
        ("/", "must be an absolute directory other than /"),
        ("/var/run/../../etc", "must not contain '.' or '..' parts"),
        ("/var/run/agent dir", "may only use letters"),
    ],
)
def test_bad_node_directories_are_invalid_annotations(value: str, problem: str) -> None:
    code, message = denied(pod({"proxy.io/node-sockets": value}))
    assert code == "invalid_annotation"
    assert message.startswith("annotation proxy.io/node-sockets:") and problem in message


def test_host_mode_refuses_what_it_would_contradict() -> None:
    code, message = denied(pod({**HOST, "proxy.io/shm-size": "1Gi"}))
    assert code == "invalid_pod" and "proxy.io/shm-size sizes the pod's own /dev/shm" in message
    code, message = denied(pod(HOST, mounts=[{"name": "scratch", "mountPath": "/dev/shm"}]))
    assert "container web mounts volume scratch at /dev/shm, where the injector mounts " in message
    code, message = denied(pod(HOST, mounts=[{"name": "run", "mountPath": "/var/run/proxy/"}]))
    assert "mounts volume run at /var/run/proxy, where the injector mounts the pod's sockets" in (
        message
    )
    lenient = from_mapping({"nodeShm": {"namespaces": [AGENTS], "socketDirs": ["/dev", "/var"]}})
    code, message = denied(pod({"proxy.io/node-sockets": "/dev/shm"}), config=lenient)
    assert code == "invalid_pod" and '"/dev/shm" is inside the pod\'s /dev/shm;' in message
    code, message = denied(pod({**HOST, "proxy.io/node-sockets": "/var/run/proxy"}), config=lenient)
    assert '"/var/run/proxy" is inside the pod\'s socket directory' in message
    code, message = denied(pod({"proxy.io/shm": "node"}))
    assert code == "invalid_annotation" and 'accepted: "pod" or "host"' in message


def test_an_existing_shm_mount_still_works_in_pod_mode_with_node_sockets() -> None:
    out = injected(pod(DOGSTATSD, mounts=[{"name": "scratch", "mountPath": "/dev/shm"}]))
    assert mounts(out, "web") == {"/dev/shm": "scratch", "/var/run/datadog": "proxy-node-sockets-0"}
    assert mounts(out, "proxy") == {"/dev/shm": "scratch", "/var/run/proxy-admin": "proxy-admin"}


def test_the_socket_directory_is_never_the_nodes_shared_memory() -> None:
    for value in ("/dev/shm", "/dev/shm/proxy", "/dev", "relative"):
        with pytest.raises(ValueError, match="socketDir"):
            from_mapping({"socketDir": value})


def test_allowing_more_namespaces_makes_no_injected_pod_stale_but_moving_sockets_does() -> None:
    """``check`` calls a pod stale when its proxy.io/status generation differs."""
    assert ALLOWED.sidecar_generation == MeshConfig().sidecar_generation
    moved = from_mapping({"socketDir": "/run/mesh"})
    assert moved.sidecar_generation != MeshConfig().sidecar_generation
