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
from typing import TypeVar

from webhook.engine.annotations import Overrides
from webhook.engine.config import MeshConfig

T = TypeVar("T")


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

    @property
    def cni(self) -> bool:
        return self.interception == "cni"


def _set(override: T | None, default: T) -> T:
    """The annotation's value where the pod sets one, else the mesh config's."""
    return default if override is None else override


def _given(override: T | None, default: T) -> T:
    """The same, but an empty or zero annotation value also means the mesh config's: the
    image, log level, socket path template and resources have always read so."""
    return override or default


def resolve(overrides: Overrides, config: MeshConfig) -> Settings:
    o, resources = overrides, config.resources
    return Settings(
        interception=_set(o.interception, config.interception),
        native_sidecar=_set(o.native_sidecar, config.native_sidecar),
        drain_seconds=_set(o.drain_duration, config.drain_duration),
        image=_given(o.image, config.proxy_image),
        log_level=_given(o.log_level, config.log_level),
        concurrency=_set(o.concurrency, config.concurrency),
        cpu=_given(o.cpu, resources.cpu),
        memory=_given(o.memory, resources.memory),
        cpu_limit=_given(o.cpu_limit, resources.cpu_limit),
        memory_limit=_given(o.memory_limit, resources.memory_limit),
        rewrite_probes=_set(o.rewrite_probes, True),
        mtls_mode=_set(o.mtls, config.mtls.default_mode),
        upstream=_set(o.upstream, config.upstream),
        uds_path=_given(o.uds_path, config.uds_path),
        include_inbound_ports=_set(o.include_inbound_ports, config.include_inbound_ports),
        exclude_inbound_ports=_set(o.exclude_inbound_ports, config.exclude_inbound_ports),
        exclude_outbound_ports=_set(o.exclude_outbound_ports, config.exclude_outbound_ports),
        include_outbound_ip_ranges=_set(
            o.include_outbound_ip_ranges, config.include_outbound_ip_ranges
        ),
        exclude_outbound_ip_ranges=_set(
            o.exclude_outbound_ip_ranges, config.exclude_outbound_ip_ranges
        ),
    )
