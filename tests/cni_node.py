"""A simulated node for the CNI plugin: a network namespace standing for the node, its own
``/etc/cni/net.d`` and ``/opt/cni/bin`` folders, the fake Kubernetes API listening inside it,
the agent started inside it as the DaemonSet runs it (hostNetwork), and a runtime that runs
the active conflist's chain as libcni does: each plugin a new process in the node's
namespace, with systemd's PATH and nothing of the venv on it, ``prevResult`` handed on.

Pods are network namespaces of their own. Everything is killed and removed at the end, even
when a test fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fake_kube import FakeKube
from tests.identity import ProjectedVolume
from tests.netns import ipv6_available
from tests.processes import free_port, stop, wait_for
from tests.support import apply
from webhook.engine import Outcome, inject
from webhook.engine.config import from_mapping

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CNI_PLUGINS = Path("/usr/lib/cni")
NODE_NAME = "node-1"
IP = shutil.which("ip") or "/usr/sbin/ip"


@functools.cache
def relay_binary() -> Path:
    """The relay built as the image builds it (scripts/build-relay, musl, static)."""
    folder = Path(tempfile.mkdtemp(prefix="proxy-injector-relay-"))
    target = folder / "cni-relay"
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-relay"), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(f"scripts/build-relay failed: {built.stderr}")
    return target


def pod_spec(namespace: str, name: str, *, meshed: bool, owned: bool = True) -> dict[str, Any]:
    """A web pod bound to the node, meshed by the engine in cni mode when asked."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [
                {
                    "name": "web",
                    "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
    }
    if owned:
        pod["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-5d8f",
                "uid": "rs-1",
                "controller": True,
            }
        ]
    if not meshed:
        return pod
    result = inject(pod, namespace, from_mapping({"interception": "cni"}))
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


def validate_failed(pod: dict[str, Any], exit_code: int) -> dict[str, Any]:
    """The pod as the kubelet reports it after proxy-validate exited with ``exit_code``."""
    failed = json.loads(json.dumps(pod))
    terminated = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
    failed["status"] = {
        "phase": "Pending",
        "initContainerStatuses": [
            {
                "name": "proxy-validate",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": terminated,
                "ready": False,
                "restartCount": 1,
                "image": "x",
                "imageID": "",
                "containerID": "containerd://1",
            }
        ],
    }
    return failed


@dataclass
class Sandbox:
    """A pod's network namespace, as the runtime makes it before calling CNI."""

    namespace: str
    name: str
    uid: str
    netns: str
    container_id: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def cni_args(self) -> str:
        return (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}"
        )


class SimulatedNode:
    def __init__(self, folder: Path, backend: str = "nft") -> None:
        self.folder, self.backend = folder, backend
        self.suffix = secrets.token_hex(3)
        self.netns = f"pi-node-{self.suffix}"
        self.bin_dir, self.conf_dir = folder / "opt-cni-bin", folder / "etc-cni-net.d"
        self.socket = folder / "run" / "proxy-injector" / "cni.sock"
        self.log_file = folder / "var-log" / "proxy-injector-cni.log"
        for made in (self.bin_dir, self.conf_dir, self.log_file.parent):
            made.mkdir(parents=True)
        self.sandboxes: list[Sandbox] = []
        self.agent: subprocess.Popen | None = None
        self.agent_runs = 0
        self.mesh_volume = ProjectedVolume(self.folder / "mesh-config")
        """The agent's mesh config as the DaemonSet mounts it; one writer for the node's
        life, so its stamps stay distinct across agent restarts."""
        self.http_port = free_port()
        self._ip("netns", "add", self.netns)
        self.api: FakeKube | None = None
        try:
            self._ip("-n", self.netns, "link", "set", "lo", "up")
            self._no_dad(self.netns)
            self.api = FakeKube(netns=f"/var/run/netns/{self.netns}")
            self.api.nodes[NODE_NAME] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": NODE_NAME, "resourceVersion": "1"},
                "spec": {},
            }
        except Exception:
            self.destroy()
            raise

    def _no_dad(self, namespace: str) -> None:
        """Addresses the bridge plugin adds are usable at once, not after DAD's seconds."""
        for conf in ("all", "default"):
            key = f"net.ipv6.conf.{conf}.accept_dad=0"
            subprocess.run([IP, "netns", "exec", namespace, "sysctl", "-qw", key],
                           capture_output=True, timeout=30, check=False)  # fmt: skip

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)

    def in_node(self, *command: str) -> list[str]:
        return [IP, "netns", "exec", self.netns, *command]

    # The cluster's network config -----------------------------------------------------------

    def bridge(self) -> dict[str, Any]:
        ranges, routes = [[{"subnet": "10.233.0.0/24"}]], [{"dst": "0.0.0.0/0"}]
        if ipv6_available():
            ranges.append([{"subnet": "fd33::/64"}])
            routes.append({"dst": "::/0"})
        return {
            "type": "bridge",
            "bridge": f"pibr{self.suffix}",
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "routes": routes,
                "dataDir": str(self.folder / "ipam"),
            },
        }

    def write_conflist(self, version: str = "1.0.0", **extra: Any) -> Path:
        path = self.conf_dir / "10-meshnet.conflist"
        conflist = {"cniVersion": version, "name": "meshnet", **extra, "plugins": [self.bridge()]}
        path.write_text(json.dumps(conflist, indent=2))
        return path

    def conflist(self) -> dict[str, Any]:
        return json.loads((self.conf_dir / "10-meshnet.conflist").read_text())

    # The agent --------------------------------------------------------------------------------

    def start_agent(self, mesh: dict[str, Any] | None = None) -> subprocess.Popen:
        assert self.api is not None
        # As the DaemonSet mounts it: the ConfigMap as a directory the kubelet keeps (its
        # ..data swapped at once), the base, components/cni's layer, and the test's own.
        base = yaml.safe_load((ROOT / "deploy" / "base" / "mesh-config.yaml").read_text())
        self.mesh_volume.write(
            {
                "mesh.yaml": base["data"]["mesh.yaml"].encode(),
                "cni.yaml": b"interception: cni\n",
                "test.yaml": json.dumps(mesh or {}).encode(),
            }
        )
        self.agent_runs += 1
        log = (self.folder / f"agent-{self.agent_runs}.log").open("w")
        self.agent = subprocess.Popen(
            self.in_node(
                sys.executable, "-m", "webhook", "cni", "agent",
                "--cni-bin-dir", str(self.bin_dir),
                "--cni-conf-dir", str(self.conf_dir),
                "--relay", str(relay_binary()),
                "--socket", str(self.socket),
                "--log-file", str(self.log_file),
                "--config", str(self.mesh_volume.root),
                "--node-name", NODE_NAME,
                "--kube-api", self.api.url,
                "--interval", "0.2",
                "--iptables-backend", self.backend,
                "--http-host", "127.0.0.1",
                "--http-port", str(self.http_port),
            ),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        return self.agent

    def agent_log(self) -> str:
        return (self.folder / f"agent-{self.agent_runs}.log").read_text()

    def http(self, path: str) -> tuple[int, str]:
        """GET on the agent's HTTP port, from inside the node."""
        done = subprocess.run(
            self.in_node(
                "curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
                f"http://127.0.0.1:{self.http_port}{path}",
            ),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited:\n{self.agent_log()}")
            return self.http("/readyz")[0] == 200

        try:
            wait_for(ready, timeout, "the agent's /readyz")
        except TimeoutError:
            raise TimeoutError(f"{self.http('/readyz')}\n{self.agent_log()}") from None

    def kill_agent(self, sig: int = signal.SIGKILL) -> int:
        assert self.agent is not None
        pid = self.agent.pid
        stop(self.agent, sig)
        # `ip netns exec` execs the interpreter, so its PID is the agent's.
        return pid

    # Pods and the runtime ---------------------------------------------------------------------

    def sandbox(self, namespace: str, name: str, uid: str = "") -> Sandbox:
        box = Sandbox(
            namespace,
            name,
            uid,
            f"pi-pod-{self.suffix}-{len(self.sandboxes)}",
            f"c{secrets.token_hex(8)}",
        )
        self._ip("netns", "add", box.netns)
        self.sandboxes.append(box)
        self._ip("-n", box.netns, "link", "set", "lo", "up")  # the runtime's loopback plugin
        self._no_dad(box.netns)
        return box

    def plugin_env(self, command: str, box: Sandbox | None) -> dict[str, str]:
        env = {
            "PATH": SYSTEMD_PATH,
            "CNI_COMMAND": command,
            "CNI_PATH": f"{self.bin_dir}:{CNI_PLUGINS}",
        }
        if box is not None:
            env |= {
                "CNI_CONTAINERID": box.container_id,
                "CNI_NETNS": box.path,
                "CNI_IFNAME": "eth0",
                "CNI_ARGS": box.cni_args(),
            }
        return env

    def exec_plugin(
        self, plugin_type: str, command: str, box: Sandbox | None, stdin: str | bytes
    ) -> subprocess.CompletedProcess[bytes]:
        """One plugin binary run as the runtime runs it: a new process in the node."""
        local = self.bin_dir / plugin_type
        binary = local if local.exists() else CNI_PLUGINS / plugin_type
        return subprocess.run(
            self.in_node(str(binary)),
            input=stdin.encode() if isinstance(stdin, str) else stdin,
            env=self.plugin_env(command, box),
            capture_output=True,
            timeout=60,
            check=False,
        )

    def ours(
        self,
        command: str,
        box: Sandbox | None,
        prev: dict | None = None,
        version: str = "1.0.0",
        **extra: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """Our plugin alone, with the entry the agent put in the conflist."""
        entry = next(p for p in self.conflist()["plugins"] if p["type"] == "proxy-injector")
        config = {"cniVersion": version, "name": "meshnet", **entry, **extra}
        if prev is not None:
            config["prevResult"] = prev
        return self.exec_plugin("proxy-injector", command, box, json.dumps(config))

    def add(self, box: Sandbox) -> tuple[int, dict[str, Any]]:
        """ADD through the whole active conflist, as libcni runs it: (exit code, result)."""
        conflist = self.conflist()
        prev: dict[str, Any] | None = None
        for plugin in conflist["plugins"]:
            config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
            if prev is not None:
                config["prevResult"] = prev
            done = self.exec_plugin(plugin["type"], "ADD", box, json.dumps(config))
            answer = json.loads(done.stdout or b"{}")
            if done.returncode != 0:
                return done.returncode, answer
            prev = answer
        return 0, prev or {}

    def nat(self, box: Sandbox) -> str:
        done = subprocess.run(
            [IP, "netns", "exec", box.netns, f"iptables-{self.backend}-save", "-t", "nat"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return done.stdout

    def validate(self, box: Sandbox, pod: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """The pod's proxy-validate, run in its namespace without any capability."""
        container = next(c for c in pod["spec"]["initContainers"] if c["name"] == "proxy-validate")
        no_caps = ["--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
        return subprocess.run(
            [IP, "netns", "exec", box.netns, "setpriv", *no_caps, sys.executable, "-m", "webhook",
             *container["args"], "--timeout", "1"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def destroy(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.agent.wait(timeout=10)
        if self.api is not None:
            self.api.close()
        for name in [box.netns for box in self.sandboxes] + [self.netns]:
            pids = subprocess.run(
                [IP, "netns", "pids", name], capture_output=True, text=True, timeout=10, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=30, check=False)


def agent_answers(path: Path, request: bytes, timeout: float = 20) -> tuple[int, dict | None]:
    """Speak to the agent's socket directly (as anything root on the node could)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        assert conn.recv(1) == b"A"
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data[0], json.loads(data[1:]) if data[1:].strip() else None
