"""The container image, built for real with buildah (no Docker engine needed) and run with
podman: non-root by default, serves the webhook, and programs iptables as proxy-init."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import netns
from tests.conftest import free_port
from tests.support import CORPUS, apply, load_case, review
from webhook import cni_install
from webhook.engine import inject
from webhook.engine.config import from_mapping

ROOT = Path(__file__).parent.parent
TAG = "localhost/proxy-injector:test"
PODMAN_RUN = [
    "podman",
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "run",
    "--rm",
    "--ulimit",
    "nofile=1024:20000",
    "--ulimit",
    "nproc=1024:1024",
]

missing = [
    tool for tool in ("buildah", "podman", "debootstrap", "runc") if shutil.which(tool) is None
]
pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="building images here needs root"),
]


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "hadolint"),
            "--config",
            str(ROOT / ".hadolint.yaml"),
            str(ROOT / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def image() -> str:
    have_base = (
        subprocess.run(
            ["podman", "image", "exists", "docker.io/library/debian:bookworm-slim"], check=False
        ).returncode
        == 0
    )
    env = {**os.environ, "BASE_FROM_DEBOOTSTRAP": "0" if have_base else "1"}
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-image"), TAG],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield TAG
    subprocess.run(["podman", "rmi", "-f", TAG], capture_output=True, check=False, timeout=120)


def run(image: str, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PODMAN_RUN, *options, image, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_image_runs_as_a_non_root_user(image) -> None:
    result = run(image, "-u", options=("--entrypoint", "id"))
    assert result.stdout.strip() == "10001"


def test_the_image_has_no_compilers(image) -> None:
    result = run(image, "-c", "command -v gcc cc || echo none", options=("--entrypoint", "sh"))
    assert result.stdout.strip() == "none"


def test_the_image_serves_the_webhook_over_https(image, tmp_path) -> None:
    tmp_path.chmod(0o777)
    port = free_port()
    server = subprocess.Popen(
        [
            *PODMAN_RUN,
            "--network",
            "host",
            "-v",
            f"{tmp_path}:/certs",
            image,
            "serve",
            "--self-signed",
            "--certs-dir",
            "/certs",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from tests.processes import wait_for

        wait_for(lambda: (tmp_path / "ca.crt").exists(), 60, "the image's CA bundle")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with httpx.Client(verify=context, timeout=10) as client:

            def healthy() -> bool:
                try:
                    return client.get(f"https://localhost:{port}/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, 60, "the image's webhook")
            answer = client.post(
                f"https://localhost:{port}/mutate",
                json=review(load_case(CORPUS / "01-web-single.yaml")["pod"]),
            )
        assert answer.status_code == 200
        assert answer.json()["response"]["patchType"] == "JSONPatch"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
def test_init_iptables_in_the_image_programs_a_pods_namespace(image) -> None:
    net = netns.Network()
    try:
        net.create()
        namespace = (
            "--network",
            f"ns:/var/run/netns/{net.pod}",
            "--user",
            "0",
            "--cap-drop",
            "ALL",
        )
        applied = run(
            image,
            "init-iptables",
            "--exclude-outbound-ports",
            "5432",
            options=(*namespace, "--cap-add", "NET_ADMIN,NET_RAW"),
        )
        assert applied.returncode == 0, applied.stderr
        saved = net.run(net.pod, "iptables-nft-save", "-t", "nat").stdout
        assert "-A PROXY_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in saved
        refused = run(image, "init-iptables", options=namespace)
        assert refused.returncode == 1
        assert "needs NET_ADMIN and NET_RAW" in refused.stderr
    finally:
        net.destroy()


def test_podman_runs_the_cni_plugin_and_proxy_validate_passes_only_for_a_meshed_pod(
    image, tmp_path
) -> None:
    """A real runtime invokes the plugin: podman (its CNI backend, in a network namespace
    standing for the node) runs Debian's bridge and host-local, then our plugin through the
    shim `cni install` writes. The image's proxy-validate passes in a container the fake API
    knows as a pod meshed in cni mode, and fails in one it knows as not meshed."""

    def pod(name: str, meshed: bool) -> dict:
        spec = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]},
        }
        result = inject(spec, "shop", from_mapping({"interception": "cni"}))
        return apply(spec, list(result.patch)) if meshed else spec

    node = f"pi-node-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", node], check=True, timeout=30)
    api = None
    try:
        subprocess.run(["ip", "-n", node, "link", "set", "lo", "up"], check=True, timeout=30)
        pods = tmp_path / "pods.json"
        pods.write_text(json.dumps([pod("web-0", True), pod("legacy-0", False)]))
        # The API where the plugin runs: in the node's namespace, as on a node.
        api = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                node,
                sys.executable,
                "-c",
                "import json, sys, time\n"
                "from tests.fake_kube import FakeKube\n"
                "api = FakeKube()\n"
                "api.pods['shop'] = json.load(open(sys.argv[1]))\n"
                "print(api.url, flush=True)\n"
                "time.sleep(300)\n",
                str(pods),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        url = api.stdout.readline().strip()
        bin_dir, conf_dir, networks = tmp_path / "bin", tmp_path / "net.d", tmp_path / "networks"
        for folder in (bin_dir, conf_dir, networks):
            folder.mkdir()
        token = tmp_path / "token"
        token.write_text("t")
        install = cni_install.Installation(bin_dir, conf_dir, os.getpid(), url, token, None)
        cni_install.write_shim(install)
        cni_install.write_kubeconfig(install)
        ours = {"type": "proxy-injector", "kubeconfig": str(install.kubeconfig)}
        ours["args"] = {"cni": {"K8S_POD_NAMESPACE": "shop"}}  # podman sets only the name
        bridge = {
            "type": "bridge",
            "bridge": f"pibr{os.getpid() % 100000}",
            "isGateway": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.234.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(tmp_path / "ipam"),
            },
        }
        (networks / "meshnet.conflist").write_text(
            json.dumps({"cniVersion": "1.0.0", "name": "meshnet", "plugins": [bridge, ours]})
        )
        conf = tmp_path / "containers.conf"
        conf.write_text(
            '[network]\nnetwork_backend = "cni"\n'
            f'cni_plugin_dirs = ["{bin_dir}", "/usr/lib/cni"]\n'
            f'network_config_dir = "{networks}"\n'
        )
        path = f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
        env = {**os.environ, "CONTAINERS_CONF": str(conf), "PATH": path}

        def validate(name: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{node}",
                    *PODMAN_RUN,
                    "--network",
                    "meshnet",
                    "--name",
                    name,
                    "--user",
                    "1338",
                    image,
                    "validate-interception",
                    "--connect",
                    "192.0.2.1:80",
                    "--timeout",
                    "2",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        meshed = validate("web-0")
        assert meshed.returncode == 0, meshed.stdout + meshed.stderr
        assert meshed.stdout.startswith("redirected: 192.0.2.1 port 80 reached port 15001")
        plain = validate("legacy-0")
        assert plain.returncode == 1
        assert "this pod's traffic is not redirected to the proxy" in plain.stderr
    finally:
        if api:
            api.kill()
            api.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", node], capture_output=True, timeout=30)
