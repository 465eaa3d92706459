"""Two meshed pods in network namespaces, for the mTLS tests: the client pod ``web`` calls
the server pod ``orders`` (namespace shop) through its sidecar; the server's app is nginx,
on its Unix socket (8080) and on TCP (8081 HTTP, 9000 a TCP port); ``plain.shop:7070`` is a
server that is not meshed. Each pod has its init container's iptables rules, Envoy (UID
1337) running the generated bootstrap, and an identity volume laid out as the kubelet
writes a projected volume."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests import netns
from tests.identity import KeyPair, ProjectedVolume, leaf, spiffe
from tests.meshed_pod import MeshedPod
from tests.processes import Nginx, shared_folder, wait_for
from tests.support import apply
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping

MESH = from_mapping({"mtls": {"identity": "pod-certificate"}})
APP_UID = 4242
SERVER = netns.POD_V4
UPSTREAMS = "orders.shop:8080,orders.shop:8081,orders.shop:9000,plain.shop:7070"


def server_spec(annotations: dict[str, str] | None = None, mesh: MeshConfig = MESH) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        # plain.shop:7070 shares the server's address but stands for a pod that is not
        # meshed: its port is left out of the server pod's interception.
        "metadata": {
            "name": "orders-0",
            "labels": {"app": "orders"},
            "annotations": {"proxy.io/exclude-inbound-ports": "7070", **(annotations or {})},
        },
        "spec": {
            "serviceAccountName": "orders",
            "containers": [
                {
                    "name": "orders",
                    "image": "nginx:1.27",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "http-alt", "containerPort": 8081},
                        {"name": "stream", "containerPort": 9000},
                    ],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8081}},
                    "livenessProbe": {"tcpSocket": {"port": 9000}},
                    "startupProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                }
            ],
        },
    }
    return _injected(pod, mesh)


def client_spec(annotations: dict[str, str] | None = None, mesh: MeshConfig = MESH) -> dict:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        # The collector (COLLECTOR) lives at the client namespace's second address: its
        # port is left out of the client pod's interception, as it stands for another host.
        "metadata": {
            "name": "web-0",
            "labels": {"app.kubernetes.io/name": "web"},
            "annotations": {
                "proxy.io/upstreams": UPSTREAMS,
                "proxy.io/exclude-inbound-ports": "4317",
                **(annotations or {}),
            },
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "web", "image": "curl", "ports": []}],
        },
    }
    return _injected(pod, mesh)


def _injected(pod: dict, mesh: MeshConfig = MESH) -> dict:
    result = inject(pod, "shop", mesh)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


class Mesh:
    def __init__(
        self, net: netns.Network, root: Path, ca: KeyPair, mesh: MeshConfig = MESH
    ) -> None:
        self.net, self.root, self.ca = net, root, ca
        server_folder, client_folder = root / "orders", root / "web"
        for folder in (server_folder, client_folder):
            folder.mkdir()
            folder.chmod(0o755)
        self.server = MeshedPod(net, server_folder, "nft", server_spec(mesh=mesh))
        self.client = MeshedPod(
            net, client_folder, "nft", client_spec(mesh=mesh), namespace=net.client
        )
        self.server_volume = ProjectedVolume(self.server.identity_root / "proxy-identity")
        self.client_volume = ProjectedVolume(self.client.identity_root / "proxy-identity")
        self.server_leaf = leaf(ca, spiffe("shop", "orders"))
        self.client_leaf = leaf(ca, spiffe("shop", "web"))
        self.server_volume.pod_certificate(self.server_leaf, ca)
        self.client_volume.pod_certificate(self.client_leaf, ca)

    def restart(self, pod: MeshedPod, spec: dict) -> None:
        if pod.envoy is not None:
            pod.envoy.kill()
            pod.envoy.wait(timeout=10)
        pod.spec = spec
        pod.start_envoy()

    def call(self, url: str) -> tuple[int, str]:
        """A GET from the client pod's app, which its sidecar intercepts."""
        return self.net.curl(self.net.client, url, as_uid=APP_UID)

    def plaintext(self, url: str) -> tuple[int, str]:
        """A GET that bypasses the client's sidecar (the proxy's UID is never redirected)."""
        return self.net.curl(self.net.client, url, as_uid=1337)

    def peer(
        self,
        pair: KeyPair,
        *cas: KeyPair,
        port: int = 8080,
        path: str = "/",
        resume_after: float | None = None,
    ) -> str:
        """A request from a peer speaking our mTLS with certificate ``pair`` (and with
        ``resume_after``, a second one that much later, resuming the TLS session)."""
        folder = self.root / f"peer-{time.monotonic_ns()}"
        folder.mkdir()
        (folder / "cert.pem").write_bytes(pair.cert_pem())
        (folder / "key.pem").write_bytes(pair.key_pem())
        (folder / "ca.pem").write_bytes(b"".join(c.cert_pem() for c in (cas or (self.ca,))))
        command = [sys.executable, "-m", "tests.apps.mtls_client", SERVER, str(port)]
        command += [str(folder / n) for n in ("cert.pem", "key.pem", "ca.pem")] + [path]
        if resume_after is not None:
            command.append(str(resume_after))
        done = self.net.run(self.net.client, *command, timeout=30)
        return done.stdout + done.stderr

    def readiness(self, pod: MeshedPod, path: str) -> tuple[int, str]:
        return self.net.curl(pod.namespace, f"http://127.0.0.1:15021{path}")


COLLECTOR = "otel-collector.observability"
"""A tracing collector's name, at the client namespace's second address (both pods reach it)."""


def hosts_of(net: netns.Network) -> Iterator[None]:
    """The pods' DNS: ``ip netns exec`` mounts /etc/netns/<ns>/hosts over /etc/hosts."""
    folders = [Path("/etc/netns") / name for name in (net.client, net.pod)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text(
            f"127.0.0.1 localhost\n{SERVER} orders.shop plain.shop\n"
            f"{netns.CLIENT_V4_OTHER} {COLLECTOR}\n"
        )
    try:
        yield
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def running_mesh(
    ca: KeyPair, mesh: MeshConfig = MESH, before: Callable[[Mesh], None] = lambda m: None
) -> Iterator[Mesh]:
    """Both pods serving under ``mesh``, their certificates from ``ca``; ``before`` runs
    once the namespaces exist, before the sidecars start."""
    if shutil.which("iptables-nft-restore") is None:
        raise AssertionError("iptables-nft is missing (scripts/test installs Debian's iptables)")
    net = netns.Network().create()
    hosts = hosts_of(net)
    next(hosts)
    nginx = None
    try:
        root = shared_folder()
        the_mesh = Mesh(net, root, ca, mesh)
        before(the_mesh)
        for pod in (the_mesh.server, the_mesh.client):
            applied = pod.run_init()
            assert applied.returncode == 0, applied.stderr
        nginx = Nginx(
            the_mesh.server.folder,
            sockets=[str(the_mesh.server.folder / "orders-8080.sock")],
            tcp_ports=[8081, 9000],
        )
        nginx.command_prefix = net.exec(net.pod)
        nginx.start()
        plain = Nginx(root / "orders", tcp_ports=[7070], tcp_address="0.0.0.0")
        plain.folder = root / "plain"
        plain.folder.mkdir()
        plain.folder.chmod(0o755)
        plain.command_prefix = net.exec(net.pod)
        plain.start()
        net.processes.append(plain.process)
        net.processes.append(nginx.process)
        the_mesh.server.start_envoy()
        the_mesh.client.start_envoy()
        wait_for(
            lambda: the_mesh.call("http://orders.shop:8080/")[0] == 200, 20, "a call over mTLS"
        )
        yield the_mesh
    finally:
        try:
            hosts.close()
        finally:
            net.destroy()


def wrk(mesh: Mesh, seconds: int) -> subprocess.Popen[str]:
    command = ["wrk", "-t1", "-c8", f"-d{seconds}s", "--timeout", "5s", "http://orders.shop:8080/"]
    ids = ["setpriv", "--reuid", str(APP_UID), "--regid", str(APP_UID), "--clear-groups"]
    return subprocess.Popen(
        mesh.net.exec(mesh.net.client, *ids, *command), stdout=subprocess.PIPE, text=True
    )


def serial(pod: MeshedPod) -> str:
    certs = pod.admin("/certs")[1]
    return re.search(r'"cert_chain": \[\s*\{[^}]*?"serial_number": "([0-9a-f]+)"', certs)[1]
