"""Traces and access logs across two meshed pods, for real: the client pod ``web`` calls
the server pod ``orders`` through both sidecars (real Envoys in network namespaces, mTLS
between them), and each sidecar sends its span over OTLP/gRPC to a real receiver (grpcio
serving the opentelemetry-proto TraceService, not a mock of Envoy). One request gives two
spans of one trace, the server's child of the client's, and both sidecars' JSON access log
lines carry that trace id."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.identity import create_ca
from tests.meshed_pod import MeshedPod
from tests.mtls_mesh import COLLECTOR, Mesh, client_spec, running_mesh
from tests.processes import wait_for
from webhook.engine.config import from_mapping
from webhook.engine.names import OUTBOUND_UDS_PATH

why_not = netns.available()
pytestmark = [pytest.mark.envoy, pytest.mark.skipif(why_not is not None, reason=str(why_not))]

TRACED = from_mapping(
    {
        "mtls": {"identity": "pod-certificate"},
        "accessLog": {"format": "json", "outbound": True, "tcp": True},
        "tracing": {"collector": f"{COLLECTOR}:4317", "samplingPercent": 100},
    }
)


class Traced:
    def __init__(self) -> None:
        self.spans_file: Path | None = None

    def start_receiver(self, mesh: Mesh) -> None:
        self.spans_file = mesh.root / "spans.jsonl"
        self.spans_file.touch()
        mesh.net.start(
            mesh.net.client, sys.executable, "-m", "tests.apps.otlp_receiver",
            netns.CLIENT_V4_OTHER, "4317", str(self.spans_file),
        )  # fmt: skip

    def spans(self) -> list[dict]:
        assert self.spans_file is not None
        return [json.loads(line) for line in self.spans_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Mesh, Traced]]:
    receiver = Traced()
    with running_mesh(create_ca(), TRACED, receiver.start_receiver) as mesh:
        yield mesh, receiver


def access_lines(pod: MeshedPod) -> list[dict]:
    lines = (pod.folder / "envoy.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_one_request_is_one_trace_across_both_sidecars(traced) -> None:
    mesh, receiver = traced
    status, _ = mesh.call("http://orders.shop:8080/traced")
    assert status == 200

    def both() -> list[dict]:
        return [s for s in receiver.spans() if "/traced" in json.dumps(s["attributes"])]

    wait_for(lambda: len(both()) >= 2, 30, "both sidecars' spans at the receiver")
    spans = {s["resource"]["service.name"]: s for s in both()}
    client, server = spans["web"], spans["orders"]
    assert client["trace_id"] == server["trace_id"] != "0" * 32
    assert server["parent_span_id"] == client["span_id"]
    assert (client["kind"], server["kind"]) == (3, 2)  # SPAN_KIND_CLIENT, SPAN_KIND_SERVER
    for span, pod in ((client, "web-0"), (server, "orders-0")):
        assert span["resource"]["k8s.namespace.name"] == "shop"
        assert span["resource"]["k8s.pod.name"] == pod
    trace_id = client["trace_id"]

    def logged(pod: MeshedPod, direction: str) -> list[dict]:
        return [
            line
            for line in access_lines(pod)
            if line.get("trace_id") == trace_id and line["direction"] == direction
        ]

    wait_for(lambda: logged(mesh.client, "outbound") and logged(mesh.server, "inbound"), 10,
             "both sidecars' access log lines")  # fmt: skip
    (out,) = logged(mesh.client, "outbound")
    (into,) = logged(mesh.server, "inbound")
    assert (out["method"], out["path"], out["status"]) == ("GET", "/traced", 200)
    assert into["path"] == "/traced" and into["status"] == 200
    assert into["peer_identity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert out["peer_identity"] == "spiffe://cluster.local/ns/shop/sa/orders"
    assert out["request_id"] == into["request_id"] != ""


def _long(pod: MeshedPod) -> list[dict]:
    return [e for e in access_lines(pod) if e.get("path", "").startswith("/aaa")]


def test_a_tcp_connection_is_one_json_line_and_long_client_values_are_cut(traced) -> None:
    mesh, _ = traced
    long_path = "/" + "a" * 5000
    status, _ = mesh.call(f"http://orders.shop:8080{long_path}")
    assert status == 200  # the test nginx answers every path
    wait_for(lambda: _long(mesh.server), 10, "the long request's line")
    (line,) = _long(mesh.server)
    assert len(line["path"]) == 1024

    def carried() -> list[dict]:
        """TCP lines of connections that carried data (the client's mTLS health checks
        connect and close without any)."""
        lines = [e for e in access_lines(mesh.server) if e.get("protocol") == "tcp"]
        return [e for e in lines if e["bytes_received"] and e["upstream_cluster"] == "inbound|9000"]

    before = len(carried())
    # An mTLS client of its own to the TCP port, which closes its connection when answered.
    answer = mesh.peer(mesh.client_leaf, port=9000)
    assert "hello from nginx 9000" in answer
    wait_for(lambda: len(carried()) > before, 10, "the server's TCP line")
    tcp = carried()[-1]
    assert tcp["direction"] == "inbound" and tcp["bytes_sent"] > 0
    assert tcp["peer_identity"] == "spiffe://cluster.local/ns/shop/sa/web"


def test_a_request_through_the_egress_socket_is_traced_and_logged(traced) -> None:
    """The app's other way out (proxy.io/outbound-uds): its HTTP manager gets the tracer
    and the access log as the outbound port's does."""
    mesh, receiver = traced
    plain = mesh.client.spec
    mesh.client.folder.chmod(0o1777)  # the pod's /dev/shm, where the proxy makes the socket
    mesh.restart(mesh.client, client_spec({"proxy.io/outbound-uds": "true"}, TRACED))
    try:
        egress = mesh.client.folder / Path(OUTBOUND_UDS_PATH).name
        wait_for(egress.exists, 10, "the egress socket")
        answered = mesh.net.run(
            mesh.net.client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
            "--max-time", "5", "--unix-socket", str(egress),
            "http://orders.shop:8080/through-the-socket", timeout=30,
        )  # fmt: skip
        assert answered.stdout == "200"

        def spans() -> list[dict]:
            found = receiver.spans()
            return [s for s in found if "/through-the-socket" in json.dumps(s["attributes"])]

        wait_for(lambda: len(spans()) >= 2, 30, "both sidecars' spans of the socket's request")
        by_service = {s["resource"]["service.name"]: s for s in spans()}
        client, server = by_service["web"], by_service["orders"]
        assert server["parent_span_id"] == client["span_id"]
        assert client["trace_id"] == server["trace_id"]
        out = [e for e in access_lines(mesh.client) if e.get("path") == "/through-the-socket"]
        assert [(e["direction"], e["trace_id"]) for e in out] == [("outbound", client["trace_id"])]
    finally:
        mesh.restart(mesh.client, plain)
