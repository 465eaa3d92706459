"""The proxy's own HTTP ports: readiness and app probes on 15021, Prometheus on 15090.

``/healthz/ready`` is Envoy's own readiness (200 once it has initialised). ``/healthz/app``
also needs every app socket to accept connections: a socket Envoy cannot reach fails it.
"""

from __future__ import annotations

from collections.abc import Iterable

from webhook.engine.bootstrap.inbound import cluster_name, fallback_retry, tls_cluster_name
from webhook.engine.bootstrap.objects import (
    ADMIN_CLUSTER,
    Json,
    chain,
    exact_path,
    http_connection_manager,
    listener,
    route_to,
    socket_address,
    typed,
    virtual_host,
)
from webhook.engine.names import (
    APP_HEALTH_PATH,
    APP_TRANSPORT_PATH,
    PROMETHEUS_PATH,
    PROMETHEUS_PORT,
    READINESS_PATH,
    READINESS_PORT,
)
from webhook.engine.probes import ProbeRoute
from webhook.engine.sockets import AppPort


def _connect_check(path: str, ports: Iterable[AppPort]) -> Json:
    """Answer ``path`` with 200 only while every port's cluster has a healthy host: the
    socket, or in auto mode the socket or TCP (one of its two hosts)."""
    return typed(
        "envoy.filters.http.health_check",
        "filters.http.health_check.v3.HealthCheck",
        pass_through_mode=False,
        headers=[{"name": ":path", "string_match": {"exact": path}}],
        cluster_min_healthy_percentages={
            cluster_name(p.number): {"value": 50 if p.tcp_fallback else 100} for p in ports
        },
    )


def _probe_route(probe: ProbeRoute) -> Json:
    cluster = tls_cluster_name if probe.tls else cluster_name
    extra: Json = {"prefix_rewrite": probe.original_path, "timeout": "0s"}
    extra.update(fallback_retry(probe.port))
    host = next((value for name, value in probe.headers if name.lower() == "host"), None)
    if host:
        extra["host_rewrite_literal"] = host
    route = route_to(cluster(probe.port.number), exact_path(probe.path), **extra)
    headers = [
        {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for name, value in probe.headers
        if name.lower() != "host"
    ]
    if headers:
        route["request_headers_to_add"] = headers
    return route


# Reads Envoy's own view of each app port's hosts from the admin API's /clusters, where a
# line is "inbound|8080::/dev/shm/web-8080.sock::health_flags::healthy" (or a failure
# flag). A port's traffic takes the first healthy host: the socket, else TCP.
_TRANSPORT_LUA = """
local ports = {%s}
function envoy_on_request(request)
  if request:headers():get(":path") ~= "%s" then return end
  local _, clusters = request:httpCall("%s",
    {[":method"] = "GET", [":path"] = "/clusters", [":authority"] = "admin"}, "", 1000)
  local healthy = {}
  for name, host, flags in string.gmatch(clusters or "",
      "inbound|(%%d+)::([^:]+)[^\\n]-::health_flags::([^\\n]*)") do
    if flags == "healthy" then
      healthy[name .. (string.sub(host, 1, 1) == "/" and " socket" or " tcp")] = true
    end
  end
  local lines = {}
  for _, port in ipairs(ports) do
    local way = healthy[port .. " socket"] and "socket" or healthy[port .. " tcp"] and "tcp"
    table.insert(lines, port .. " " .. (way or "none"))
  end
  request:respond({[":status"] = "200", ["content-type"] = "text/plain"},
    table.concat(lines, "\\n") .. "\\n")
end
"""


def _transport_report(ports: Iterable[AppPort]) -> Json:
    """``GET /app-transport``: which way each app port's traffic goes right now."""
    listed = ", ".join(f'"{p.number}"' for p in ports)
    source = _TRANSPORT_LUA % (listed, APP_TRANSPORT_PATH, ADMIN_CLUSTER)
    return typed(
        "envoy.filters.http.lua",
        "filters.http.lua.v3.Lua",
        default_source_code={"inline_string": source},
    )


def readiness_listener(
    ports: tuple[AppPort, ...], socket_ports: tuple[AppPort, ...], probes: Iterable[ProbeRoute]
) -> Json:
    probes = list(probes)
    checks = [_connect_check(APP_HEALTH_PATH, socket_ports)]
    checks += [_connect_check(p.path, [p.port]) for p in probes if p.connect_only]
    checks.append(_transport_report(ports))
    routes = [route_to(ADMIN_CLUSTER, exact_path(READINESS_PATH), prefix_rewrite="/ready")]
    routes += [_probe_route(p) for p in probes if not p.connect_only]
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    hcm = http_connection_manager("readiness", [virtual_host("readiness", ["*"], routes)], checks)
    return listener("readiness", socket_address("0.0.0.0", READINESS_PORT), [chain(hcm)])


def prometheus_listener() -> Json:
    route = route_to(ADMIN_CLUSTER, exact_path(PROMETHEUS_PATH))
    hcm = http_connection_manager(
        "prometheus",
        [
            virtual_host(
                "prometheus",
                ["*"],
                [route, {"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
            )
        ],
    )
    return listener("prometheus", socket_address("0.0.0.0", PROMETHEUS_PORT), [chain(hcm)])
