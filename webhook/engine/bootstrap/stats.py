"""Which Envoy stats the sidecar keeps.

A stock Envoy creates about a hundred counters, gauges and histograms per cluster; with a
cluster per declared upstream that is most of the sidecar's memory. We keep the ones
operators chart and alert on, per cluster, and everything that does not grow with the
number of upstreams. Traffic stats are also created only when a cluster first carries
traffic (``deferred_stat_options`` in the bootstrap), so an idle upstream costs no stats.
"""

from __future__ import annotations

from webhook.engine.json_object import Json

CLUSTER_STATS = (
    "upstream_rq_total",
    "upstream_rq_completed",
    "upstream_rq_time",
    "upstream_rq_timeout",
    "upstream_rq_retry",
    "upstream_rq_pending_overflow",
    "upstream_rq_[1-5]xx",
    "upstream_cx_total",
    "upstream_cx_active",
    "upstream_cx_connect_fail",
    "upstream_cx_overflow",
    "membership_healthy",
    "membership_total",
    "outlier_detection\\.ejections_active",
    "health_check\\.(healthy|failure)",
    "ssl\\.(handshake|connection_error|fail_verify_(error|san|no_cert))",
)
UNBOUNDED_PREFIXES = (
    "server.",
    "cluster_manager.",
    "listener_manager.",
    "listener.",
    "http.",
    "tcp.",
    "runtime.",
    "outbound.",
)
"""outbound.: the refused-egress counters, at most one per port (outbound.REFUSED_PORTS_COUNTED)."""


def stats_config() -> Json:
    per_cluster = "^cluster\\..+\\.(" + "|".join(CLUSTER_STATS) + ")$"
    matchers: list[Json] = [{"safe_regex": {"regex": per_cluster}}]
    matchers += [{"prefix": prefix} for prefix in UNBOUNDED_PREFIXES]
    return {"stats_matcher": {"inclusion_list": {"patterns": matchers}}}
