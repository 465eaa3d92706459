"""serve --manage-certs: the Secret and caBundle, through the real kubernetes client, against
a fake API that answers conflicts as the real one does; replicas racing."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from cryptography import x509
from kubernetes import client

from certs.check import names_of, signed_by_any
from certs.kube import KubeCluster
from certs.manager import Target, ensure
from tests.conftest import free_port, wait_healthy
from tests.fake_kube import FakeKube
from tests.processes import stop
from tests.support import proxy_injector, start_proxy_injector

TARGET = Target("proxy-injector", "proxy-system", "proxy-injector-tls", "proxy-injector")
LATER = dt.timedelta(days=300)


def webhook_configuration() -> dict:
    entry = {
        "clientConfig": {
            "service": {"name": "proxy-injector", "namespace": "proxy-system", "path": "/mutate"}
        },
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "proxy-injector"},
        "webhooks": [{"name": "namespace.proxy.io", **entry}, {"name": "pod.proxy.io", **entry}],
    }


@pytest.fixture
def fake():
    api = FakeKube()
    api.webhooks["proxy-injector"] = webhook_configuration()
    yield api
    api.close()


def cluster(api: FakeKube) -> KubeCluster:
    configuration = client.Configuration()
    configuration.host = api.url
    return KubeCluster(client.ApiClient(configuration))


def bundles(api: FakeKube) -> list[bytes]:
    return [
        base64.b64decode(w["clientConfig"]["caBundle"])
        for w in api.webhooks["proxy-injector"]["webhooks"]
    ]


def stored(api: FakeKube) -> dict[str, bytes]:
    secret = api.secrets[("proxy-system", "proxy-injector-tls")]
    assert secret["type"] == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def writes(api: FakeKube) -> list[tuple[str, int]]:
    return [
        (method, code)
        for method, path, code in api.requests
        if method in ("POST", "PUT") and "secrets" in path
    ]


def test_a_missing_secret_is_created_and_its_ca_published(fake) -> None:
    data = ensure(cluster(fake), TARGET)
    assert data == stored(fake)
    assert bundles(fake) == [data["ca.crt"], data["ca.crt"]]
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    assert "proxy-injector.proxy-system.svc" in names_of(cert)
    assert signed_by_any(cert, x509.load_pem_x509_certificates(data["ca.crt"]))


def test_a_good_secret_is_used_as_it_is(fake) -> None:
    first = ensure(cluster(fake), TARGET)
    fake.requests.clear()
    assert ensure(cluster(fake), TARGET) == first
    assert writes(fake) == []


def test_renewal_keeps_the_previous_ca_in_the_bundle(fake) -> None:
    first = ensure(cluster(fake), TARGET)
    renewed = ensure(cluster(fake), TARGET, now=dt.datetime.now(dt.UTC) + LATER)
    assert renewed["tls.crt"] != first["tls.crt"]
    authorities = x509.load_pem_x509_certificates(renewed["ca.crt"])
    assert len(authorities) == 2
    assert authorities[1] == x509.load_pem_x509_certificate(first["ca.crt"])
    assert bundles(fake)[0] == renewed["ca.crt"]


@pytest.mark.parametrize(
    "data",
    [
        {"tls.crt": b"garbage", "tls.key": b"x", "ca.crt": b"y"},
        "other-service",
    ],
)
def test_an_invalid_or_foreign_secret_is_replaced(fake, data) -> None:
    if data == "other-service":
        data = ensure(
            cluster(fake), Target("other", "proxy-system", "proxy-injector-tls", "proxy-injector")
        )
    else:
        cluster(fake).create_secret("proxy-system", "proxy-injector-tls", data)
    result = ensure(cluster(fake), TARGET)
    assert result != data
    assert "proxy-injector.proxy-system.svc" in names_of(
        x509.load_pem_x509_certificate(result["tls.crt"])
    )


def race(api: FakeKube, now: dt.datetime | None = None) -> list[dict[str, bytes]]:
    results: list[dict[str, bytes]] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            results.append(ensure(cluster(api), TARGET, now=now))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    return results


def test_two_replicas_creating_at_once_end_up_with_one_certificate() -> None:
    api = FakeKube(racers=2)
    api.webhooks["proxy-injector"] = webhook_configuration()
    try:
        first, second = race(api)
        assert first == second == stored(api)
        assert sorted(writes(api)) == [("POST", 201), ("POST", 409)]
        assert bundles(api)[0] == first["ca.crt"]
    finally:
        api.close()


def test_two_replicas_renewing_at_once_end_up_with_one_certificate() -> None:
    api = FakeKube()
    api.webhooks["proxy-injector"] = webhook_configuration()
    try:
        ensure(cluster(api), TARGET)
        api.barrier, api.reads_held = threading.Barrier(2, timeout=10), 0
        api.requests.clear()
        first, second = race(api, now=dt.datetime.now(dt.UTC) + LATER)
        assert first == second == stored(api)
        assert sorted(writes(api)) == [("PUT", 200), ("PUT", 409)]
    finally:
        api.close()


def test_serve_manage_certs_is_trusted_through_the_published_ca_bundle(fake, tmp_path) -> None:
    port = free_port()
    process = start_proxy_injector(
        "serve",
        "--manage-certs",
        "--kube-api",
        fake.url,
        "--namespace",
        "proxy-system",
        "--port",
        str(port),
        "--certs-dir",
        str(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while "caBundle" not in fake.webhooks["proxy-injector"]["webhooks"][0]["clientConfig"]:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        context = ssl.create_default_context(cadata=bundles(fake)[0].decode())
        context.check_hostname = False  # the API server checks the Service name: below
        with httpx.Client(verify=context) as web:
            wait_healthy(web, f"https://127.0.0.1:{port}", process)
        served = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
        assert "proxy-injector.proxy-system.svc" in names_of(served)
        assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    finally:
        stop(process)


def test_serve_manage_certs_without_an_api_fails_clearly(tmp_path) -> None:
    result = proxy_injector(
        "serve",
        "--manage-certs",
        "--kube-api",
        "http://127.0.0.1:9",
        "--namespace",
        "proxy-system",
        "--certs-dir",
        str(tmp_path),
    )
    assert result.returncode != 0
    assert "--manage-certs:" in result.stderr
