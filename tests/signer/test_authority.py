"""How the signer's CAs roll, with the clock in the test's hands: a new CA is trusted
before it issues, and the old one is trusted until its last leaf can have expired."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from webhook.signer import authority

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def cas(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle)


def test_a_rotation_trusts_first_issues_later_and_forgets_last() -> None:
    first = authority.Authorities(authority.new_ca(NOW))
    rotated = authority.rotate(first, NOW, after=DAY)
    assert rotated.current is first.current and rotated.next is not None
    assert len(cas(rotated.bundle())) == 2
    # Nothing changes until the bundle is out; then the wait starts from that moment.
    assert authority.advance(rotated, NOW + 2 * DAY, DAY) is None
    out = authority.published(rotated, NOW + dt.timedelta(minutes=1))
    assert out is not None and out.next_from == NOW + dt.timedelta(minutes=1) + DAY
    assert authority.published(out, NOW + DAY) is None
    assert authority.advance(out, NOW + DAY, DAY) is None
    switched = authority.advance(out, NOW + 2 * DAY, DAY)
    assert switched is not None and switched.current is out.next
    assert switched.previous == first.current.cert
    assert switched.previous_until == NOW + 3 * DAY
    assert [c.subject for c in cas(switched.bundle())] == [
        out.next.cert.subject,
        first.current.cert.subject,
    ]
    assert authority.advance(switched, NOW + 3 * DAY - dt.timedelta(seconds=1), DAY) is None
    done = authority.advance(switched, NOW + 3 * DAY, DAY)
    assert done is not None and done.previous is None
    assert len(cas(done.bundle())) == 1


def test_the_secret_holds_every_step() -> None:
    state = authority.published(
        authority.rotate(authority.Authorities(authority.new_ca(NOW)), NOW, DAY), NOW
    )
    assert state is not None
    for step in (state, authority.advance(state, NOW + DAY, DAY)):
        assert step is not None
        data, annotations = authority.to_secret(step)
        again = authority.from_secret(data, annotations)
        assert again.bundle() == step.bundle()
        assert (again.next_from, again.previous_until) == (step.next_from, step.previous_until)


def test_a_secret_without_a_usable_ca_is_named() -> None:
    one, other = authority.new_ca(NOW), authority.new_ca(NOW)
    with pytest.raises(authority.CaError, match=r"has no tls\.crt"):
        authority.from_secret({}, {})
    with pytest.raises(authority.CaError, match=r"tls\.key is not the key of tls\.crt"):
        authority.from_secret({"tls.crt": one.cert_pem(), "tls.key": other.key_pem()}, {})
