"""`proxy-injector signer` as a process against the fake API, for tests and benchmarks:
started with a mesh config of identity pod-certificate, a short Lease, and --create-ca."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.fake_kube import FakeKube
from tests.processes import free_port, wait_for

NAMESPACE = "proxy-system"


class SignerProcess:
    def __init__(
        self, fake: FakeKube, folder: Path, name: str, *extra: str, prefix: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        config = folder / "mesh.yaml"
        if not config.exists():
            config.write_text(yaml.safe_dump({"mtls": {"identity": "pod-certificate"}}))
        self.log = (folder / f"{name}.log").open("w")
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "webhook",
                "signer",
                "--kube-api",
                fake.url,
                "--namespace",
                NAMESPACE,
                "--config",
                str(config),
                "--identity",
                name,
                "--lease-seconds",
                "2",
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(self.port),
                "--create-ca",
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def leading(self) -> bool:
        return "proxy_signer_leader 1.0" in self.get("/metrics")[1]


class Signers:
    """Signer processes of one test, all stopped at its end."""

    def __init__(self, fake: FakeKube, folder: Path) -> None:
        self.fake, self.folder = fake, folder
        self.processes: list[SignerProcess] = []

    def start(self, name: str = "signer-a", *extra: str) -> SignerProcess:
        process = SignerProcess(self.fake, self.folder, name, *extra)
        self.processes.append(process)
        return process


def started(signers: Signers, name: str = "signer-a") -> SignerProcess:
    process = signers.start(name)
    wait_for(lambda: process.get("/readyz")[0] == 200 and process.leading(), 20, f"{name} leading")
    return process


def rotate_ca(fake: FakeKube, *flags: str) -> subprocess.CompletedProcess[str]:
    """``proxy-injector signer rotate-ca`` against the fake API."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook",
            "signer",
            "rotate-ca",
            "--kube-api",
            fake.url,
            "--namespace",
            NAMESPACE,
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
