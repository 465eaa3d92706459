"""`inject`, `explain` and `check` (the flags; the code is ``webhook.tools``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from webhook.cli.args import (
    FINDING,
    OK,
    UNREACHABLE,
    byte_count,
    count,
    fail,
    labels,
    seconds,
)
from webhook.common import mesh_config
from webhook.engine import config


def _offline_parsers(commands: argparse._SubParsersAction) -> None:
    for name, help_text in (
        ("inject", "inject the pod templates of Kubernetes documents, as the webhook would"),
        ("explain", "say whether each pod template would be injected, and why"),
    ):
        command = commands.add_parser(
            name, help=help_text, description=f"Example: proxy-injector {name} -f deploy.yaml"
        )
        command.add_argument("-f", "--filename", required=True, help="YAML or JSON file, or -")
        command.add_argument(
            "--config", type=Path, help="mesh config YAML, or a directory of layers"
        )
        command.add_argument("--namespace", help="default: each object's, else default")
        command.add_argument(
            "--all-kinds",
            action="store_true",
            help="also the pod templates found in kinds inject does not know (CRDs)",
        )
        command.add_argument(
            "--max-bytes", type=byte_count, default=64 << 20, help="input cap (default 64 MiB)"
        )
        command.add_argument(
            "--max-documents", type=count, default=10_000, help="documents cap (default 10000)"
        )
        command.add_argument(
            "--namespace-labels",
            type=labels,
            help="the namespace's labels, k=v,...: apply its proxy.io/inject rule (default: "
            "assume the webhook's selectors matched, as in an enabled namespace)",
        )
        if name == "inject":
            command.add_argument("--diff", action="store_true", help="print a unified diff")
            command.set_defaults(run=_inject)
        else:
            command.add_argument(
                "-o", "--output", choices=["text", "json", "yaml"], default="text",
                help="text (default), json or yaml",
            )  # fmt: skip
            command.add_argument(
                "--exit-zero",
                action="store_true",
                help="exit 0 even when a template would be denied (default: exit 1, so a "
                "CI step fails on a manifest the webhook would refuse)",
            )
            command.set_defaults(run=_explain)


def _bootstrap_parser(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "bootstrap",
        help="print the Envoy bootstrap of an injected pod, or of the pod the webhook would make",
        description="Example: kubectl get pod web-0 -o yaml | proxy-injector bootstrap -f -",
    )
    command.add_argument("-f", "--filename", required=True, help="YAML or JSON file, or -")
    command.add_argument("--config", type=Path, help="mesh config YAML, or a directory of layers")
    command.add_argument("--namespace", help="default: the object's, else default")
    command.add_argument(
        "--name", help="the pod or workload of that name (default: the first in the file)"
    )
    command.add_argument(
        "--index",
        type=int,
        default=0,
        help="of the templates found (or named --name), which one, from 0 (default 0)",
    )
    command.set_defaults(run=_bootstrap, max_bytes=64 << 20, max_documents=10_000)


def _bootstrap(args: argparse.Namespace) -> int:
    from webhook.tools import bootstrap
    from webhook.tools.workloads import templates

    _, documents, mesh = _offline_input(args)
    found = [t for document in documents for t in templates(document)]
    if not found:
        fail("bootstrap", f"{args.filename}: no pod or pod template")
    if args.name is not None:
        named = [t for t in found if t.name == args.name]
        if not named:
            listed = ", ".join(sorted({str(t.name) for t in found})[:20])
            fail("bootstrap", f"{args.filename}: no pod or template named {args.name} ({listed})")
        found = named
    if args.index >= len(found):
        fail("bootstrap", f"{args.filename}: --index {args.index}: only {len(found)} template(s)")
    template = found[args.index]
    try:
        chosen = bootstrap.of(template, mesh, args.namespace or template.namespace or "default")
    except bootstrap.NoBootstrap as exc:
        where = f"{args.filename}: {template.kind} {template.name}"
        print(f"proxy-injector bootstrap: {where}: {exc}", file=sys.stderr)
        return FINDING
    planned = bootstrap.plan(template, mesh, args.namespace or template.namespace or "default")
    sys.stdout.write(bootstrap.text(chosen, planned))
    return 0


def _offline_input(args: argparse.Namespace) -> tuple[str, list, config.MeshConfig]:
    from webhook.tools import offline

    try:
        mesh = mesh_config.load(args.config) if args.config else config.MeshConfig()
    except config.ConfigError as exc:
        fail(args.command, str(exc))
    try:
        if args.filename == "-":
            data = sys.stdin.buffer.read(args.max_bytes + 1)
        else:
            with open(args.filename, "rb") as handle:
                data = handle.read(args.max_bytes + 1)
        text = offline.text_of(data, args.max_bytes)
        return text, offline.load(text, args.max_documents), mesh
    except OSError as exc:
        fail(args.command, f"{args.filename}: {exc.strerror}")
    except offline.DocumentError as exc:
        fail(args.command, f"{args.filename}: {exc}")


def _inject(args: argparse.Namespace) -> int:
    from webhook.tools import offline, roundtrip

    text, documents, mesh = _offline_input(args)
    result = offline.inject(documents, mesh, args.namespace, args.namespace_labels, args.all_kinds)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.denials:
        for denial in result.denials:
            print(f"proxy-injector inject: {denial}", file=sys.stderr)
        return FINDING
    written = roundtrip.write(text, result.documents, result.changes)
    sys.stdout.write(offline.diff(text, written) if args.diff else written)
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    import yaml

    from webhook.tools import offline

    _, documents, mesh = _offline_input(args)
    for warning in offline.unknown_kinds(documents, args.all_kinds):
        print(f"warning: {warning}", file=sys.stderr)
    reports = offline.explain(
        documents, mesh, args.namespace, args.namespace_labels, args.all_kinds
    )
    if args.output == "json":
        print(json.dumps(reports, indent=2))
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(reports, sort_keys=False, width=100))
    else:
        sys.stdout.write(offline.explanation_text(reports))
    denied = any(report["decision"] == "deny" for report in reports)
    return FINDING if denied and not args.exit_zero else OK


def _check_parser(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check",
        help="is the installation healthy? (like linkerd check)",
        description="Example: proxy-injector check --namespace proxy-system",
    )
    check.add_argument(
        "--config",
        type=Path,
        help="mesh config YAML (default: the cluster's own, ConfigMap proxy-injector-mesh)",
    )
    _cluster_flags(check)
    check.add_argument(
        "--pre",
        action="store_true",
        help="before installing: the Kubernetes version, your permissions, other mutating "
        "webhooks on pods, Pod Security labels and what mTLS needs (judged with --config, "
        "default: the built-in mesh config)",
    )
    check.add_argument(
        "--egress-interval",
        type=seconds,
        default=5.0,
        help="seconds between the two reads of declared-only pods' refused-egress counters "
        "(default 5)",
    )
    check.add_argument(
        "-o", "--output", choices=["text", "json", "yaml"], default="text",
        help="text (default), json or yaml",
    )  # fmt: skip
    check.set_defaults(run=_check)


def _kube_client(args: argparse.Namespace) -> Any:
    """kubectl's order: --kube-api, else the kubeconfig (--kubeconfig, $KUBECONFIG,
    ~/.kube/config; --context), else in-cluster. Without any, the error says which were
    tried, not only the last."""
    from kubernetes import client
    from kubernetes import config as kube_config

    if args.kube_api:
        configuration = client.Configuration()
        configuration.host = args.kube_api
        return client.ApiClient(configuration)
    try:
        kube_config.load_kube_config(config_file=args.kubeconfig, context=args.context)
    except (kube_config.ConfigException, OSError) as kubeconfig_error:
        if args.kubeconfig or args.context:
            raise ConnectionError(f"kubeconfig: {kubeconfig_error}") from None
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException as incluster_error:
            raise ConnectionError(
                f"no kubeconfig ({kubeconfig_error}) and not in a cluster ({incluster_error})"
            ) from None
    return client.ApiClient()


def _check(args: argparse.Namespace) -> int:
    from webhook.tools import check

    try:
        mesh = mesh_config.load(args.config) if args.config else None
        reader = check.kube_reader(_kube_client(args))
        if args.pre:
            from webhook.tools import preflight

            results = preflight.run(reader, mesh or config.MeshConfig(), args.namespace)
        else:
            target = check.Target(args.namespace, egress_seconds=args.egress_interval)
            results = check.run(reader, mesh, target)
    except config.ConfigError as exc:
        fail("check", str(exc))
    except Exception as exc:
        fail("check", f"cannot read the cluster: {exc}", UNREACHABLE)
    if args.output == "json":
        sys.stdout.write(check.as_json(results) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(check.as_yaml(results))
    else:
        sys.stdout.write(check.text(results))
    return OK if all(r.ok for r in results) else FINDING


def _cluster_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--namespace", default="proxy-system", help="where the injector runs")
    command.add_argument(
        "--kube-api",
        default=None,
        help="a plain-HTTP API URL (kubectl proxy); default: kubeconfig, else in-cluster",
    )
    command.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    command.add_argument("--context", help="kubeconfig context (default: its current one)")


def _version_parser(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "version",
        help="this client's version, and the cluster's parts and sidecars (like istioctl)",
        description="Example: proxy-injector version -o json",
    )
    command.add_argument(
        "--client", action="store_true", help="only this client's version (no cluster)"
    )
    _cluster_flags(command)
    command.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="text (default) or json"
    )
    command.set_defaults(run=_version)


def _version(args: argparse.Namespace) -> int:
    from webhook import __version__
    from webhook.tools import check, versions

    found: dict[str, Any] = {"client": __version__}
    code = OK
    if not args.client:
        try:
            found = versions.report(check.kube_reader(_kube_client(args)), args.namespace)
        except Exception as exc:
            print(f"proxy-injector version: cannot read the cluster: {exc}", file=sys.stderr)
            code = UNREACHABLE
    sys.stdout.write(versions.as_json(found) if args.output == "json" else versions.text(found))
    return code


def add_parsers(commands: argparse._SubParsersAction) -> None:
    _offline_parsers(commands)
    _bootstrap_parser(commands)
    _check_parser(commands)
    _version_parser(commands)
