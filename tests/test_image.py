"""The container image, built for real with buildah (no Docker engine needed) and run with
podman: non-root by default, serves the webhook, and programs iptables as proxy-init."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import netns
from tests.conftest import free_port
from tests.processes import wait_for
from tests.support import CORPUS, load_case, review

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


def test_podman_runs_the_relay_and_the_images_agent_serves_it(image, tmp_path) -> None:
    """A real runtime and the real image, as a node runs them: the image's agent runs in a
    privileged container on the node's network (hostNetwork), copies the image's static
    relay into the node's bin dir and inserts it into the node's conflist; podman (its CNI
    backend, in a network namespace standing for the node) runs Debian's bridge and
    host-local, then the relay, which asks the agent. The image's proxy-validate passes in a
    container the fake API knows as a pod meshed in cni mode, and exits 95 in one it knows as
    not meshed."""
    from tests.cni_node import pod_spec

    node = f"pi-node-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", node], check=True, timeout=30)
    api = agent = None
    agent_name = f"proxy-injector-cni-{os.getpid()}"
    try:
        subprocess.run(["ip", "-n", node, "link", "set", "lo", "up"], check=True, timeout=30)
        pods = tmp_path / "pods.json"
        pods.write_text(
            json.dumps(
                [pod_spec("shop", "web-0", meshed=True), pod_spec("shop", "legacy-0", meshed=False)]
            )
        )
        # The API where the agent runs: in the node's namespace, as on a node.
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
                "for pod in json.load(open(sys.argv[1])):\n"
                "    api.put_pod(pod)\n"
                "print(api.url, flush=True)\n"
                "time.sleep(300)\n",
                str(pods),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        url = api.stdout.readline().strip()
        bin_dir, networks = tmp_path / "bin", tmp_path / "networks"
        sockets, logs = tmp_path / "run-proxy-injector", tmp_path / "var-log"
        for folder in (bin_dir, networks, sockets, logs):
            folder.mkdir()
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
        conflist = networks / "meshnet.conflist"
        conflist.write_text(
            json.dumps({"cniVersion": "1.0.0", "name": "meshnet", "plugins": [bridge]})
        )
        http_port = str(free_port())
        mounts = [f"{d}:{d}" for d in (bin_dir, networks, sockets, logs)] + [
            "/run/netns:/run/netns:rslave"
        ]
        agent = subprocess.Popen(
            [
                *PODMAN_RUN,
                "--name",
                agent_name,
                "--network",
                f"ns:/var/run/netns/{node}",
                "--privileged",
                "--user",
                "0",
                *[flag for mount in mounts for flag in ("-v", mount)],
                image,
                "cni",
                "agent",
                "--cni-bin-dir",
                str(bin_dir),
                "--cni-conf-dir",
                str(networks),
                "--socket",
                str(sockets / "cni.sock"),
                "--log-file",
                str(logs / "proxy-injector-cni.log"),
                "--node-name",
                "node-1",
                "--kube-api",
                url,
                "--http-host",
                "127.0.0.1",
                "--http-port",
                http_port,
            ],
            stdout=(tmp_path / "agent.log").open("w"),
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            probe = ["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{http_port}/readyz"]
            done = subprocess.run(["ip", "netns", "exec", node, *probe], timeout=10, check=False)
            return done.returncode == 0

        wait_for(ready, 120, "the image's agent ready")
        installed = json.loads(conflist.read_text())
        assert [p["type"] for p in installed["plugins"]] == ["bridge", "proxy-injector"]
        # podman sets only K8S_POD_NAME: the namespace goes in our entry's args, which the
        # agent keeps when it rewrites the entry.
        installed["plugins"][-1]["args"] = {"cni": {"K8S_POD_NAMESPACE": "shop"}}
        conflist.write_text(json.dumps(installed))
        time.sleep(1.5)  # a few of the agent's install rounds
        assert json.loads(conflist.read_text()) == installed
        conf = tmp_path / "containers.conf"
        conf.write_text(
            '[network]\nnetwork_backend = "cni"\n'
            f'cni_plugin_dirs = ["{bin_dir}", "/usr/lib/cni"]\n'
            f'network_config_dir = "{networks}"\n'
        )
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
        assert plain.returncode == 95
        assert "this pod's traffic is not redirected to the proxy" in plain.stderr
        assert not (logs / "proxy-injector-cni.log").exists()  # the relay never failed open
    finally:
        subprocess.run(["podman", "rm", "-f", agent_name], capture_output=True, timeout=60)
        for process in (agent, api):
            if process:
                process.kill()
                process.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", node], capture_output=True, timeout=30)
