from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import stop
from tests.support import start_proxy_injector


@dataclass
class Webhook:
    url: str
    ca: Path
    client: httpx.Client
    process: subprocess.Popen[str]
    log: Path

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def mutate(self, review: dict) -> dict:
        response = self.client.post(self.url + "/mutate", json=review)
        assert response.status_code == 200, response.text
        return response.json()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(client: httpx.Client, url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"webhook exited with {process.returncode}")
        try:
            if client.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("webhook did not answer /healthz within 30 s")


@pytest.fixture(scope="session")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """`proxy-injector serve --self-signed`, run for real; its certificate is verified
    against the CA bundle it wrote, as the API server does with caBundle."""
    certs = tmp_path_factory.mktemp("certs")
    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    log_path = logs / "webhook.log"
    log = log_path.open("w")
    out = (logs / "stdout.txt").open("w")
    process = start_proxy_injector(
        "serve",
        "--self-signed",
        "--certs-dir",
        str(certs),
        "--port",
        str(port),
        stdout=out,
        stderr=log,
    )
    url = f"https://localhost:{port}"
    try:
        deadline = time.monotonic() + 30
        while not (certs / "ca.crt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        verify = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with httpx.Client(verify=verify, timeout=30) as client:
            wait_healthy(client, url, process)
            yield Webhook(url, certs / "ca.crt", client, process, log_path)
    finally:
        stop(process)
        log.close()
        out.close()
