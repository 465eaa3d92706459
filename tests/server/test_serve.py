"""`proxy-injector serve`: TLS as the API server sees it, and its start-up errors."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import patch_of, proxy_injector

ROOT = Path(__file__).resolve().parents[2]


def handshake(webhook, context: ssl.SSLContext, host: str = "localhost") -> str:
    port = int(webhook.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.version() or ""


def client_context(webhook, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(webhook.ca))
    if version:
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_newer_are_served(webhook, version) -> None:
    assert handshake(webhook, client_context(webhook, version)) == version.name.replace(
        "v1_", "v1."
    )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(webhook) -> None:
    context = client_context(webhook, ssl.TLSVersion.TLSv1_1)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        handshake(webhook, context)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_certificate_verifies_against_the_printed_ca_bundle(webhook, host) -> None:
    assert handshake(webhook, client_context(webhook), host)
    stdout = (webhook.log.parent / "stdout.txt").read_text()
    assert f"CA bundle: {webhook.ca}" in stdout


def test_certificate_does_not_verify_without_the_ca_bundle(webhook) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(webhook, ssl.create_default_context())


def test_certificate_is_not_valid_for_other_names(webhook) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(webhook, client_context(webhook), "proxy-injector.example")


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return proxy_injector("serve", *args)


def test_serve_without_certificates_says_what_to_give() -> None:
    result = serve()
    assert result.returncode != 0
    assert "give --cert and --key, or --self-signed" in result.stderr


def test_serve_with_a_bad_mesh_config_names_the_field_and_value(tmp_path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("resources:\n  cpuLimit: two\nlogLevel: loud\n")
    result = serve("--self-signed", "--certs-dir", str(tmp_path), "--config", str(config))
    assert result.returncode == 2
    assert 'resources.cpuLimit: "two" is not valid (not a Kubernetes quantity)' in result.stderr
    assert 'logLevel: "loud" is not valid' in result.stderr


def test_serve_with_an_unreadable_key_fails_clearly(tmp_path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    result = serve("--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key"))
    assert result.returncode == 2
    assert "cannot load certificate" in result.stderr


def test_self_signed_key_is_private(webhook) -> None:
    assert (webhook.ca.parent / "tls.key").stat().st_mode & 0o777 == 0o600


def test_readme_starts_with_the_serve_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert blocks[0].strip().endswith("proxy-injector serve --self-signed")
    assert blocks[1].strip() == "bash scripts/test"
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_readme_example_review_gets_a_patch(webhook) -> None:
    example = json.loads((ROOT / "examples" / "admission-review.json").read_text())
    answer = webhook.mutate(example)
    assert answer["response"]["uid"] == example["request"]["uid"]
    assert patch_of(answer)


def test_the_installed_package_ships_every_module(tmp_path) -> None:
    """README's first command installs a wheel, not the checkout: every subpackage must be
    in it (a missing webhook.engine.bootstrap once broke `serve` only when installed)."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    import zipfile

    (wheel,) = wheel_dir.glob("proxy_injector-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    expected = {
        str(path.relative_to(ROOT))
        for package in ("webhook", "certs")
        for path in (ROOT / package).rglob("*.py")
    }
    assert expected <= shipped, sorted(expected - shipped)
