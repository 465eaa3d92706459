"""A renewed certificate goes into service without a restart or a dropped request, the way
a mounted Secret is renewed: by swapping the symlink in front of the files."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from certs.authority import create_ca, issue_serving, write_private
from tests.conftest import free_port, wait_healthy
from tests.processes import stop
from tests.support import CORPUS, load_case, review, start_proxy_injector

NAMES = ["localhost", "127.0.0.1"]


def publish(folder: Path, generation: str, cert: bytes, key: bytes) -> None:
    """Write a new version and swap ``..data`` to it atomically, as the kubelet does."""
    target = folder / generation
    target.mkdir()
    (target / "tls.crt").write_bytes(cert)
    write_private(target / "tls.key", key)
    link = folder / f"..data_{generation}"
    link.symlink_to(generation)
    os.replace(link, folder / "..data")


def served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


@pytest.fixture
def secret_mount(tmp_path):
    ca = create_ca()
    folder = tmp_path / "secret"
    folder.mkdir()
    first = issue_serving(ca, NAMES)
    publish(folder, "v1", first.cert_pem(), first.key_pem())
    for name in ("tls.crt", "tls.key"):
        (folder / name).symlink_to(f"..data/{name}")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    return ca, folder, tmp_path / "ca.crt", first


@pytest.fixture
def server(secret_mount, tmp_path):
    _, folder, ca_file, _ = secret_mount
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = start_proxy_injector(
        "serve",
        "--cert",
        str(folder / "tls.crt"),
        "--key",
        str(folder / "tls.key"),
        "--port",
        str(port),
        "--cert-reload-seconds",
        "0.2",
        stdout=log,
        stderr=log,
    )
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file))) as client:
            wait_healthy(client, f"https://localhost:{port}", process)
        yield port, tmp_path / "serve.log"
    finally:
        stop(process)
        log.close()


def test_rotation_under_load_drops_nothing_and_serves_the_new_cert(secret_mount, server) -> None:
    ca, folder, ca_file, first = secret_mount
    port, _ = server
    body = json.dumps(review(load_case(CORPUS / "01-web-single.yaml")["pod"])).encode()
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            # A new connection each time: every request is a new TLS handshake.
            with httpx.Client(verify=context, timeout=10) as client:
                try:
                    answer = client.post(f"https://localhost:{port}/mutate", content=body)
                    if answer.status_code != 200:
                        failures.append(f"status {answer.status_code}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
            count[0] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1)
        assert served_serial(port, ca_file) == first.cert.serial_number
        second = issue_serving(ca, NAMES)
        publish(folder, "v2", second.cert_pem(), second.key_pem())
        deadline = time.monotonic() + 10
        while served_serial(port, ca_file) != second.cert.serial_number:
            assert time.monotonic() < deadline, "the renewed certificate was not picked up"
            time.sleep(0.1)
        time.sleep(1)
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=40)
    assert failures == []
    assert count[0] > 20


def test_a_broken_renewal_keeps_the_current_certificate_and_says_why(secret_mount, server) -> None:
    _, folder, ca_file, first = secret_mount
    port, log = server
    other = issue_serving(create_ca(), NAMES)
    publish(folder, "v2", first.cert_pem(), other.key_pem())  # a key that does not match
    deadline = time.monotonic() + 10
    while "new certificate not loaded" not in log.read_text():
        assert time.monotonic() < deadline, "no log line about the broken certificate"
        time.sleep(0.1)
    assert served_serial(port, ca_file) == first.cert.serial_number
    line = next(
        json.loads(x) for x in log.read_text().splitlines() if "new certificate not loaded" in x
    )
    assert line["level"] == "warning" and line["cert"].endswith("tls.crt") and line["error"]
