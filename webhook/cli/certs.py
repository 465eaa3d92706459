"""`proxy-injector certs create|check`: the webhook's certificates (``certs/``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser(
        "certs",
        help="make and check the webhook's certificates",
        description="Example: proxy-injector certs check --cert tls.crt --ca ca.crt "
        "--name proxy-injector.proxy-system.svc",
    )
    actions = certs.add_subparsers(dest="action", required=True, help="create or check")
    create = actions.add_parser("create", help="a CA and a serving certificate for a Service")
    create.add_argument("--service", required=True, help="the webhook's Service name")
    create.add_argument("--namespace", required=True, help="the Service's namespace")
    create.add_argument(
        "--out", type=Path, required=True, help="folder for ca.crt, tls.crt and tls.key"
    )
    create.add_argument("--days", type=int, default=365, help="the certificate's lifetime")
    create.add_argument(
        "--cluster-domain", default="cluster.local", help="for the certificate's DNS names"
    )
    create.set_defaults(run=_certs_create)
    check = actions.add_parser("check", help="is this serving certificate good to use?")
    check.add_argument("--cert", type=Path, required=True, help="the serving certificate (PEM)")
    check.add_argument("--ca", type=Path, required=True, help="the CA bundle that must verify it")
    check.add_argument("--name", help="a name the certificate must be valid for")
    check.set_defaults(run=_certs_check)


def _certs_create(args: argparse.Namespace) -> int:
    from certs.authority import write_for_service
    from webhook.engine import values

    problems = []
    for flag, value in (
        ("--service", args.service),
        ("--namespace", args.namespace),
        ("--cluster-domain", args.cluster_domain),
    ):
        try:
            values.dns_name(value)
        except ValueError as exc:
            problems.append(f"{flag}: {exc}")
    if not 1 <= args.days <= 3650:
        problems.append(f"--days: {args.days} is not 1 to 3650")
    if problems:
        print("proxy-injector certs create: " + "; ".join(problems), file=sys.stderr)
        return 2
    files = write_for_service(
        args.out, args.service, args.namespace, args.cluster_domain, args.days
    )
    print(f"CA: {files.ca}\ncertificate: {files.cert}\nkey: {files.key}")
    return 0


def _certs_check(args: argparse.Namespace) -> int:
    from certs.check import check

    try:
        report = check(args.cert, args.ca, args.name)
    except ValueError as exc:
        print(f"proxy-injector certs check: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 1 if report.problems else 0
