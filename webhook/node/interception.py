"""The rules that send a pod's TCP through Envoy: rendered as ``iptables-restore`` input.

Pure: from the ``init-iptables`` flags to text, one document per IP family. Applying them
(``webhook/iptables.py``) is a thin shell around this.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from webhook.engine import values
from webhook.engine.names import PROXY_PORTS

INBOUND = "PROXY_INBOUND"
IN_REDIRECT = "PROXY_IN_REDIRECT"
OUTPUT = "PROXY_OUTPUT"
REDIRECT = "PROXY_REDIRECT"
CHAINS = (INBOUND, IN_REDIRECT, OUTPUT, REDIRECT)
JUMPS = (("PREROUTING", INBOUND), ("OUTPUT", OUTPUT))
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
PASSTHROUGH_SOURCE = {4: "127.0.0.6/32", 6: "::6/128"}


@dataclass(frozen=True, slots=True)
class Interception:
    proxy_uid: int
    proxy_gid: int
    inbound_capture_port: int
    outbound_capture_port: int
    include_inbound_ports: tuple[int, ...] | str
    exclude_inbound_ports: tuple[int, ...]
    exclude_outbound_ports: tuple[int, ...]
    include_outbound_ip_ranges: tuple[str, ...] | str
    exclude_outbound_ip_ranges: tuple[str, ...]

    @classmethod
    def parse(
        cls,
        *,
        proxy_uid: int,
        proxy_gid: int,
        inbound_capture_port: int,
        outbound_capture_port: int,
        include_inbound_ports: str,
        exclude_inbound_ports: str,
        exclude_outbound_ports: str,
        include_outbound_ip_ranges: str,
        exclude_outbound_ip_ranges: str,
    ) -> Interception:
        """From the flag strings; raises ValueError naming the flag."""

        def flag(name: str, parse, text: str):
            try:
                return parse(text)
            except ValueError as exc:
                raise ValueError(f"--{name.replace('_', '-')} {text!r}: {exc}") from None

        return cls(
            proxy_uid,
            proxy_gid,
            inbound_capture_port,
            outbound_capture_port,
            flag("include_inbound_ports", values.ports_or_all, include_inbound_ports),
            flag("exclude_inbound_ports", values.ports, exclude_inbound_ports),
            flag("exclude_outbound_ports", values.ports, exclude_outbound_ports),
            flag("include_outbound_ip_ranges", values.cidrs_or_all, include_outbound_ip_ranges),
            flag("exclude_outbound_ip_ranges", values.cidrs, exclude_outbound_ip_ranges),
        )

    def wants_ipv6(self) -> bool:
        """True when a flag names an IPv6 range: then IPv6 rules are required, not optional."""
        ranges = [*self.exclude_outbound_ip_ranges]
        if self.include_outbound_ip_ranges != values.ALL:
            ranges += self.include_outbound_ip_ranges
        return any(ipaddress.ip_network(r).version == 6 for r in ranges)


def _of_family(ranges: Iterable[str], family: int) -> list[str]:
    return [r for r in ranges if ipaddress.ip_network(r).version == family]


def _inbound(spec: Interception) -> list[str]:
    skip = sorted({*spec.exclude_inbound_ports, *PROXY_PORTS})
    rules = [f"-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {spec.inbound_capture_port}"]
    if spec.include_inbound_ports == values.ALL:
        rules += [f"-A {INBOUND} -p tcp --dport {port} -j RETURN" for port in skip]
        rules.append(f"-A {INBOUND} -p tcp -j {IN_REDIRECT}")
    else:
        rules += [
            f"-A {INBOUND} -p tcp --dport {port} -j {IN_REDIRECT}"
            for port in spec.include_inbound_ports
            if port not in skip
        ]
    return rules


def _outbound(spec: Interception, family: int) -> list[str]:
    rules = [
        f"-A {REDIRECT} -p tcp -j REDIRECT --to-ports {spec.outbound_capture_port}",
        # Envoy's own traffic, including its inbound passthrough to loopback, never loops back.
        f"-A {OUTPUT} -o lo -s {PASSTHROUGH_SOURCE[family]} -j RETURN",
        f"-A {OUTPUT} -m owner --uid-owner {spec.proxy_uid} -j RETURN",
        f"-A {OUTPUT} -m owner --gid-owner {spec.proxy_gid} -j RETURN",
        f"-A {OUTPUT} -d {LOOPBACK[family]} -j RETURN",
    ]
    rules += [
        f"-A {OUTPUT} -p tcp --dport {port} -j RETURN" for port in spec.exclude_outbound_ports
    ]
    rules += [
        f"-A {OUTPUT} -d {cidr} -j RETURN"
        for cidr in _of_family(spec.exclude_outbound_ip_ranges, family)
    ]
    if spec.include_outbound_ip_ranges == values.ALL:
        rules.append(f"-A {OUTPUT} -p tcp -j {REDIRECT}")
    else:
        rules += [
            f"-A {OUTPUT} -d {cidr} -p tcp -j {REDIRECT}"
            for cidr in _of_family(spec.include_outbound_ip_ranges, family)
        ]
    return rules


def jump_rule(builtin: str, chain: str) -> str:
    return f"-A {builtin} -p tcp -j {chain}"


def render(spec: Interception, family: int, existing_jumps: Iterable[str] = ()) -> str:
    """``iptables-restore --noflush`` input for one family. Declaring our chains empties
    them, so a re-run replaces our rules; jumps already present are not added again."""
    present = set(existing_jumps)
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS)]
    lines += _inbound(spec)
    lines += _outbound(spec, family)
    lines += [jump_rule(b, c) for b, c in JUMPS if jump_rule(b, c) not in present]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
