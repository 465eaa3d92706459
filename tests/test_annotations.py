"""Invalid proxy.io annotations are denied with a 400 naming the annotation, the value and
what is accepted; valid edge cases are admitted."""

from __future__ import annotations

import json

import pytest

from tests.support import CORPUS, apply, container, load_case, patch_of, review
from webhook.engine.annotations import ANNOTATIONS, markdown_table

WEB = load_case(CORPUS / "01-web-single.yaml")["pod"]


def annotated(annotations: dict[str, str]) -> dict:
    return {**WEB, "metadata": {**WEB["metadata"], "annotations": annotations}}


def denial(webhook, annotations: dict[str, str]) -> str:
    answer = webhook.mutate(review(annotated(annotations)))
    response = answer["response"]
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 400
    assert "patch" not in response
    return response["status"]["message"]


TOO_LONG = "/dev/shm/" + "s" * 100 + "/{container}-{port}.sock"

INVALID = [
    ("proxy.io/concurrency", "abc", "an integer from 1 to 64"),
    ("proxy.io/concurrency", "-1", "an integer from 1 to 64"),
    ("proxy.io/concurrency", "0", "an integer from 1 to 64"),
    ("proxy.io/concurrency", "65", "an integer from 1 to 64"),
    ("proxy.io/concurrency", "2.5", "an integer from 1 to 64"),
    ("proxy.io/cpu", "2 cores", "a positive Kubernetes quantity"),
    ("proxy.io/memory", "1Gib", "a positive Kubernetes quantity"),
    ("proxy.io/memory-limit", "-1Gi", "a positive Kubernetes quantity"),
    ("proxy.io/cpu-limit", "0", "a positive Kubernetes quantity"),
    ("proxy.io/shm-size", "lots", "a positive Kubernetes quantity"),
    ("proxy.io/log-level", "verbose", "one of trace, debug"),
    ("proxy.io/upstream", "unix", '"auto", "uds" or "tcp"'),
    ("proxy.io/image", "envoy proxy:latest", "a container image reference"),
    ("proxy.io/exclude-inbound-ports", "70000", "comma-separated ports 1..65535"),
    ("proxy.io/exclude-inbound-ports", "http", "comma-separated ports 1..65535"),
    ("proxy.io/exclude-inbound-ports", "*", "comma-separated ports 1..65535"),
    ("proxy.io/include-inbound-ports", "8080,0", 'comma-separated ports 1..65535, or "*"'),
    ("proxy.io/exclude-outbound-ports", "5432;6379", "comma-separated ports 1..65535"),
    ("proxy.io/exclude-outbound-ip-ranges", "10.0.0.0/33", "comma-separated IPv4/IPv6 CIDRs"),
    ("proxy.io/exclude-outbound-ip-ranges", "*", "comma-separated IPv4/IPv6 CIDRs"),
    (
        "proxy.io/include-outbound-ip-ranges",
        "db.example.com",
        'comma-separated IPv4/IPv6 CIDRs, or "*"',
    ),
    (
        "proxy.io/include-outbound-ip-ranges",
        "fd00::/129",
        'comma-separated IPv4/IPv6 CIDRs, or "*"',
    ),
    ("proxy.io/uds-ports", "http!", "comma-separated container port numbers or names"),
    ("proxy.io/uds-path", "app.sock", "an absolute path under /dev/shm/"),
    ("proxy.io/uds-path", "/dev/shm/../etc/{port}.sock", "an absolute path under /dev/shm/"),
    ("proxy.io/uds-path", "/dev/shm/app\n{port}.sock", "an absolute path under /dev/shm/"),
    ("proxy.io/uds-path", "/dev/shm/{name}.sock", "an absolute path under /dev/shm/"),
    ("proxy.io/uds-path", "/dev/shm/$(HOME).sock", "an absolute path under /dev/shm/"),
    ("proxy.io/inject", "maybe", '"true" or "false"'),
    ("proxy.io/upstreams", "reviews", "comma-separated service:port"),
    ("proxy.io/upstreams", "reviews:99999", "comma-separated service:port"),
    ("proxy.io/upstreams", "10.0.0.1:80", "comma-separated service:port"),
    ("proxy.io/upstreams", "Reviews.Shop:80", "comma-separated service:port"),
    ("proxy.io/drain-duration", "forever", "a duration like 5s or 1m30s"),
    ("proxy.io/drain-duration", "2h", "a duration like 5s or 1m30s"),
    ("proxy.io/http-ports", "web!", "comma-separated container port numbers or names"),
    ("proxy.io/outbound-uds", "yes", '"true" or "false"'),
    ("proxy.io/rewrite-probes", "no", '"true" or "false"'),
]


@pytest.mark.parametrize(
    ("key", "value", "accepts"), INVALID, ids=[f"{k}={v!r}" for k, v, _ in INVALID]
)
def test_invalid_annotation_is_denied_naming_key_value_and_what_is_accepted(
    webhook, key: str, value: str, accepts: str
) -> None:
    message = denial(webhook, {key: value})
    assert f"annotation {key}: {json.dumps(value)} is not valid" in message
    assert f"accepted: {accepts}" in message


def test_too_long_socket_path_is_denied_with_the_path_it_would_give(webhook) -> None:
    message = denial(webhook, {"proxy.io/uds-path": TOO_LONG})
    assert "annotation proxy.io/uds-path" in message
    assert "longer than the 107 bytes" in message
    assert "for container web port 8080" in message


def test_socket_path_without_port_collides_for_two_ports(webhook) -> None:
    pod = load_case(CORPUS / "04-existing-init-containers.yaml")["pod"]
    pod["metadata"]["annotations"] = {"proxy.io/uds-path": "/dev/shm/{container}.sock"}
    answer = webhook.mutate(review(pod))
    assert answer["response"]["allowed"] is False
    assert "the same path as container orders port 8000" in answer["response"]["status"]["message"]


def test_uds_ports_naming_no_declared_port_is_denied(webhook) -> None:
    message = denial(webhook, {"proxy.io/uds-ports": "http,9999"})
    assert 'annotation proxy.io/uds-ports: "9999" names no TCP container port' in message


def test_every_invalid_annotation_is_reported_at_once(webhook) -> None:
    message = denial(webhook, {"proxy.io/concurrency": "0", "proxy.io/log-level": "loud"})
    assert "proxy.io/concurrency" in message
    assert "proxy.io/log-level" in message


@pytest.mark.parametrize(
    ("annotations", "limits", "raised"),
    [
        ({"proxy.io/cpu": "4000m"}, {"cpu": "4", "memory": "1Gi"}, "proxy.io/cpu"),
        ({"proxy.io/memory": "3Gi"}, {"cpu": "2", "memory": "3Gi"}, "proxy.io/memory"),
    ],
)
def test_a_request_above_the_default_limit_raises_the_limit_with_a_warning(
    webhook, annotations, limits, raised
) -> None:
    """Istio's corpus case traffic-annotations: only the request is set, above the default
    limit; the pod is admitted, not denied."""
    pod = annotated(annotations)
    answer = webhook.mutate(review(pod))["response"]
    assert answer["allowed"] is True
    proxy = container(apply(pod, patch_of({"response": answer})), "proxy")
    assert proxy["resources"]["limits"] == limits
    (warning,) = [w for w in answer["warnings"] if raised in w]
    assert "is raised to it" in warning


def test_request_above_the_limit_the_pod_sets_is_denied_naming_both(webhook) -> None:
    message = denial(webhook, {"proxy.io/cpu": "3", "proxy.io/cpu-limit": "2"})
    assert 'annotation proxy.io/cpu "3" is greater than annotation proxy.io/cpu-limit "2"' in (
        message
    )


def test_a_limit_annotation_below_the_default_request_is_denied(webhook) -> None:
    message = denial(webhook, {"proxy.io/memory-limit": "64Mi"})
    assert "mesh config resources.memory is greater than annotation proxy.io/memory-limit" in (
        message
    )


def test_values_are_never_spliced_into_messages_raw(webhook) -> None:
    message = denial(webhook, {"proxy.io/log-level": 'info"\nforged: yes'})
    assert "\n" not in message
    assert "\\nforged: yes" in message


def test_inject_label_with_invalid_value_is_denied_as_a_label(webhook) -> None:
    pod = {**WEB, "metadata": {**WEB["metadata"], "labels": {"proxy.io/inject": "yes"}}}
    answer = webhook.mutate(review(pod))
    assert answer["response"]["status"]["message"].startswith(
        'proxy-injector: label proxy.io/inject: "yes" is not valid'
    )


@pytest.mark.parametrize(
    ("annotations", "check"),
    [
        ({"proxy.io/include-inbound-ports": "*"}, ("--include-inbound-ports", "*")),
        (
            {"proxy.io/exclude-outbound-ip-ranges": "10.1.2.3/8, 2001:db8::1/32"},
            ("--exclude-outbound-ip-ranges", "10.0.0.0/8,2001:db8::/32"),
        ),
        (
            {"proxy.io/exclude-outbound-ip-ranges": "169.254.169.254"},
            ("--exclude-outbound-ip-ranges", "169.254.169.254/32"),
        ),
        (
            {"proxy.io/exclude-outbound-ports": " 5432 , 6379 "},
            ("--exclude-outbound-ports", "5432,6379"),
        ),
    ],
)
def test_valid_edge_values_reach_the_init_container(webhook, annotations, check) -> None:
    pod = annotated(annotations)
    answer = webhook.mutate(review(pod))
    assert answer["response"]["allowed"] is True
    args = container(apply(pod, patch_of(answer)), "proxy-init", "initContainers")["args"]
    flag, value = check
    assert args[args.index(flag) + 1] == value


def test_every_annotation_in_the_table_is_in_the_docs() -> None:
    readme = (CORPUS.parent.parent / "docs" / "annotations.md").read_text()
    assert markdown_table() in readme
    assert all(f"`{a.key}`" in readme for a in ANNOTATIONS)


def test_http_ports_naming_no_declared_port_is_denied(webhook) -> None:
    message = denial(webhook, {"proxy.io/http-ports": "grpc"})
    assert 'annotation proxy.io/http-ports: "grpc" names no TCP container port' in message
