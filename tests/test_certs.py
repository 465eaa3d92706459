"""`proxy-injector certs create` and `certs check`, on real certificates."""

from __future__ import annotations

import datetime as dt
import subprocess

from cryptography import x509

from certs.authority import create_ca, issue_serving
from certs.check import check
from tests.support import proxy_injector


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return proxy_injector("certs", *args)


def test_create_makes_an_ecdsa_ca_and_a_serving_cert_for_the_service(tmp_path) -> None:
    result = cli(
        "create",
        "--service",
        "proxy-injector",
        "--namespace",
        "proxy-system",
        "--out",
        str(tmp_path),
        "--days",
        "90",
        "--cluster-domain",
        "corp.local",
    )
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "proxy-injector",
        "proxy-injector.proxy-system",
        "proxy-injector.proxy-system.svc",
        "proxy-injector.proxy-system.svc.corp.local",
    ]
    assert cert.public_key().curve.name == "secp256r1"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 90
    for key in ("tls.key", "ca.key"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600
    # What the API server does with caBundle: verify the chain and the Service name.
    assert (
        check(tmp_path / "tls.crt", tmp_path / "ca.crt", "proxy-injector.proxy-system.svc").problems
        == ()
    )


def test_create_names_bad_arguments(tmp_path) -> None:
    result = cli(
        "create",
        "--service",
        "Proxy_Injector",
        "--namespace",
        "ok",
        "--out",
        str(tmp_path),
        "--days",
        "0",
    )
    assert result.returncode == 2
    assert "--service: 'Proxy_Injector' is not a DNS name" in result.stderr
    assert "--days: 0 is not 1 to 3650" in result.stderr


def test_check_passes_a_good_certificate_and_prints_what_it_is(tmp_path) -> None:
    cli("create", "--service", "web", "--namespace", "ns", "--out", str(tmp_path))
    result = cli("check", "--cert", str(tmp_path / "tls.crt"), "--ca", str(tmp_path / "ca.crt"))
    assert result.returncode == 0
    assert "names: web, web.ns, web.ns.svc, web.ns.svc.cluster.local" in result.stdout
    assert result.stdout.rstrip().endswith("ok")


def test_check_fails_a_certificate_from_another_ca_or_for_another_name(tmp_path) -> None:
    cli("create", "--service", "web", "--namespace", "ns", "--out", str(tmp_path / "a"))
    cli("create", "--service", "web", "--namespace", "ns", "--out", str(tmp_path / "b"))
    result = cli(
        "check",
        "--cert",
        str(tmp_path / "a" / "tls.crt"),
        "--ca",
        str(tmp_path / "b" / "ca.crt"),
        "--name",
        "other.ns.svc",
    )
    assert result.returncode == 1
    assert "problem: not signed by a CA in" in result.stdout
    assert "problem: not valid for other.ns.svc" in result.stdout


def test_check_flags_the_renewal_window_and_expiry(tmp_path) -> None:
    ca = create_ca()
    serving = issue_serving(ca, ["web.ns.svc"], days=30)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    (tmp_path / "tls.crt").write_bytes(serving.cert_pem())
    now = dt.datetime.now(dt.UTC)
    assert check(tmp_path / "tls.crt", tmp_path / "ca.crt", now=now).problems == ()
    late = check(tmp_path / "tls.crt", tmp_path / "ca.crt", now=now + dt.timedelta(days=25))
    assert late.problems == ("inside its renewal window (less than a third of its lifetime left)",)
    gone = check(tmp_path / "tls.crt", tmp_path / "ca.crt", now=now + dt.timedelta(days=31))
    assert gone.problems == ("expired",)


def test_check_of_a_file_that_is_not_a_certificate_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "junk.pem").write_text("hello")
    result = cli("check", "--cert", str(tmp_path / "junk.pem"), "--ca", str(tmp_path / "junk.pem"))
    assert result.returncode == 2
    assert "not a PEM certificate" in result.stderr
