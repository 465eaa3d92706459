"""The settings a pod takes from its ``proxy.io/*`` annotations, else from the mesh config,
resolved in one place, once per pod: the stages and the modules they call read
``Settings``, never the two sources side by side.

What only an annotation sets (``proxy.io/upstreams``, ``proxy.io/allow-from``...) is read
from ``Overrides`` itself; so is which source a value came from, where a message must name
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from webhook.engine.annotations import Overrides
from webhook.engine.config import MeshConfig


@dataclass(frozen=True, slots=True)
class Settings:
    interception: str
    """init-container or cni."""
    native_sidecar: bool
    drain_seconds: float
    image: str
    log_level: str
    concurrency: int | None
    """None: from the proxy's CPU limit."""
    cpu: Decimal
    memory: Decimal
    cpu_limit: Decimal
    memory_limit: Decimal
    rewrite_probes: bool
    mtls_mode: str
    upstream: str
    """auto, uds or tcp."""
    uds_path: str
    include_inbound_ports: tuple[int, ...] | str
    exclude_inbound_ports: tuple[int, ...]
    exclude_outbound_ports: tuple[int, ...]
    include_outbound_ip_ranges: tuple[str, ...] | str
    exclude_outbound_ip_ranges: tuple[str, ...]
    outbound_policy: str
    """allow-any or declared-only."""
    access_log: str
    """off, text or json."""
    trace_sampling: float
    """Percent."""

    @property
    def cni(self) -> bool:
        return self.interception == "cni"


def resolve(overrides: Overrides, config: MeshConfig) -> Settings:
    """Each field: the annotation's value where the pod sets one, else the mesh config's.
    The image, log level, socket path template and resources also take the mesh config's
    for an empty or zero annotation value, as they always have. On every admission:
    written out rather than looped over, which costs a third as much."""
    o, r = overrides, config.resources
    return Settings(
        interception=config.interception if o.interception is None else o.interception,
        native_sidecar=config.native_sidecar if o.native_sidecar is None else o.native_sidecar,
        drain_seconds=config.drain_duration if o.drain_duration is None else o.drain_duration,
        image=o.image or config.proxy_image,
        log_level=o.log_level or config.log_level,
        concurrency=config.concurrency if o.concurrency is None else o.concurrency,
        cpu=o.cpu or r.cpu,
        memory=o.memory or r.memory,
        cpu_limit=o.cpu_limit or r.cpu_limit,
        memory_limit=o.memory_limit or r.memory_limit,
        rewrite_probes=True if o.rewrite_probes is None else o.rewrite_probes,
        mtls_mode=config.mtls.default_mode if o.mtls is None else o.mtls,
        upstream=config.upstream if o.upstream is None else o.upstream,
        uds_path=o.uds_path or config.uds_path,
        include_inbound_ports=config.include_inbound_ports
        if o.include_inbound_ports is None
        else o.include_inbound_ports,
        exclude_inbound_ports=config.exclude_inbound_ports
        if o.exclude_inbound_ports is None
        else o.exclude_inbound_ports,
        exclude_outbound_ports=config.exclude_outbound_ports
        if o.exclude_outbound_ports is None
        else o.exclude_outbound_ports,
        include_outbound_ip_ranges=config.include_outbound_ip_ranges
        if o.include_outbound_ip_ranges is None
        else o.include_outbound_ip_ranges,
        exclude_outbound_ip_ranges=config.exclude_outbound_ip_ranges
        if o.exclude_outbound_ip_ranges is None
        else o.exclude_outbound_ip_ranges,
        outbound_policy=config.outbound.policy if o.outbound_policy is None else o.outbound_policy,
        access_log=config.access_log.format if o.access_log is None else o.access_log,
        trace_sampling=config.tracing.sampling_percent
        if o.trace_sampling is None
        else o.trace_sampling,
    )
