"""Issue 10's findings, one test each, through ``review()`` as the server runs it: whatever
a pod holds, the answer is a well-formed AdmissionReview, bounded in size, whose patch
applies; the work is bounded by checks made before anything large is built."""

from __future__ import annotations

import base64
import json
import logging
from decimal import Decimal

import orjson
import pytest

from tests import hostile
from tests.support import apply, review, schema_errors
from webhook import engine
from webhook.engine import annotations, bootstrap, limits, quantity
from webhook.engine.config import MeshConfig
from webhook.server import admission
from webhook.server.admission import Reviewed
from webhook.server.admission import review as review_body
from webhook.server.logs import JsonFormatter

CONFIG = MeshConfig()


def answer(pod: dict, **request) -> tuple[dict, Reviewed]:
    body = json.dumps(review(pod, "shop", **request)).encode()
    reviewed = review_body(body, CONFIG)
    return orjson.loads(reviewed.body)["response"], reviewed


def patched(pod: dict) -> dict:
    response, _ = answer(pod)
    assert response["allowed"] is True, response
    return apply(pod, json.loads(base64.b64decode(response["patch"])))


def denial(pod: dict) -> str:
    response, _ = answer(pod)
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 400
    return response["status"]["message"]


# 1 and 2: quantities


@pytest.mark.parametrize("key", ["cpu", "memory", "cpu-limit", "memory-limit", "shm-size"])
@pytest.mark.parametrize("value", ["1e1000000", "1e5000", "9" * 5000, "1e200000"])
def test_a_huge_quantity_annotation_is_denied_naming_it(key, value) -> None:
    message = denial(hostile.pod([hostile.web()], {f"proxy.io/{key}": value}))
    assert f"annotation proxy.io/{key}:" in message
    assert "larger than 9223372036854775807" in message


def test_an_exponent_kubernetes_would_truncate_is_refused() -> None:
    message = denial(hostile.pod([hostile.web()], {"proxy.io/cpu": "1e4294967296"}))
    assert "exponent out of range" in message


@pytest.mark.parametrize("limit", ["1e40", 1e308, "1" + "0" * 100_000])
def test_a_memory_limit_beyond_an_int64_is_read_as_the_largest(limit) -> None:
    pod = patched(hostile.pod([hostile.web(resources={"limits": {"memory": limit}})]))
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "proxy-shm"]
    size = quantity.parse(volume["emptyDir"]["sizeLimit"])
    assert quantity.MAX / 2 - 1024 <= size <= quantity.MAX / 2


@pytest.mark.parametrize(
    ("limit", "size_limit"),
    [
        ("0", "64Mi"),  # no limit to the kubelet: the mesh default
        ("1Gi", "512Mi"),
        ("2G", "976562Ki"),
        ("1e9", "488281Ki"),
        ("1.5Gi", "768Mi"),
        ("100n", "1Ki"),
        ("5u", "1Ki"),
        ("128974848", "62976Ki"),
        ("129e6", "62988Ki"),
        ("123Mi", "62976Ki"),
        (".5Gi", "256Mi"),
        ("1.Gi", "512Mi"),
        ("+1Gi", "512Mi"),
        ("1E", "488281250000000Ki"),
        ("0.5Ei", "268435456Gi"),
    ],
)
def test_every_quantity_the_api_server_accepts_is_read(limit, size_limit) -> None:
    pod = patched(hostile.pod([hostile.web(resources={"limits": {"memory": limit}})]))
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "proxy-shm"]
    assert volume["emptyDir"]["sizeLimit"] == size_limit
    assert not schema_errors(pod)


@pytest.mark.parametrize("limit", ["-1Gi", "1K", "1 Gi", "Gi", "1e", "1.2.3", "0x10", "1ki", "."])
def test_a_memory_limit_kubernetes_refuses_is_denied_naming_the_field(limit) -> None:
    message = denial(hostile.pod([hostile.web(resources={"limits": {"memory": limit}})]))
    assert "spec.containers[0].resources.limits.memory" in message


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("1n", Decimal("1e-9")),
        ("0.1n", Decimal("1e-9")),  # rounded up to the smallest amount, as Kubernetes does
        ("1u", Decimal("1e-6")),
        ("250m", Decimal("0.25")),
        ("1k", Decimal(1000)),
        ("1Ki", Decimal(1024)),
        ("1e3", Decimal(1000)),
        ("1E-3", Decimal("0.001")),
        ("12e+2", Decimal(1200)),
        ("0.000000000000000000001Ei", Decimal("0.001152922")),  # 2^60 x 10^-21
        ("-0", Decimal(0)),
        ("00012", Decimal(12)),
        ("9223372036854775807", quantity.MAX),
    ],
)
def test_quantities_mean_what_they_mean_to_kubernetes(text, amount) -> None:
    assert quantity.parse(text) == amount


def test_one_past_the_int64_range_is_too_large() -> None:
    with pytest.raises(quantity.TooLarge):
        quantity.parse("9223372036854775808")


# 2: probes


@pytest.mark.parametrize("headers", [7, True, "x", [1], [{"name": 5, "value": "v"}]])
def test_probe_headers_of_the_wrong_type_are_denied_naming_the_field(headers) -> None:
    probe = {"httpGet": {"path": "/ready", "port": 8080, "httpHeaders": headers}}
    message = denial(hostile.pod([hostile.web(readinessProbe=probe)]))
    assert "spec.containers[0].readinessProbe.httpGet.httpHeaders" in message


def test_a_deeply_nested_field_in_a_rewritten_probe_is_left_where_it_is() -> None:
    pod = patched(hostile.deep_probe(300))
    probe = pod["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["port"] == 15021
    assert "x-extra" in probe


def test_a_rewritten_tcp_probe_keeps_its_timings() -> None:
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 7, "failureThreshold": 3}
    pod = patched(hostile.pod([hostile.web(livenessProbe=probe)]))
    rewritten = pod["spec"]["containers"][0]["livenessProbe"]
    assert "tcpSocket" not in rewritten
    assert rewritten["httpGet"] == {
        "path": "/app-health/web/livez",
        "port": 15021,
        "scheme": "HTTP",
    }
    assert (rewritten["periodSeconds"], rewritten["failureThreshold"]) == (7, 3)


# 3: what the engine did not foresee


def test_an_unforeseen_failure_is_a_500_denial_naming_the_field(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise KeyError("containerPort")

    monkeypatch.setattr(engine.probes, "changes", broken)
    monkeypatch.setattr(admission.MEMO, "answers", type(admission.MEMO.answers)())
    response, reviewed = answer(hostile.pod([hostile.web()]))
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    assert response["status"]["reason"] == "InternalError"
    assert (
        "internal error in stage ports_and_resources: KeyError" in (response["status"]["message"])
    )
    assert isinstance(reviewed.error, KeyError)
    assert reviewed.reason == "internal_error"


# 4: patches that apply


def test_no_containers_is_denied_as_an_invalid_pod() -> None:
    pod = hostile.pod([], {"proxy.io/native-sidecar": "false"})
    pod["spec"]["containers"] = None
    assert "a pod needs at least one container" in denial(pod)


@pytest.mark.parametrize("metadata", ["absent", None, {}, {"annotations": None}])
def test_a_pod_without_metadata_gets_it_created(metadata) -> None:
    pod = hostile.pod([hostile.web()])
    if metadata == "absent":
        del pod["metadata"]
    else:
        pod["metadata"] = metadata
    injected = patched(pod)
    assert "proxy.io/status" in injected["metadata"]["annotations"]


def test_a_pod_without_spec_is_denied() -> None:
    assert "a pod needs at least one container" in denial({"metadata": {"name": "p"}})


# 5: bounded work, checked before anything large is built


@pytest.fixture
def no_bootstrap(monkeypatch):
    """Fails the test if the engine builds a bootstrap."""

    def build(plan):
        raise AssertionError("a bootstrap was built")

    monkeypatch.setattr(bootstrap, "build", build)
    bootstrap.encoded.cache_clear()


@pytest.mark.parametrize(
    "shape",
    [
        hostile.upstreams_under_the_annotation_limit,
        lambda: hostile.pod(
            [
                {
                    "name": "web",
                    "image": "a",
                    "ports": [{"containerPort": 1000 + i} for i in range(400)],
                }
            ]
        ),
    ],
    ids=["upstreams", "ports"],
)
def test_too_many_ports_or_upstreams_are_refused_before_building(no_bootstrap, shape) -> None:
    message = denial(shape())
    assert "would be at least" in message
    assert "131,071 bytes" in message


def test_the_lower_bounds_on_the_bootstrap_size_hold() -> None:
    """least_size must never refuse a pod whose bootstrap would fit: each item, named as
    shortly as it can be, costs at least what it says."""
    from webhook.engine import probes, sockets, upstreams
    from webhook.engine.annotations import Overrides
    from webhook.engine.bootstrap import SidecarPlan

    def size(ports: int, routes: int, declared: int, protocol: str | None = None) -> int:
        app = tuple(
            sockets.AppPort("a", i + 1, "", f"/dev/shm/a{i}", sockets.TCP) for i in range(ports)
        )
        app = app or (sockets.AppPort("a", 1, "", None),)
        probe_routes = tuple(probes.ProbeRoute(f"/{i}", app[0], True) for i in range(routes))
        # The smallest of each kind: HTTP ones sharing a port, TCP ones on ports of their own.
        names = tuple((f"a{i}", i + 1 if protocol else 1, protocol) for i in range(declared))
        ups = upstreams.resolve(
            Overrides(upstreams=names), "n", "c", CONFIG.upstream_policy
        ).upstreams
        plan = SidecarPlan(
            ports=app[:ports],
            probes=probe_routes,
            upstreams=ups,
            policy=CONFIG.upstream_policy,
            outbound_socket=None,
        )
        return len(bootstrap.encode(bootstrap.build(plan)).encode())

    assert size(0, 0, 0) >= bootstrap.LEAST_BYTES
    assert size(50, 0, 0) - size(0, 0, 0) >= 50 * bootstrap.LEAST_BYTES_PER_PORT
    assert size(1, 50, 0) - size(1, 0, 0) >= 50 * bootstrap.LEAST_BYTES_PER_PROBE
    assert size(0, 0, 50) - size(0, 0, 0) >= 50 * bootstrap.LEAST_BYTES_PER_UPSTREAM
    assert size(0, 0, 50, "tcp") - size(0, 0, 0) >= 50 * bootstrap.LEAST_BYTES_PER_UPSTREAM


@pytest.mark.parametrize(
    "shape", [hostile.containers_with_tcp_probes, hostile.containers_with_a_port]
)
def test_a_pod_with_more_containers_than_injected_is_refused_before_reading_them(
    no_bootstrap, shape
) -> None:
    message = denial(shape())
    assert "more than the 1,000 proxy-injector injects a pod with" in message


def test_did_you_mean_is_worked_out_for_a_few_keys_only(monkeypatch) -> None:
    calls = []
    real = annotations.suggest
    monkeypatch.setattr(annotations, "suggest", lambda key: calls.append(key) or real(key))
    response, _ = answer(hostile.unknown_annotations_under_the_limit())
    assert response["allowed"] is True
    assert len(calls) <= limits.WARNINGS


@pytest.mark.parametrize("shape", ["upstreams-3mib", "unknown-keys-3mib"])
def test_annotations_over_the_api_servers_limit_are_denied(shape) -> None:
    assert "the API server accepts for keys and values" in denial(hostile.SHAPES[shape]())


def test_a_long_list_of_ranges_is_refused_without_reading_each() -> None:
    message = denial(hostile.outbound_addresses())
    assert "ranges, more than the 1,024 one list may hold" in message


def test_an_init_argument_longer_than_linux_allows_is_denied() -> None:
    ranges = ",".join(f"{i >> 8 & 255}.{i & 255}.0.0/16" for i in range(1024))
    exclude = ",".join(str(p) for p in range(1, 30_000))
    pod = hostile.pod(
        [hostile.web()],
        {"proxy.io/exclude-outbound-ip-ranges": ranges, "proxy.io/exclude-inbound-ports": exclude},
    )
    assert "would get --exclude-inbound-ports" in denial(pod)


# 6: bounded output


def test_a_denial_lists_a_few_problems_and_counts_the_rest() -> None:
    message = denial(hostile.http_ports_of_unknown_names())
    assert message.count("names no TCP container port") == limits.PROBLEMS - 1
    assert "more problems" in message
    assert len(message) < limits.PROBLEMS * (limits.PROBLEM_CHARS + 40)


def test_warnings_and_the_status_annotation_stay_small_with_many_unknown_keys() -> None:
    pod = hostile.unknown_annotations_under_the_limit()
    response, _ = answer(pod)
    warnings = response["warnings"]
    assert len(warnings) == limits.WARNINGS
    assert all(len(w) <= limits.WARNING_CHARS + 40 for w in warnings)
    assert sum(map(len, warnings)) < 4096  # the API server truncates past this
    assert warnings[0].startswith("unknown annotation proxy.io/concurency0 is ignored")
    unknown = len(pod["metadata"]["annotations"])
    assert warnings[-1] == f"... and {unknown - 9:,} more warnings"
    status = json.loads(patched(pod)["metadata"]["annotations"]["proxy.io/status"])
    assert len(status["ignoredAnnotations"]) == limits.IGNORED_KEYS
    assert status["ignoredAnnotationsNotListed"] == len(pod["metadata"]["annotations"]) - 10


def test_a_log_line_is_bounded() -> None:
    record = logging.makeLogRecord(
        {"msg": "admission", "detail": "x" * 10_000_000, "pod": "p" * 100_000}
    )
    try:
        raise ValueError("y" * 1_000_000)
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert len(line) < 4 * limits.LOG_FIELD_CHARS + limits.LOG_TRACEBACK_CHARS + 1000
    assert json.loads(line)["detail"].endswith("(9,997,952 more characters)")


# 9: valid pods get an answer, never an HTTP error


def test_a_body_of_bad_quantities_is_answered_not_failed() -> None:
    pod = hostile.pod([hostile.web(resources={"limits": {"memory": "lots"}})])
    response, _ = answer(pod)
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
