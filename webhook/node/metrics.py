"""The CNI agent's Prometheus metrics, in a registry of their own."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REPAIR_ACTIONS = ("deleted", "labelled", "failed")
disable_created_metrics()  # as the webhook's: nothing here is ever reset


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "proxy_injector_cni_requests",
            "CNI requests the agent answered, by command and outcome (meshed, passed_through, "
            "checked, ok, error).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "proxy_injector_cni_request_duration_seconds",
            "Time from the relay's connection to the agent's answer.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.repairs = Counter(
            "proxy_injector_cni_repairs",
            "Pods found started without their interception, by what the repair loop did "
            "(deleted, labelled, failed).",
            ["action"],
            registry=self.registry,
        )
        for action in REPAIR_ACTIONS:
            self.repairs.labels(action)
        self.cached_pods = Gauge(
            "proxy_injector_cni_cached_pods",
            "Pods of this node the agent holds in its cache (read by ADD without an API call).",
            registry=self.registry,
        )
        self.installed = Gauge(
            "proxy_injector_cni_installed",
            "1 while the plugin is the last of the node's active CNI conflist.",
            registry=self.registry,
        )
