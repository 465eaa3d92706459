"""Native sidecar (default) and classic mode: where the proxy goes and how it starts."""

from __future__ import annotations

import pytest

from tests.support import (
    CORPUS,
    apply,
    bootstrap_of,
    container,
    load_case,
    review,
    schema_errors,
)
from webhook.engine import Outcome, inject
from webhook.engine.config import MeshConfig, from_mapping
from webhook.engine.pod import InvalidPod


def injected(pod: dict, config: MeshConfig | None = None) -> tuple[dict, tuple[str, ...]]:
    result = inject(pod, "shop", config or MeshConfig())
    assert result.outcome == Outcome.INJECT, result.message
    return apply(pod, list(result.patch)), result.warnings


def annotated(name: str, annotations: dict[str, str]) -> dict:
    pod = load_case(CORPUS / f"{name}.yaml")["pod"]
    pod["metadata"]["annotations"] = {**pod["metadata"].get("annotations", {}), **annotations}
    return pod


def test_a_job_pod_gets_the_proxy_as_a_native_sidecar_and_stays_valid() -> None:
    pod, _ = injected(load_case(CORPUS / "22-job.yaml")["pod"])
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["proxy-init", "proxy"]
    proxy = inits[1]
    assert proxy["restartPolicy"] == "Always"
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/healthz/app"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["report"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert schema_errors(pod) == []


def test_classic_mode_puts_the_proxy_last_among_the_containers() -> None:
    pod, _ = injected(
        annotated("04-existing-init-containers", {"proxy.io/native-sidecar": "false"})
    )
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [
        "proxy-init",
        "migrate",
        "wait-db",
    ]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["orders", "proxy"]
    assert "restartPolicy" not in container(pod, "proxy")
    assert schema_errors(pod) == []


def test_classic_mode_with_hold_starts_the_proxy_first_and_waits_for_envoy() -> None:
    pod, _ = injected(
        annotated(
            "08-probes",
            {
                "proxy.io/native-sidecar": "false",
                "proxy.io/hold-application-until-proxy-starts": "true",
            },
        )
    )
    containers = pod["spec"]["containers"]
    assert [c["name"] for c in containers] == ["proxy", "cart"]
    hook = containers[0]["lifecycle"]["postStart"]["exec"]["command"]
    assert hook[:2] == ["bash", "-c"]
    assert "http 15021 GET /healthz/ready" in hook[2] and "/dev/tcp/127.0.0.1/$1" in hook[2]
    assert containers[0]["lifecycle"]["preStop"]["exec"]["command"][:2] == ["bash", "-c"]
    # The app container's own patches (mount, env, probes) landed on the app, not the proxy.
    cart = container(pod, "cart")
    assert cart["readinessProbe"]["httpGet"]["path"] == "/app-health/cart/readyz"
    assert any(m["mountPath"] == "/dev/shm" for m in cart["volumeMounts"])
    assert schema_errors(pod) == []


def test_a_native_sidecar_has_no_stop_hook_since_the_kubelet_stops_it_after_the_app() -> None:
    pod, warnings = injected(annotated("01-web-single", {"proxy.io/drain-duration": "1m"}))
    assert "lifecycle" not in pod["spec"]["initContainers"][1]
    assert warnings == ()


def test_a_classic_proxy_waits_for_the_app_within_the_pods_grace_period() -> None:
    pod = annotated(
        "01-web-single", {"proxy.io/native-sidecar": "false", "proxy.io/drain-duration": "3s"}
    )
    pod["spec"]["terminationGracePeriodSeconds"] = 45
    pod, _ = injected(pod)
    script = container(pod, "proxy")["lifecycle"]["preStop"]["exec"]["command"][2]
    # No admin port to call: the hook flags the drain in the proxy's own volume, then asks
    # the readiness port, which drains only while the flag is there.
    assert ": > /var/run/proxy-admin/draining; http 15021 POST /drain" in script
    assert "15000" not in script
    bootstrap = bootstrap_of(pod)
    assert "/drain_listeners?inboundonly&graceful" in bootstrap
    assert "/drain_listeners" not in bootstrap_of(injected(annotated("01-web-single", {}))[0])
    assert "for ((i = 1; i <= 90; i++))" in script  # 45 s in half-second steps
    assert "(( i > 6 ))" in script  # not before the drain duration
    assert schema_errors(pod) == []


@pytest.mark.parametrize("native", ["true", "false"])
def test_no_drain_duration_means_no_pre_stop_hook(native) -> None:
    pod, _ = injected(
        annotated(
            "01-web-single",
            {"proxy.io/native-sidecar": native, "proxy.io/drain-duration": "0s"},
        )
    )
    proxies = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    assert "lifecycle" not in next(c for c in proxies if c["name"] == "proxy")


def test_a_classic_drain_longer_than_the_grace_period_is_warned_about() -> None:
    pod = annotated(
        "01-web-single", {"proxy.io/drain-duration": "1m", "proxy.io/native-sidecar": "false"}
    )
    _, warnings = injected(pod)
    assert warnings == (
        "the proxy's drain duration (60s) is longer than the pod's "
        "terminationGracePeriodSeconds (30); the kubelet stops the proxy when the grace "
        "period ends",
    )


@pytest.mark.parametrize("grace", [-1, "30", 2.5, True])
def test_a_bad_grace_period_is_denied_naming_the_field(grace) -> None:
    pod = annotated("01-web-single", {"proxy.io/native-sidecar": "false"})
    pod["spec"]["terminationGracePeriodSeconds"] = grace
    with pytest.raises(InvalidPod) as error:
        inject(pod, "shop", MeshConfig())
    assert error.value.path == "spec.terminationGracePeriodSeconds"
    assert repr(grace) in str(error.value)


def test_mesh_config_can_default_to_classic_mode() -> None:
    pod, _ = injected(
        load_case(CORPUS / "01-web-single.yaml")["pod"], from_mapping({"nativeSidecar": False})
    )
    assert [c["name"] for c in pod["spec"]["containers"]] == ["web", "proxy"]


@pytest.mark.parametrize("native", ["true", "false"])
def test_both_modes_are_not_injected_twice(webhook, native) -> None:
    pod, _ = injected(annotated("01-web-single", {"proxy.io/native-sidecar": native}))
    pod["metadata"]["annotations"].pop("proxy.io/status")
    answer = webhook.mutate(review(pod))
    assert "patch" not in answer["response"]


def test_an_app_running_as_the_proxy_uid_is_warned_about_by_name() -> None:
    pod = load_case(CORPUS / "01-web-single.yaml")["pod"]
    pod["spec"]["securityContext"] = {"runAsUser": 1337}
    _, warnings = injected(pod)
    assert warnings == (
        "container web runs as UID 1337, the proxy's: its traffic is never "
        "redirected and bypasses the proxy",
    )


def test_an_app_running_with_the_proxys_group_is_warned_about_too() -> None:
    """The rules let the proxy's GID through as they do its UID: such an app bypasses it."""
    pod = load_case(CORPUS / "01-web-single.yaml")["pod"]
    pod["spec"]["securityContext"] = {"runAsUser": 4242, "runAsGroup": 1337}
    _, warnings = injected(pod)
    assert warnings == (
        "container web runs as GID 1337 (runAsGroup), the proxy's: its traffic is never "
        "redirected and bypasses the proxy",
    )
    pod["spec"]["securityContext"] = {"runAsGroup": 1337}
    denied = inject(pod, "shop", from_mapping({"denyProxyUidApps": True}))
    assert denied.outcome == Outcome.DENY and "runs as GID 1337" in denied.message


def test_the_mesh_config_can_deny_apps_running_as_the_proxy_uid() -> None:
    pod = load_case(CORPUS / "01-web-single.yaml")["pod"]
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1337}
    result = inject(pod, "shop", from_mapping({"denyProxyUidApps": True}))
    assert result.outcome == Outcome.DENY
    assert result.reason.code == "invalid_pod"
    assert "container web runs as UID 1337" in result.message
