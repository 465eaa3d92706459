"""``proxy-injector cni`` driven as a container runtime drives it. A network namespace
stands for the node and another for the pod; Debian's containernetworking-plugins run for
real (``bridge`` with ``host-local`` IPAM, inside the node's namespace) and our plugin is
chained after them with their result as ``prevResult``. The pod is looked up in the fake
Kubernetes API; interception is then proven with Envoy running the pod's generated
bootstrap and a client on the node, for iptables-nft and iptables-legacy, IPv4 and IPv6."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns
from tests.fake_kube import FakeKube
from tests.meshed_pod import MeshedPod
from tests.processes import Nginx, shared_folder
from tests.support import apply
from webhook.engine import Outcome, inject
from webhook.engine.config import from_mapping

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

CNI_BIN = Path("/usr/lib/cni")
NAMESPACE = "shop"
CNI_MODE = from_mapping({"interception": "cni"})
PLUGIN = [sys.executable, "-m", "webhook", "cni"]


def web_pod(name: str, meshed: bool) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
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
    if not meshed:
        return pod
    result = inject(pod, NAMESPACE, CNI_MODE)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


class Node:
    """A node's network namespace with a bridge, and pods attached by the real plugins."""

    def __init__(self, folder: Path, api: FakeKube, backend: str) -> None:
        self.net = netns.Network()
        self.folder, self.api, self.backend = folder, api, backend
        self.bridge = f"pibr{self.net.suffix}"
        self.kubeconfig = folder / "kubeconfig"
        server = {"server": api.url}
        self.kubeconfig.write_text(
            json.dumps({"clusters": [{"cluster": server}], "users": [{"user": {"token": "t"}}]})
        )
        for namespace in (self.net.client, self.net.pod):
            subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=30)
            subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
            # Addresses the bridge plugin adds are usable at once, not after DAD's seconds.
            for conf in ("all", "default"):
                self.net.run(namespace, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")

    @property
    def pod_netns(self) -> str:
        return f"/var/run/netns/{self.net.pod}"

    def env(self, command: str, pod: str) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"c{self.net.suffix}",
            "CNI_NETNS": self.pod_netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_BIN),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod}",
        }

    def bridge_config(self) -> dict:
        ranges = [[{"subnet": "10.232.0.0/24"}]]
        routes = [{"dst": "0.0.0.0/0"}]
        if netns.ipv6_available():
            ranges.append([{"subnet": "fd32::/64"}])
            routes.append({"dst": "::/0"})
        return {
            "cniVersion": "1.0.0",
            "name": "meshnet",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "routes": routes,
                "dataDir": str(self.folder / "ipam"),
            },
        }

    def attach(self, pod: str) -> dict:
        """The cluster's own plugin, as the runtime runs it (in the node's namespace)."""
        done = subprocess.run(
            self.net.exec(self.net.client, str(CNI_BIN / "bridge")),
            input=json.dumps(self.bridge_config()),
            env=self.env("ADD", pod),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def ours(
        self, command: str, pod: str, prev: dict | None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = {
            "cniVersion": "1.0.0",
            "name": "meshnet",
            "type": "proxy-injector",
            "kubeconfig": str(kubeconfig or self.kubeconfig),
            "iptablesBackend": self.backend,
        }
        if prev is not None:
            config["prevResult"] = prev
        return subprocess.run(
            PLUGIN,
            input=json.dumps(config),
            env=self.env(command, pod),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def validate(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``proxy-injector`` in the pod without any capability, as proxy-validate runs.
        Its UID stays root here, since a fresh clone may sit where only root can read the
        code; `tests/test_image.py` runs the image's proxy-validate as UID 1338 itself."""
        no_caps = ["--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
        return self.net.run(self.net.pod, "setpriv", *no_caps, *PLUGIN[:-1], *args)

    def routes(self) -> str:
        """For a failure's message: both ends' addresses."""
        found = [
            self.net.run(ns, "ip", "-br", "addr").stdout for ns in (self.net.client, self.net.pod)
        ]
        return "\n".join(found)

    def nat(self) -> str:
        return self.net.run(self.net.pod, f"iptables-{self.backend}-save", "-t", "nat").stdout

    def destroy(self) -> None:
        self.net.destroy()


def pod_address(result: dict, version: int) -> str:
    wanted = ":" if version == 6 else "."
    found = [ip["address"].split("/")[0] for ip in result["ips"] if wanted in ip["address"]]
    assert found, result
    return found[0]


@pytest.fixture(params=["nft", "legacy"])
def node(request, tmp_path):
    backend = request.param
    for tool in (f"iptables-{backend}-restore", str(CNI_BIN / "bridge")):
        if shutil.which(tool) is None and not Path(tool).exists():
            pytest.fail(f"{tool} is missing (scripts/test installs iptables, podman's CNI plugins)")
    api = FakeKube()
    the_node = Node(tmp_path, api, backend)
    try:
        yield the_node
    finally:
        the_node.destroy()
        api.close()


def test_a_meshed_pod_gets_its_rules_and_its_traffic_goes_through_envoy(node) -> None:
    spec = web_pod("web-0", meshed=True)
    node.api.pods[NAMESPACE] = [spec]
    previous = node.attach("web-0")
    added = node.ours("ADD", "web-0", previous)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout) == previous  # prevResult passes through unchanged
    assert ":PROXY_INBOUND" in node.nat() and "-A OUTPUT -p tcp -j PROXY_OUTPUT" in node.nat()
    # proxy-validate, unprivileged, sees the redirect in place before anything starts.
    validate = next(c for c in spec["spec"]["initContainers"] if c["name"] == "proxy-validate")
    checked = node.validate(*validate["args"])
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("redirected: 192.0.2.1 port 80 reached port 15001")

    folder = shared_folder()
    nginx = Nginx(folder, sockets=[str(folder / "web-8080.sock")])
    nginx.command_prefix = node.net.exec(node.net.pod)
    try:
        nginx.start()
        meshed = MeshedPod(node.net, folder, node.backend, spec)
        meshed.start_envoy()
        for version in (4, 6) if netns.ipv6_available() else (4,):
            address = pod_address(previous, version)
            host = f"[{address}]" if version == 6 else address
            before = meshed.stat("http.inbound_8080.downstream_rq_total")
            answer = node.net.curl(node.net.client, f"http://{host}:8080/")
            assert answer == (200, "hello from nginx web-8080.sock"), (host, node.routes())
            assert meshed.stat("http.inbound_8080.downstream_rq_total") == before + 1
    finally:
        nginx.stop()
        shutil.rmtree(folder, ignore_errors=True)

    again = node.ours("ADD", "web-0", previous)
    assert again.returncode == 0, again.stdout
    assert node.nat().count("-A OUTPUT -p tcp -j PROXY_OUTPUT") == 1
    assert node.ours("CHECK", "web-0", previous).returncode == 0
    deleted = node.ours("DEL", "web-0", None)
    assert (deleted.returncode, deleted.stdout) == (0, "")


def test_a_pod_that_is_not_meshed_is_left_alone_and_fails_proxy_validate(node) -> None:
    node.api.pods[NAMESPACE] = [web_pod("legacy-0", meshed=False)]
    previous = node.attach("legacy-0")
    added = node.ours("ADD", "legacy-0", previous)
    assert (added.returncode, json.loads(added.stdout)) == (0, previous)
    assert "PROXY" not in node.nat()
    checked = node.validate("validate-interception", "--connect", "192.0.2.1:80", "--timeout", "1")
    assert checked.returncode == 1
    assert "this pod's traffic is not redirected to the proxy" in checked.stderr


def test_an_unreachable_api_is_a_cni_error_the_runtime_retries(node) -> None:
    previous = node.attach("web-0")
    closed = node.folder / "closed-kubeconfig"
    config = {"clusters": [{"cluster": {"server": "http://127.0.0.1:9"}}], "users": [{"user": {}}]}
    closed.write_text(json.dumps(config))
    failed = node.ours("ADD", "web-0", previous, kubeconfig=closed)
    assert failed.returncode == 1
    error = json.loads(failed.stdout)
    assert (
        error["code"] == 11 and error["msg"] == "cannot read pod shop/web-0 from http://127.0.0.1:9"
    )
    missing = node.ours("ADD", "nobody-0", previous)
    assert missing.returncode == 1
    assert (
        json.loads(missing.stdout)["msg"] == "the Kubernetes API answered 404 for pod shop/nobody-0"
    )
    assert "PROXY" not in node.nat()


def test_version_names_the_spec_versions() -> None:
    done = subprocess.run(
        PLUGIN, env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, timeout=30
    )
    assert json.loads(done.stdout) == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"],
    }
