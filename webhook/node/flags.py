"""The ``init-iptables`` flags: one parser for what ``proxy-init`` is given on its command line
and what the CNI agent reads from a pod's ``proxy.io/interception-spec``."""

from __future__ import annotations

import argparse

from webhook.engine.names import INBOUND_PORT, OUTBOUND_PORT, PROXY_GID, PROXY_UID
from webhook.node.interception import Interception


def add_to(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy-uid", type=int, default=PROXY_UID, help="the proxy's UID, whose traffic passes"
    )
    parser.add_argument(
        "--proxy-gid", type=int, default=PROXY_GID, help="the proxy's GID, whose traffic passes"
    )
    parser.add_argument(
        "--inbound-capture-port", type=int, default=INBOUND_PORT, help="Envoy's inbound listener"
    )
    parser.add_argument(
        "--outbound-capture-port",
        type=int,
        default=OUTBOUND_PORT,
        help="Envoy's outbound listener",
    )
    parser.add_argument(
        "--include-inbound-ports",
        default="*",
        help="inbound ports redirected (comma-separated, or *)",
    )
    parser.add_argument(
        "--exclude-inbound-ports", default="", help="inbound ports that bypass Envoy"
    )
    parser.add_argument(
        "--exclude-outbound-ports", default="", help="outbound destination ports that bypass Envoy"
    )
    parser.add_argument(
        "--include-outbound-ip-ranges",
        default="*",
        help="outbound destinations redirected (CIDRs, or *)",
    )
    parser.add_argument(
        "--exclude-outbound-ip-ranges", default="", help="outbound CIDRs that bypass Envoy"
    )


def from_args(args: argparse.Namespace) -> Interception:
    """Raises ValueError naming the flag."""
    return Interception.parse(
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        inbound_capture_port=args.inbound_capture_port,
        outbound_capture_port=args.outbound_capture_port,
        include_inbound_ports=args.include_inbound_ports,
        exclude_inbound_ports=args.exclude_inbound_ports,
        exclude_outbound_ports=args.exclude_outbound_ports,
        include_outbound_ip_ranges=args.include_outbound_ip_ranges,
        exclude_outbound_ip_ranges=args.exclude_outbound_ip_ranges,
    )


def parse(flags: list[str]) -> Interception:
    """A flag list (as in ``proxy.io/interception-spec``) as an ``Interception``. Raises
    ValueError naming the flag."""
    parser = argparse.ArgumentParser(prog="init-iptables", add_help=False, exit_on_error=False)
    add_to(parser)
    try:
        args, unknown = parser.parse_known_args(flags)
    except argparse.ArgumentError as exc:
        raise ValueError(f"init-iptables flags: {exc}") from None
    if unknown:
        raise ValueError(f"init-iptables flags: unknown {' '.join(unknown)!r}")
    return from_args(args)
