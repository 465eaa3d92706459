"""When the proxy starts and stops relative to the app.

A native sidecar (Kubernetes 1.29+) gets the order from the kubelet: started before the
app, stopped only once the app has exited. It needs no hook: with the app gone there is
nothing left to drain, and a proxy that went on accepting would only turn the connections
of clients that have not yet seen the pod leave into 503s instead of refusals they retry
elsewhere at once. A regular proxy container is stopped together with the app, so two
hooks give it the order:

- start-up (``proxy.io/hold-application-until-proxy-starts``): the proxy is the first
  container and its postStart hook returns only once Envoy is ready; the kubelet starts
  the next container only then;
- shutdown: the kubelet sends SIGTERM to the app and runs the proxy's preStop hook at the
  same time. The hook drains the inbound listeners (clients are told to close their
  connections) and returns, so the proxy is stopped, only once the drain duration has
  passed and the app holds no connection through the proxy any more: its in-flight
  requests, inbound or outbound, have finished. The pod's grace period bounds the wait.

Both hooks talk to Envoy on loopback from bash (``/dev/tcp``), as the envoyproxy/envoy
image has it; the distroless image has no shell. Envoy's admin API is a Unix socket only
the proxy's UID may open, which bash cannot speak to: the drain goes through the
readiness port's ``/drain``, which acts only once the hook has created ``DRAIN_FLAG`` in
the proxy's own volume (nothing else in the pod can), and the app's connections are
read from the Prometheus port.
"""

from __future__ import annotations

import math
from urllib.parse import quote

from webhook.engine.json_object import Json
from webhook.engine.names import (
    DRAIN_FLAG,
    DRAIN_PATH,
    PROMETHEUS_PATH,
    PROMETHEUS_PORT,
    READINESS_PATH,
    READINESS_PORT,
)

_HTTP = (
    # `http PORT METHOD PATH` prints Envoy's answer. A read gives up after 2 s, so a hung
    # Envoy cannot hold a hook's loop past its bound.
    "http() { exec 3<>/dev/tcp/127.0.0.1/$1 && printf "
    "'%s %s HTTP/1.1\\r\\nHost: proxy\\r\\nConnection: close\\r\\n\\r\\n' "
    '"$2" "$3" >&3 && while IFS= read -r -t 2 line; do echo "$line"; done <&3; }; '
)

HOLD_UNTIL_READY = (
    _HTTP + "for i in $(seq 300); do "
    f"http {READINESS_PORT} GET {READINESS_PATH} 2>/dev/null | head -n 1 | grep -q ' 200 ' "
    "&& exit 0; sleep 0.2; done; echo 'Envoy not ready after 60s' >&2; exit 1"
)

APP_CONNECTIONS = (
    r"^(cluster\.inbound[^.]*\.upstream_cx_active"
    r"|listener\.outbound(_uds)?\.downstream_cx_active)$"
)
"""Envoy's gauges of connections that belong to the app: Envoy to the app's ports and
sockets, and the app to the outbound listeners."""

_APP_CONNECTIONS = (
    # Prometheus lines: envoy_cluster_upstream_cx_active{envoy_cluster_name="inbound|8080"} 2
    "app_connections() { local n=0 line; while IFS= read -r line; do "
    "[[ $line =~ ^envoy_[a-z_]+\\{.*\\}\\ ([0-9]+) ]] && "
    "n=$((n + BASH_REMATCH[1])); "
    f"done < <(http {PROMETHEUS_PORT} GET "
    f"'{PROMETHEUS_PATH}?usedonly&filter={quote(APP_CONNECTIONS, safe='')}' 2>/dev/null); "
    "echo $n; }; "
)


def outlive_the_app(drain_seconds: float, grace_seconds: int) -> str:
    """The preStop script of a regular proxy container (see the module's docstring)."""
    return (
        _HTTP
        + _APP_CONNECTIONS
        + f": > {DRAIN_FLAG}; http {READINESS_PORT} POST {DRAIN_PATH} >/dev/null 2>&1; "
        + "held=unknown; "
        f"for ((i = 1; i <= {2 * grace_seconds}; i++)); do "
        f"(( i > {2 * math.ceil(drain_seconds)} )) && {{ held=$(app_connections); "
        "(( held == 0 )) && exit 0; }; sleep 0.5; done; "
        'echo "the app still holds $held connection(s) through the proxy after '
        f'{grace_seconds}s" >&2; exit 1'
    )


def drains(native: bool, drain_seconds: float) -> bool:
    """Whether the proxy gets the preStop hook that drains it (and so :15021/drain)."""
    return not native and drain_seconds >= 1


def stopping_after_the_app(
    proxy: Json, *, native: bool, drain_seconds: float, grace_seconds: int
) -> Json:
    """The proxy's preStop hook: none for a native sidecar (see the module's docstring)."""
    if not drains(native, drain_seconds):
        return proxy
    return _with_hook(proxy, "preStop", _bash(outlive_the_app(drain_seconds, grace_seconds)))


def grace_warnings(native: bool, drain_seconds: float, grace_seconds: int) -> tuple[str, ...]:
    if native or drain_seconds <= grace_seconds:
        return ()
    return (
        f"the proxy's drain duration ({drain_seconds:g}s) is longer than the pod's "
        f"terminationGracePeriodSeconds ({grace_seconds}); the kubelet stops the proxy "
        "when the grace period ends",
    )


def holding_the_app(proxy: Json) -> Json:
    return _with_hook(proxy, "postStart", _bash(HOLD_UNTIL_READY))


def _with_hook(proxy: Json, kind: str, hook: Json) -> Json:
    return {**proxy, "lifecycle": {**proxy.get("lifecycle", {}), kind: hook}}


def _bash(script: str) -> Json:
    return {"exec": {"command": ["bash", "-c", script]}}
