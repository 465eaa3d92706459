"""The container image, built for real with buildah (no Docker engine needed) and run with
podman: non-root by default, serves the webhook, and programs iptables as proxy-init."""

from __future__ import annotations

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
