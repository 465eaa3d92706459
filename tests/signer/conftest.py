"""The fake API the signer's tests run against: it serves pod certificates (v1beta1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_kube import FakeKube


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    api = FakeKube()
    api.served["certificates.k8s.io/v1beta1"] = ["podcertificaterequests", "clustertrustbundles"]
    yield api
    api.close()
