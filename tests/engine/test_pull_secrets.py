"""Private registries: the mesh config's imagePullSecrets and imagePullPolicy reach every
injected pod, merged with the pod's own secrets, never repeated."""

from __future__ import annotations

import copy

import pytest

from tests.support import CORPUS, apply, container, load_case, schema_errors
from webhook.engine import Outcome, inject
from webhook.engine.config import from_mapping

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]
CONFIG = from_mapping(
    {"imagePullSecrets": ["registry-a", "registry-b"], "imagePullPolicy": "IfNotPresent"}
)


def injected(pod: dict) -> dict:
    result = inject(pod, "shop", CONFIG)
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch))


def secrets(pod: dict) -> list[str]:
    return [item["name"] for item in pod["spec"]["imagePullSecrets"]]


@pytest.mark.parametrize(
    ("own", "merged"),
    [
        (None, ["registry-a", "registry-b"]),
        (["app-registry"], ["app-registry", "registry-a", "registry-b"]),
        (["registry-b", "app-registry"], ["registry-b", "app-registry", "registry-a"]),
    ],
    ids=["none", "its-own", "one-already-listed"],
)
def test_pull_secrets_are_merged_without_duplicates(own, merged) -> None:
    pod = copy.deepcopy(WEB)
    if own is not None:
        pod["spec"]["imagePullSecrets"] = [{"name": name} for name in own]
    result = injected(pod)
    assert secrets(result) == merged
    assert not schema_errors(result)


def test_reinvocation_adds_nothing() -> None:
    once = injected(copy.deepcopy(WEB))
    again = inject(once, "shop", CONFIG)
    assert again.outcome == Outcome.SKIP
    assert not again.patch


def test_the_pull_policy_is_set_on_the_containers_we_add_only() -> None:
    pod = injected(copy.deepcopy({**WEB, "metadata": {"annotations": {"proxy.io/image": "r/e:1"}}}))
    assert container(pod, "proxy")["imagePullPolicy"] == "IfNotPresent"
    assert container(pod, "proxy")["image"] == "r/e:1"
    assert container(pod, "proxy-init")["imagePullPolicy"] == "IfNotPresent"
    app = pod["spec"]["containers"][0]
    assert app.get("imagePullPolicy") == WEB["spec"]["containers"][0].get("imagePullPolicy")


def test_a_bad_secret_name_is_a_config_error_naming_it() -> None:
    from webhook.engine.config import ConfigError

    with pytest.raises(ConfigError, match="imagePullSecrets"):
        from_mapping({"imagePullSecrets": ["Not_A_Name"]})
