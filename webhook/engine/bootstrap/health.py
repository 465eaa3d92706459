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
from webhook.engine.mtls import PodMtls
from webhook.engine.names import (
    APP_HEALTH_PATH,
    APP_TRANSPORT_PATH,
    DRAIN_FLAG,
    DRAIN_PATH,
    IDENTITY_PATH,
    MTLS_PATH,
    PROMETHEUS_PATH,
    PROMETHEUS_PORT,
    READINESS_PATH,
    READINESS_PORT,
    UPSTREAM_TRANSPORT_PATH,
)
from webhook.engine.probes import ProbeRoute
from webhook.engine.sockets import AppPort
from webhook.engine.upstreams import Upstream


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
    return _lua(source)


def _lua(source: str) -> Json:
    return typed(
        "envoy.filters.http.lua",
        "filters.http.lua.v3.Lua",
        default_source_code={"inline_string": source},
    )


def _lua_string(value: str) -> str:
    """A Lua string literal of ``value`` (which the engine made: paths, IDs, ports)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Reads the certificates Envoy has loaded (admin /certs). Without one, says why from the
# files the identity volume should hold; in strict mode /healthz/app fails too, so the
# pod is not ready without an identity.
_IDENTITY_LUA = """
local identity_path, health_path, strict = %s, %s, %s
local wanted, source = %s, %s
local files = {{"certificate", %s}, {"key", %s}, {"trust bundle", %s}}
local hints = {
  ["pod-certificate"] = "is the PodCertificateRequest feature gate on, and a signer for "
    .. "the pod's signerName running?",
  ["csi-spiffe"] = "is csi-driver-spiffe installed and issuing?"}
local function why()
  for _, file in ipairs(files) do
    local handle = io.open(file[2], "r")
    if handle == nil then
      return "no " .. file[1] .. ": " .. file[2] .. " is missing (" .. hints[source] .. ")"
    end
    local size = handle:seek("end")
    handle:close()
    if size == 0 then return "no " .. file[1] .. ": " .. file[2] .. " is empty" end
  end
  return "the files are there but Envoy did not load them: see the proxy's log"
end
function envoy_on_request(request)
  local path = request:headers():get(":path")
  if path ~= identity_path and not (strict and path == health_path) then return end
  local _, certs = request:httpCall(%s,
    {[":method"] = "GET", [":path"] = "/certs", [":authority"] = "admin"}, "", 1000)
  certs = certs or ""
  local leaf = string.match(certs, '"cert_chain": %%[%%s*(%%b{})') or ""
  local id = string.match(leaf, '"uri": "([^"]+)"')
  local not_after = string.match(leaf, '"expiration_time": "([^"]+)"')
  local has_ca = string.find(certs, '"ca_cert": %%[%%s*{') ~= nil
  local problem = nil
  if id == nil then problem = why()
  elseif not has_ca then problem = "no trust bundle: " .. files[3][2] .. " is missing or empty"
  elseif id ~= wanted then problem = "the certificate is for " .. id .. ", not " .. wanted
  end
  if problem == nil then
    if path == health_path then return end
    request:respond({[":status"] = "200", ["content-type"] = "text/plain"},
      id .. " notAfter=" .. not_after .. "\\n")
    return
  end
  local effect = strict and "strict: not ready, plaintext refused"
    or "permissive: serving plaintext only"
  request:respond({[":status"] = "503", ["content-type"] = "text/plain"},
    "no identity: " .. problem .. "; " .. effect .. "\\n")
end
"""


def _identity_report(plan: PodMtls) -> Json:
    """``GET /identity``: the pod's SPIFFE ID and the certificate's notAfter, or why
    there is none; in strict mode ``/healthz/app`` fails the same way."""
    files = plan.files
    before = map(_lua_string, (IDENTITY_PATH, APP_HEALTH_PATH))
    after = map(
        _lua_string,
        (plan.identity, plan.source, files.certificate, files.key, files.trust_bundle),
    )
    strict = "true" if plan.mode == "strict" else "false"
    return _lua(_IDENTITY_LUA % (*before, strict, *after, _lua_string(ADMIN_CLUSTER)))


# Counts each inbound port's connections by chain from admin /stats: the mTLS chain's
# stats are <http|tcp>.inbound_<port>_mtls., plaintext ones http.inbound_<port>.,
# tcp.inbound|<port>. or (refused) tcp.inbound_<port>_refused.; the ports the pod does not
# declare count together as "passthrough" (tcp.inbound_passthrough_mtls.,
# tcp.inbound|passthrough., tcp.inbound_passthrough_refused.), shown as "other".
_MTLS_LUA = """
local ports, policy, mtls_path = {%s}, %s, %s
function envoy_on_request(request)
  if request:headers():get(":path") ~= mtls_path then return end
  local _, stats = request:httpCall(%s,
    {[":method"] = "GET", [":path"] = "/stats?filter=inbound", [":authority"] = "admin"}, "", 1000)
  local counts = {}
  for port, chain, name, value in string.gmatch(stats or "",
      "%%a+%%.inbound[_|](%%w+)([%%a_]*)%%.([%%w_%%.]+): (%%d+)") do
    local kind = nil
    if name == "downstream_cx_total" then
      kind = chain == "_mtls" and "mtls" or "plaintext"
    elseif name == "rbac.denied" and chain == "_mtls" then
      kind = "denied"
    end
    if kind then
      counts[port .. kind] = (counts[port .. kind] or 0) + tonumber(value)
    end
  end
  local lines = {}
  for _, port in ipairs(ports) do
    local shown = port == "passthrough" and "other" or port
    table.insert(lines, string.format("%%s %%s mtls=%%d plaintext=%%d denied=%%d", shown, policy,
      counts[port .. "mtls"] or 0, counts[port .. "plaintext"] or 0, counts[port .. "denied"] or 0))
  end
  request:respond({[":status"] = "200", ["content-type"] = "text/plain"},
    table.concat(lines, "\\n") .. "\\n")
end
"""


def _mtls_report(plan: PodMtls, ports: Iterable[AppPort]) -> Json:
    """``GET /mtls``: per inbound port, ``8080 permissive mtls=12 plaintext=3 denied=0``,
    and ``other ...`` for the ports the pod does not declare: when plaintext stays at 0,
    the port can go strict."""
    listed = ", ".join([*(f'"{p.number}"' for p in ports), '"passthrough"'])
    policy = "strict" if plan.refuses_plaintext else "permissive"
    source = _MTLS_LUA % (
        listed,
        _lua_string(policy),
        _lua_string(MTLS_PATH),
        _lua_string(ADMIN_CLUSTER),
    )
    return _lua(source)


# From admin /clusters: a declared upstream's cluster has the mTLS endpoint as priority 0
# and, in permissive mode, the same address in plaintext as priority 1.
_UPSTREAMS_LUA = """
local upstreams, report_path = {%s}, %s
function envoy_on_request(request)
  if request:headers():get(":path") ~= report_path then return end
  local _, clusters = request:httpCall(%s,
    {[":method"] = "GET", [":path"] = "/clusters", [":authority"] = "admin"}, "", 1000)
  local healthy, flags = {}, {}
  for line in string.gmatch(clusters or "", "[^\\n]+") do
    local name, value = string.match(line, "^(outbound|[^:]+)::.-::health_flags::(.*)$")
    if name then flags[name] = value end
    local owner, priority = string.match(line, "^(outbound|[^:]+)::.-::priority::(%%d+)$")
    if owner and flags[owner] == "healthy" then healthy[owner .. "/" .. priority] = true end
  end
  local lines = {}
  for _, item in ipairs(upstreams) do
    local cluster, shown, first = item[1], item[2], item[3]
    local way = healthy[cluster .. "/0"] and first or healthy[cluster .. "/1"] and "plaintext"
      or "none"
    table.insert(lines, shown .. " " .. way)
  end
  request:respond({[":status"] = "200", ["content-type"] = "text/plain"},
    table.concat(lines, "\\n") .. "\\n")
end
"""


def _upstream_report(upstreams: Iterable[Upstream]) -> Json:
    """``GET /upstream-transport``: per declared upstream, ``orders.shop:8080 mtls``,
    ``plaintext`` (not meshed, or no identity of our own) or ``none``."""
    rows = (
        (u.cluster, f"{u.host}:{u.port}", "plaintext" if u.peer is None else "mtls")
        for u in upstreams
    )
    listed = ", ".join("{" + ", ".join(map(_lua_string, row)) + "}" for row in rows)
    return _lua(
        _UPSTREAMS_LUA % (listed, _lua_string(UPSTREAM_TRANSPORT_PATH), _lua_string(ADMIN_CLUSTER))
    )


# The admin API is a socket only the proxy's UID may open, and the preStop hook is bash,
# which cannot speak to it: the hook creates the flag in the proxy's own volume, then asks
# here. Without the flag (anything else in the pod asking) nothing is drained.
_DRAIN_LUA = """
local drain_path, flag = %s, %s
function envoy_on_request(request)
  if request:headers():get(":path") ~= drain_path then return end
  local handle = io.open(flag, "r")
  if request:headers():get(":method") ~= "POST" or handle == nil then
    request:respond({[":status"] = "403", ["content-type"] = "text/plain"},
      "only the proxy's preStop hook drains it\\n")
    return
  end
  handle:close()
  local headers = request:httpCall(%s, {[":method"] = "POST",
    [":path"] = "/drain_listeners?inboundonly&graceful", [":authority"] = "admin"}, "", 2000)
  request:respond({[":status"] = headers[":status"] or "503"}, "")
end
"""


def _drain() -> Json:
    """``POST /drain``: the inbound listeners drained, for the preStop hook only."""
    names = (DRAIN_PATH, DRAIN_FLAG, ADMIN_CLUSTER)
    return _lua(_DRAIN_LUA % tuple(map(_lua_string, names)))


def readiness_listener(
    ports: tuple[AppPort, ...],
    socket_ports: tuple[AppPort, ...],
    probes: Iterable[ProbeRoute],
    mtls: PodMtls | None = None,
    upstreams: tuple[Upstream, ...] = (),
    drain_hook: bool = False,
) -> Json:
    probes = list(probes)
    checks = [_drain()] if drain_hook else []
    checks += [_identity_report(mtls)] if mtls else []
    checks.append(_connect_check(APP_HEALTH_PATH, socket_ports))
    checks += [_connect_check(p.path, [p.port]) for p in probes if p.connect_only]
    checks.append(_transport_report(ports))
    if mtls:
        checks += [_mtls_report(mtls, ports), _upstream_report(upstreams)]
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
