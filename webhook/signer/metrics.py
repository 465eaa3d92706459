"""The signer's Prometheus metrics, in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RESULTS = ("issued", "denied", "failed", "conflict", "error")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SignerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "proxy_signer_requests",
            "PodCertificateRequests for our signer name answered, by result (issued, denied, "
            "failed; conflict: another replica answered first; error: the API failed).",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.requests.labels(result)
        self.issue_seconds = Histogram(
            "proxy_signer_issue_duration_seconds",
            "From the request's creation to its answer written.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ca_expiry = Gauge(
            "proxy_signer_ca_expiry_timestamp_seconds",
            "When the issuing CA expires (Unix time).",
            registry=self.registry,
        )
        self.pending = Gauge(
            "proxy_signer_pending_requests",
            "Requests for our signer name waiting for an answer or being answered (leader).",
            registry=self.registry,
        )
        self.leader = Gauge(
            "proxy_signer_leader",
            "1 while this replica holds the Lease and answers requests.",
            registry=self.registry,
        )
