"""proxy.io/shm: host and proxy.io/node-sockets for real: a node agent and an app, each in a
mount namespace of its own where the injected pod's volumes are bind-mounted as the kubelet
would (a folder standing in for the node's /dev/shm), sharing an IPC namespace the test made
(standing in for hostIPC). The app reads the agent's POSIX and System V segments and asks
its socket in the node directory, then serves what it read on its own socket, in the
mesh config's socketDir, to Envoy running the pod's generated bootstrap."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apps.node_agent import SYSV_KEY
from tests.processes import Envoy, http_get, needs_root, shared_folder, wait_for
from tests.support import apply, bootstrap_of, container
from webhook.engine import Outcome, inject
from webhook.engine.config import from_mapping

pytestmark = [pytest.mark.envoy, needs_root]
APPS = Path(__file__).parent / "apps"
NAMESPACE = "telemetry"


def injected_pod(agent_dir: Path, config) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "annotations": {"proxy.io/shm": "host", "proxy.io/node-sockets": str(agent_dir)},
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ]
        },
    }
    result = inject(pod, NAMESPACE, config)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


def bind_mounts(spec: dict, node_shm: Path) -> list[str]:
    """``mount --bind`` for each of the app container's mounts, from where the kubelet
    would take it: a hostPath from the node (its /dev/shm is the stand-in), the pod's
    emptyDir from the socket directory, which is the same path here."""
    volumes = {v["name"]: v for v in spec["spec"]["volumes"]}
    commands = []
    for mount in container(spec, "web")["volumeMounts"]:
        volume, target = volumes[mount["name"]], mount["mountPath"]
        source = volume.get("hostPath", {}).get("path", target)
        source = str(node_shm) if source == "/dev/shm" else source
        commands.append(f"mount --bind {source} {target}")
    return commands


def in_mount_namespace(commands: list[str], program: list[str]) -> list[str]:
    script = " && ".join([*commands, 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *program]


@pytest.fixture
def node(tmp_path):
    """The node's directories, and the pod's socket directory at the mesh config's
    socketDir (a path of its own on this machine, removed afterwards)."""
    socket_dir = Path(f"/run/proxy-e2e-{secrets.token_hex(3)}")
    socket_dir.mkdir(mode=0o755)
    socket_dir.chmod(0o1777)
    node_shm, agent_dir = tmp_path / "node-dev-shm", tmp_path / "agent"
    for folder in (node_shm, agent_dir):
        folder.mkdir()
        folder.chmod(0o1777)
    processes: list[subprocess.Popen] = []
    try:
        yield socket_dir, node_shm, agent_dir, processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_the_app_shares_memory_with_a_node_agent_and_serves_envoy_from_its_own_socket(
    node,
) -> None:
    socket_dir, node_shm, agent_dir, processes = node
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.fail("unshare and nsenter (util-linux) are missing")
    config = from_mapping(
        {
            "socketDir": str(socket_dir),
            "nodeShm": {"namespaces": [NAMESPACE], "socketDirs": [str(agent_dir.parent)]},
        }
    )
    spec = injected_pod(agent_dir, config)
    env = {e["name"]: e["value"] for e in container(spec, "web")["env"]}
    assert env["PROXY_UDS_PATH"] == f"{socket_dir}/web-8080.sock"
    python = [sys.executable, "-u"]
    agent_socket = str(agent_dir / "agent.sock")
    # The agent: its own IPC namespace (the "host" IPC namespace of this test) and the
    # node's /dev/shm, as a DaemonSet with hostIPC and a hostPath gets them.
    agent = subprocess.Popen(
        [
            "unshare",
            "--ipc",
            *in_mount_namespace(
                [f"mount --bind {node_shm} /dev/shm"],
                [*python, str(APPS / "node_agent.py"), agent_socket],
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    processes.append(agent)
    assert agent.stdout.readline().strip() == "ready"
    app = subprocess.Popen(
        [
            "nsenter",
            f"--target={agent.pid}",
            "--ipc",
            *in_mount_namespace(
                bind_mounts(spec, node_shm), [*python, str(APPS / "node_app.py"), agent_socket]
            ),
        ],
        env={**os.environ, **env, "PYTHONPATH": str(APPS)},
    )
    processes.append(app)
    wait_for(lambda: Path(env["PROXY_UDS_PATH"]).exists(), 20, "the app's socket")
    envoy = Envoy(json.loads(bootstrap_of(spec)), shared_folder(), inbound_ports=[8080]).start()
    try:
        status, body = http_get(envoy.ports[8080], "/")
        assert (status, body.decode()) == (
            200,
            "posix=hello from the agent; sysv=hello from the agent; agent=agent ok\n",
        )
        assert envoy.stat("cluster.inbound|8080.upstream_rq_total") >= 1
    finally:
        envoy.stop()
    # The node's /dev/shm holds the agent's segment and nothing of ours; our sockets are
    # in the pod's own directory.
    assert sorted(os.listdir(node_shm)) == ["agent-stats"]
    assert sorted(os.listdir(socket_dir)) == ["web-8080.sock"]
    # The System V segment lives in the namespace standing in for hostIPC, not in this one.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    assert libc.shmget(SYSV_KEY, 0, 0) == -1
