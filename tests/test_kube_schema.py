"""The test suite's cached Pod validator agrees with kubernetes_validate itself."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.support import CORPUS, KUBERNETES_VERSIONS, load_case, pod_validator

POD = load_case(CORPUS / "01-web-single.yaml")["pod"]
BROKEN = {**POD, "spec": {**POD["spec"], "containers": [{"name": "x", "imagePullPolcy": "A"}]}}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_cached_validator_matches_kubernetes_validate(version: str) -> None:
    kubernetes_validate.validate(POD, version, strict=True)
    assert pod_validator(version).is_valid(POD)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(BROKEN, version, strict=True)
    assert not pod_validator(version).is_valid(BROKEN)
