"""``proxy-injector signer``: the certificate signer for the mesh's pod certificates, and
``signer rotate-ca`` to roll its CA."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

from webhook.cli.args import seconds, span
from webhook.common import mesh_config
from webhook.engine import config


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config", type=Path, help="mesh config YAML, or a directory of layers (its mtls section)"
    )
    command.add_argument("--kube-api", help="a plain-HTTP API URL instead of in-cluster config")
    command.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "proxy-system"),
        help="where the CA Secret proxy-mesh-ca and the Lease live (default: POD_NAMESPACE)",
    )


def add_parser(commands: argparse._SubParsersAction) -> None:
    signer = commands.add_parser(
        "signer",
        help="sign the mesh's PodCertificateRequests (SPIFFE identities)",
        description="Answer the PodCertificateRequests for mesh config mtls.signerName: a "
        "SPIFFE leaf for the pod's service account, or a denial with its reason. Replicas "
        "elect one leader through a Lease.",
    )
    _common(signer)
    signer.add_argument(
        "--create-ca",
        action="store_true",
        help="make the CA (ECDSA P-256, 10 years) in secret proxy-mesh-ca when it is absent",
    )
    signer.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's name in the Lease (default: POD_NAME, else the host name)",
    )
    signer.add_argument(
        "--lease-seconds",
        type=seconds,
        default=15.0,
        help="the leader Lease's duration: how soon another replica takes over",
    )
    signer.add_argument("--http-host", default="0.0.0.0", help="address of the HTTP port")
    signer.add_argument("--http-port", type=int, default=9966, help="/healthz, /readyz, /metrics")
    signer.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least level logged",
    )
    signer.set_defaults(run=_run)
    actions = signer.add_subparsers(dest="action", help="rotate-ca; none: run the signer")
    rotate = actions.add_parser(
        "rotate-ca",
        help="add a new CA to the trust bundle now, issuing from it after --after",
        description="A new CA goes into the trust bundle at once; the signer issues from it "
        "only after --after (default: mesh config mtls.maxExpirationSeconds, the longest leaf "
        "lifetime), and drops the old CA once no leaf it signed can still be valid.",
    )
    _common(rotate)
    rotate.add_argument("--after", type=span, help="e.g. 24h (default: the longest leaf lifetime)")
    rotate.set_defaults(run=_rotate)


def _mesh(args: argparse.Namespace, command: str) -> config.MeshConfig | None:
    try:
        return mesh_config.load(args.config) if args.config else config.MeshConfig()
    except config.ConfigError as exc:
        print(f"proxy-injector {command}: {exc}", file=sys.stderr)
        return None


def _api(args: argparse.Namespace) -> Any:
    from webhook.kube.api import Api

    agent = f"proxy-injector-signer/{getattr(args, 'identity', '') or 'cli'}"
    return Api.from_url(args.kube_api, agent) if args.kube_api else Api.in_cluster(agent)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from webhook.signer import service

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    mesh = _mesh(args, "signer")
    if mesh is None:
        return 2
    options = service.Options(
        namespace=args.namespace,
        identity=args.identity,
        create_ca=args.create_ca,
        lease_seconds=args.lease_seconds,
    )
    try:
        asyncio.run(service.serve(_api(args), mesh, options, args.http_host, args.http_port))
    except (ValueError, OSError) as exc:
        print(f"proxy-injector signer: {exc}", file=sys.stderr)
        return 2
    return 0


def _rotate(args: argparse.Namespace) -> int:
    import asyncio

    from webhook.signer import service

    mesh = _mesh(args, "signer rotate-ca")
    if mesh is None:
        return 2
    after = args.after if args.after is not None else float(mesh.mtls.max_expiration_seconds)
    try:
        message = asyncio.run(service.rotate_ca(_api(args), args.namespace, after))
    except (ValueError, OSError) as exc:
        print(f"proxy-injector signer rotate-ca: {exc}", file=sys.stderr)
        return 2
    print(message)
    return 0
