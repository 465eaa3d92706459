"""An OpenTelemetry collector's trace receiver, for the tests: the OTLP/gRPC TraceService
(grpcio serving the ``opentelemetry-proto`` definitions), writing each span it is sent as
one JSON line: trace and span ids in hex, the parent's, name, kind, and the resource's and
span's attributes.

    python -m tests.apps.otlp_receiver ADDRESS PORT SPANS_FILE
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path: str) -> None:
        self.path, self.lock = path, threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        lines = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        json.dumps(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "resource": resource,
                                "attributes": _attributes(span.attributes),
                            }
                        )
                    )
        with self.lock, open(self.path, "a") as out:
            out.writelines(line + "\n" for line in lines)
        return trace_service_pb2.ExportTraceServiceResponse()


def main(address: str, port: str, path: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(path), server)
    server.add_insecure_port(f"{address}:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main(*sys.argv[1:4])
