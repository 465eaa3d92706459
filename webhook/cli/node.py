"""What runs on a node or in a pod: `init-iptables` (proxy-init), `validate-interception`
(proxy-validate) and `cni agent` (the flags; the code is ``webhook.node``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from webhook.cli.args import seconds
from webhook.common import mesh_config
from webhook.engine import config
from webhook.engine.names import OUTBOUND_PORT
from webhook.node import flags


def _add_sds_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sds-dir", type=Path, help="mTLS: write the proxy's SDS files (--sds-file) here first"
    )
    parser.add_argument(
        "--sds-file",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an SDS file to write into --sds-dir (repeatable)",
    )


def _write_sds(args: argparse.Namespace) -> None:
    """Raises ValueError or OSError naming what it could not write."""
    from webhook.node import sds

    files = sds.parse(args.sds_file)
    if files and args.sds_dir is None:
        raise ValueError("--sds-file needs --sds-dir")
    if args.sds_dir is not None:
        sds.write(args.sds_dir, files)


def _init_iptables_parser(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser(
        "init-iptables",
        help="program the pod's network namespace to send TCP through Envoy",
        description="Example: proxy-injector init-iptables --exclude-outbound-ports 5432 --dry-run",
    )
    flags.add_to(init)
    init.add_argument(
        "--iptables-backend",
        choices=["auto", "nft", "legacy"],
        default="auto",
        help="which iptables the node uses (auto: detect, as istio-init does)",
    )
    init.add_argument(
        "--dry-run", action="store_true", help="print the rules instead of applying them"
    )
    _add_sds_flags(init)
    init.set_defaults(run=_init_iptables)


def _init_iptables(args: argparse.Namespace) -> int:
    from webhook.node import iptables
    from webhook.node.interception import render

    try:
        spec = flags.from_args(args)
        if args.dry_run:
            wanted = [4, 6] if spec.wants_ipv6() or iptables.ipv6_available() else [4]
            for family in wanted:
                print(f"# IPv{family}\n{render(spec, family)}", end="")
            return 0
        _write_sds(args)
        backend = (
            iptables.detect_backend() if args.iptables_backend == "auto" else args.iptables_backend
        )
        documents = iptables.plan(spec, backend)
        iptables.apply(documents, backend)
    except (ValueError, OSError, iptables.InterceptionError) as exc:
        print(f"proxy-injector init-iptables: {exc}", file=sys.stderr)
        return 1
    for family, document in documents.items():
        print(f"# IPv{family}, iptables-{backend}, applied\n{document}", end="")
    return 0


def _validate_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate-interception",
        help="check that the pod's traffic is redirected to the proxy (proxy-validate)",
        description="Example: proxy-injector validate-interception --connect 192.0.2.1:80 "
        "(exit code 95: not redirected)",
    )
    validate.add_argument("--connect", required=True, help="ADDRESS:PORT the rules redirect")
    validate.add_argument(
        "--outbound-capture-port",
        type=int,
        default=OUTBOUND_PORT,
        help="where the rules should send the connection (Envoy's outbound listener)",
    )
    validate.add_argument(
        "--timeout", type=seconds, default=5.0, help="seconds to wait for the redirected connection"
    )
    _add_sds_flags(validate)
    validate.set_defaults(run=_validate_interception)


def _validate_interception(args: argparse.Namespace) -> int:
    from webhook.node import validate

    try:
        _write_sds(args)
        address, port = validate.target(args.connect)
        print(validate.check(address, port, args.outbound_capture_port, args.timeout))
    except (ValueError, OSError, validate.CheckFailed) as exc:
        print(f"proxy-injector validate-interception: {exc}", file=sys.stderr)
        missing = isinstance(exc, validate.NotRedirected)
        return validate.NOT_REDIRECTED_EXIT if missing else 1
    return 0


def _cni_parser(commands: argparse._SubParsersAction) -> None:
    plugin = commands.add_parser(
        "cni",
        help="cni agent: the proxy-injector-cni DaemonSet's process (puts the plugin on the "
        "node, serves it, repairs pods that started without it)",
        description="Example: proxy-injector cni agent --config /etc/proxy-injector/mesh.yaml",
    )
    plugin.add_argument(
        "action", choices=["agent", "install"], help="install: the same as agent (older manifests)"
    )
    plugin.add_argument(
        "--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"), help="the node's CNI plugins"
    )
    plugin.add_argument(
        "--cni-conf-dir",
        type=Path,
        default=Path("/etc/cni/net.d"),
        help="the node's CNI network configurations, whose first conflist is chained",
    )
    plugin.add_argument(
        "--relay",
        type=Path,
        default=Path("/opt/proxy-injector/lib/cni-relay"),
        help="the static relay to copy into --cni-bin-dir (built in the image)",
    )
    plugin.add_argument(
        "--socket",
        type=Path,
        default=Path("/var/run/proxy-injector/cni.sock"),
        help="the agent's socket (its directory is made root-only)",
    )
    plugin.add_argument(
        "--log-file",
        type=Path,
        default=Path("/var/log/proxy-injector-cni.log"),
        help="where the relay says it passed a pod through because the agent was away",
    )
    plugin.add_argument(
        "--config", type=Path, help="mesh config YAML, or a directory of layers (its cni section)"
    )
    plugin.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node (default: NODE_NAME); without it, no pod cache, repair or untaint",
    )
    plugin.add_argument("--kube-api", help="a plain-HTTP API URL instead of in-cluster config")
    plugin.add_argument("--interval", type=seconds, default=5.0, help="conflist check period")
    plugin.add_argument(
        "--iptables-backend",
        choices=["auto", "nft", "legacy"],
        default="auto",
        help="which iptables the node uses (auto: detect)",
    )
    plugin.add_argument("--http-host", default="0.0.0.0", help="address of the HTTP port")
    plugin.add_argument("--http-port", type=int, default=9964, help="/healthz, /readyz, /metrics")
    plugin.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least level logged",
    )
    plugin.set_defaults(run=_cni)


def _cni(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from webhook.node import daemon, install

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        mesh = mesh_config.load(args.config) if args.config else config.MeshConfig()
    except config.ConfigError as exc:
        print(f"proxy-injector cni {args.action}: {exc}", file=sys.stderr)
        return 2
    installation = install.Installation(
        args.cni_bin_dir,
        args.cni_conf_dir,
        args.relay,
        args.socket,
        args.log_file,
        mesh.cni.add_timeout,
    )
    options = daemon.Options(
        installation,
        args.node_name,
        args.kube_api,
        args.interval,
        args.iptables_backend,
        args.http_host,
        args.http_port,
    )
    try:
        asyncio.run(daemon.serve(options, mesh))
    except (ValueError, OSError) as exc:
        print(f"proxy-injector cni {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    _init_iptables_parser(commands)
    _validate_parser(commands)
    _cni_parser(commands)
