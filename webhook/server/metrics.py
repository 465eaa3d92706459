"""The webhook's Prometheus metrics, in a registry of its own.

Admissions are counted by decision and reason code (the codes of ``reasons.Reason``). The
counter's children are made once per pair, so the admission path pays a dict lookup and
two increments.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from webhook import __version__
from webhook.engine.config import MeshConfig

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no *_created series: nothing here is ever reset
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "proxy_injector_admissions",
            "Admission reviews answered, by decision and reason code.",
            ["decision", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "proxy_injector_admission_duration_seconds",
            "Time from the request's arrival to its answer.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "proxy_injector_config_reloads",
            "Mesh config files read after a change, by result (ok or error).",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.config_generation = Gauge(
            "proxy_injector_config_generation",
            "A hash of the mesh config in force.",
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "proxy_injector_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time).",
            registry=self.registry,
        )
        self.events = Counter(
            "proxy_injector_events",
            "Kubernetes Events about admissions, by result (sent, failed, dropped).",
            ["result"],
            registry=self.registry,
        )
        for result in ("sent", "failed", "dropped"):
            self.events.labels(result)
        build = Gauge(
            "proxy_injector_build_info", "The running version.", ["version"], registry=self.registry
        )
        build.labels(__version__).set(1)
        self._counted: dict[tuple[str, str], object] = {}

    def admitted(self, decision: str, reason: str, started: float) -> None:
        child = self._counted.get((decision, reason))
        if child is None:
            child = self._counted[decision, reason] = self.admissions.labels(decision, reason)
        child.inc()  # type: ignore[attr-defined]
        self.duration.observe(time.perf_counter() - started)

    def config_in_force(self, config: MeshConfig) -> None:
        self.config_generation.set(int(config.generation[:8], 16))

    def certificate(self, path: Path) -> None:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
        self.certificate_expiry.set(cert.not_valid_after_utc.timestamp())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def event(self, result: str) -> None:
        self.events.labels(result).inc()
