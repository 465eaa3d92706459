"""What the sidecar tells of the traffic it carries: its access log and its traces.

Laid over the built listeners (``apply``): every data-path HTTP connection manager (the
inbound and outbound ones, the egress socket's) and, for TCP, every tcp_proxy that carries
traffic. This is the one place the proxy's stdout lines are decided. The readiness and
metrics listeners are the proxy's own and get neither, and the counters other modules put
in ``access_log`` (refused egress) stay.

Values a client chooses (authority, path, user agent, request id) are cut to a bound, so a
request cannot make the line it is logged in arbitrarily long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhook.engine.bootstrap.inbound import MTLS_SUFFIX
from webhook.engine.bootstrap.objects import Json, typed

STDOUT = "envoy.access_loggers.stdout"
DATA_LISTENERS = frozenset({"inbound", "outbound", "outbound_uds"})
BLACKHOLE = "blackhole"

BOUNDS = {"method": 32, "authority": 256, "path": 1024, "user_agent": 256, "request_id": 128}
"""Characters kept of each value a client sets."""


@dataclass(frozen=True, slots=True)
class Tracing:
    cluster: str
    """The collector's cluster (OTLP over gRPC)."""
    sampling: float
    """Percent of the requests that start a trace here."""
    service: str

    @property
    def collector(self) -> str:
        """host:port, from the cluster's name (``outbound|<port>||<host>``)."""
        _, port, _, host = self.cluster.split("|")
        return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Telemetry:
    access_log: str = "text"
    """off, text or json."""
    outbound: bool = False
    tcp: bool = False
    tracing: Tracing | None = None


def _peer(direction: str) -> str:
    """The other side's SPIFFE ID: the caller's inbound, the called one's outbound."""
    return "DOWNSTREAM_PEER_URI_SAN" if direction == "inbound" else "UPSTREAM_PEER_URI_SAN"


def _both_json(direction: str, protocol: str) -> dict[str, str]:
    """The fields of HTTP and TCP lines alike."""
    return {
        "start_time": "%START_TIME%",
        "direction": direction,
        "protocol": protocol,
        "response_flags": "%RESPONSE_FLAGS%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "duration_ms": "%DURATION%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "downstream_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
        "peer_identity": f"%{_peer(direction)}%",
    }


def _http_json(direction: str) -> dict[str, str]:
    return {
        **_both_json(direction, "%PROTOCOL%"),
        "method": f"%REQ(:METHOD):{BOUNDS['method']}%",
        "authority": f"%REQ(:AUTHORITY):{BOUNDS['authority']}%",
        "path": f"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):{BOUNDS['path']}%",
        "status": "%RESPONSE_CODE%",
        "trace_id": "%TRACE_ID%",
        "request_id": f"%REQ(X-REQUEST-ID):{BOUNDS['request_id']}%",
        "user_agent": f"%REQ(USER-AGENT):{BOUNDS['user_agent']}%",
    }


def _tcp_json(direction: str) -> dict[str, str]:
    return {**_both_json(direction, "tcp"), "termination": "%CONNECTION_TERMINATION_DETAILS%"}


MTLS_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" peer=%DOWNSTREAM_PEER_URI_SAN%\n'
)
"""An inbound mTLS chain's text line: Envoy's default, shortened, with the caller's ID."""
TCP_TEXT = (
    "[%START_TIME%] {direction} tcp %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "
    "%DURATION% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS% "
    "peer={peer}\n"
)


def _logger(fmt: str, direction: str, tcp: bool, mtls: bool = False) -> Json:
    kind = "access_loggers.stream.v3.StdoutAccessLog"
    if fmt == "json":
        fields = _tcp_json(direction) if tcp else _http_json(direction)
        return typed(STDOUT, kind, log_format={"json_format": fields})
    line = TCP_TEXT.format(direction=direction, peer=f"%{_peer(direction)}%") if tcp else None
    if mtls and direction == "inbound" and not tcp:
        line = MTLS_TEXT
    if line is None:
        return typed(STDOUT, kind)  # Envoy's default line
    return typed(STDOUT, kind, log_format={"text_format_source": {"inline_string": line}})


def _tracing(tracing: Tracing) -> Json:
    detector = typed(
        "envoy.tracers.opentelemetry.resource_detectors.environment",
        "tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig",
    )
    return {
        "random_sampling": {"value": tracing.sampling},
        "max_path_tag_length": BOUNDS["path"],
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": tracing.cluster}, "timeout": "1s"},
                "service_name": tracing.service,
                "resource_detectors": [detector],
            },
        },
    }


def _direction(stat_prefix: str) -> str:
    return "inbound" if stat_prefix.startswith("inbound") else "outbound"


def _http(config: Json, telemetry: Telemetry) -> None:
    prefix = config["stat_prefix"]
    direction = _direction(prefix)
    if telemetry.access_log != "off" and (direction == "inbound" or telemetry.outbound):
        mtls = prefix.endswith(MTLS_SUFFIX)
        logger = _logger(telemetry.access_log, direction, tcp=False, mtls=mtls)
        config["access_log"] = [*config.get("access_log", []), logger]
    if telemetry.tracing is not None:
        config["tracing"] = _tracing(telemetry.tracing)


def _tcp(config: Json, telemetry: Telemetry) -> None:
    direction = _direction(config["stat_prefix"])
    if BLACKHOLE in config["stat_prefix"] or telemetry.access_log == "off" or not telemetry.tcp:
        return
    if direction == "outbound" and not telemetry.outbound:
        return
    config.setdefault("access_log", []).append(_logger(telemetry.access_log, direction, tcp=True))


_BY_FILTER = {
    "envoy.filters.network.http_connection_manager": _http,
    "envoy.filters.network.tcp_proxy": _tcp,
}


def apply(listeners: list[Json], telemetry: Telemetry) -> None:
    """Each data-path listener's HTTP and TCP filters get the access log and tracing
    ``telemetry`` says; changed in place (the listeners were just built)."""
    for item in listeners:
        if item["name"] not in DATA_LISTENERS:
            continue
        for filter_chain in _chains(item):
            for network_filter in filter_chain["filters"]:
                decorate = _BY_FILTER.get(network_filter["name"])
                if decorate is not None:
                    decorate(network_filter["typed_config"], telemetry)


def _chains(item: Json) -> list[Any]:
    default = item.get("default_filter_chain")
    return [*item["filter_chains"], *([default] if default else [])]


DEFAULT = Telemetry()
"""The mesh config's defaults: the inbound HTTP text line only, as every release wrote."""
