"""The ``proxy-injector`` command: a thin shell over the engine, the app and certs/."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from webhook import __version__
from webhook.engine import config
from webhook.engine.names import OUTBOUND_PORT
from webhook.node import flags
from webhook.serving import Lifecycle, Limits


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the admission webhook over HTTPS")
    serve.add_argument(
        "--self-signed",
        action="store_true",
        help="make a throwaway CA and serving certificate (for local use)",
    )
    serve.add_argument(
        "--certs-dir",
        type=Path,
        help="where --self-signed or --manage-certs write the certificate "
        "(default: a new temporary directory)",
    )
    serve.add_argument("--cert", type=Path, help="serving certificate (PEM)")
    serve.add_argument("--key", type=Path, help="serving key (PEM)")
    serve.add_argument("--config", type=Path, help="mesh config YAML (default: built-in defaults)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    managed = serve.add_argument_group(
        "--manage-certs",
        "keep the serving certificate in a Secret and its CA in the "
        "MutatingWebhookConfiguration (in-cluster)",
    )
    managed.add_argument("--manage-certs", action="store_true")
    managed.add_argument("--service", default="proxy-injector")
    managed.add_argument(
        "--namespace",
        default=None,
        help="default: POD_NAMESPACE, else the service account's namespace",
    )
    managed.add_argument("--secret", default="proxy-injector-tls")
    managed.add_argument("--webhook-configuration", default="proxy-injector")
    managed.add_argument("--cluster-domain", default="cluster.local")
    managed.add_argument("--renew-check-seconds", type=float, default=3600.0)
    managed.add_argument(
        "--kube-api",
        default=None,
        help="a plain-HTTP API URL (kubectl proxy) instead of in-cluster config",
    )
    serve.add_argument(
        "--cert-reload-seconds",
        type=float,
        default=10.0,
        help="how often to look for a renewed certificate (default 10)",
    )
    serve.add_argument(
        "--config-reload-seconds",
        type=float,
        default=5.0,
        help="how often to look for a changed --config file (default 5)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="also serve /metrics over plain HTTP on this port (default: only on the HTTPS port)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    defaults = Limits()
    serve.add_argument(
        "--drain-seconds",
        type=_seconds,
        default=defaults.drain_seconds,
        help="after SIGTERM, how long to go on answering (each response closing its "
        "connection; /readyz fails) before the listener closes (default %(default)g); keep "
        "preStop + this + 16 under terminationGracePeriodSeconds",
    )
    serve.add_argument(
        "--header-timeout-seconds",
        type=_seconds,
        default=defaults.header_timeout,
        help="a request's headers must arrive within this long (default %(default)g)",
    )
    serve.add_argument(
        "--handshake-timeout-seconds",
        type=_seconds,
        default=defaults.handshake_timeout,
        help="a connection's TLS handshake must finish within this long (default %(default)g)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=_byte_count,
        default=defaults.max_header_bytes,
        help="a request's line and headers together, at most (default %(default)d; past it, "
        f"or past {defaults.max_header_fields} header fields, 431 and the connection closed)",
    )
    serve.add_argument(
        "--max-connections",
        type=_count,
        default=defaults.max_connections,
        help="connections at once, those in their TLS handshake included; past it a new one "
        "replaces the oldest still in its handshake, or is closed (default %(default)d)",
    )
    serve.set_defaults(run=_serve)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 to 3600 seconds")
    return value


def _byte_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1 << 30:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes, 1 to 1 GiB")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number 1 to 1000000")
    return int(text)


def _init_iptables_parser(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser(
        "init-iptables", help="program the pod's network namespace to send TCP through Envoy"
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
    init.set_defaults(run=_init_iptables)


def _validate_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate-interception",
        help="check that the pod's traffic is redirected to the proxy (proxy-validate)",
    )
    validate.add_argument("--connect", required=True, help="ADDRESS:PORT the rules redirect")
    validate.add_argument("--outbound-capture-port", type=int, default=OUTBOUND_PORT)
    validate.add_argument("--timeout", type=_seconds, default=5.0)
    validate.set_defaults(run=_validate_interception)


def _validate_interception(args: argparse.Namespace) -> int:
    from webhook.node import validate

    try:
        address, port = validate.target(args.connect)
        print(validate.check(address, port, args.outbound_capture_port, args.timeout))
    except (ValueError, validate.CheckFailed) as exc:
        print(f"proxy-injector validate-interception: {exc}", file=sys.stderr)
        missing = isinstance(exc, validate.NotRedirected)
        return validate.NOT_REDIRECTED_EXIT if missing else 1
    return 0


def _cni_parser(commands: argparse._SubParsersAction) -> None:
    plugin = commands.add_parser(
        "cni",
        help="`cni agent`: the proxy-injector-cni DaemonSet's process (puts the plugin on the "
        "node, serves it, repairs pods that started without it)",
    )
    plugin.add_argument(
        "action", choices=["agent", "install"], help="install: the same as agent (older manifests)"
    )
    plugin.add_argument("--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"))
    plugin.add_argument("--cni-conf-dir", type=Path, default=Path("/etc/cni/net.d"))
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
    plugin.add_argument("--config", type=Path, help="mesh config YAML (its cni section)")
    plugin.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node (default: NODE_NAME); without it, no pod cache, repair or untaint",
    )
    plugin.add_argument("--kube-api", help="a plain-HTTP API URL instead of in-cluster config")
    plugin.add_argument("--interval", type=_seconds, default=5.0, help="conflist check period")
    plugin.add_argument("--iptables-backend", choices=["auto", "nft", "legacy"], default="auto")
    plugin.add_argument("--http-host", default="0.0.0.0")
    plugin.add_argument("--http-port", type=int, default=9964, help="/healthz, /readyz, /metrics")
    plugin.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
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
        mesh = config.load(args.config) if args.config else config.MeshConfig()
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


def _certs_parser(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="make and check the webhook's certificates")
    actions = certs.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a CA and a serving certificate for a Service")
    create.add_argument("--service", required=True)
    create.add_argument("--namespace", required=True)
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--days", type=int, default=365)
    create.add_argument("--cluster-domain", default="cluster.local")
    create.set_defaults(run=_certs_create)
    check = actions.add_parser("check", help="is this serving certificate good to use?")
    check.add_argument("--cert", type=Path, required=True)
    check.add_argument("--ca", type=Path, required=True)
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


def _offline_parsers(commands: argparse._SubParsersAction) -> None:
    for name, help_text in (
        ("inject", "inject the pod templates of Kubernetes documents, as the webhook would"),
        ("explain", "say whether each pod template would be injected, and why"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("-f", "--filename", required=True, help="YAML or JSON file, or -")
        command.add_argument("--config", type=Path, help="mesh config YAML")
        command.add_argument("--namespace", help="default: each object's, else default")
        command.add_argument(
            "--all-kinds",
            action="store_true",
            help="also the pod templates found in kinds inject does not know (CRDs)",
        )
        command.add_argument(
            "--max-bytes", type=_byte_count, default=64 << 20, help="input cap (default 64 MiB)"
        )
        command.add_argument(
            "--max-documents", type=_count, default=10_000, help="documents cap (default 10000)"
        )
        command.add_argument(
            "--namespace-labels",
            type=_labels,
            help="the namespace's labels, k=v,...: apply its proxy.io/inject rule (default: "
            "assume the webhook's selectors matched, as in an enabled namespace)",
        )
        if name == "inject":
            command.add_argument("--diff", action="store_true", help="print a unified diff")
            command.set_defaults(run=_inject)
        else:
            command.add_argument("-o", "--output", choices=["text", "json"], default="text")
            command.set_defaults(run=_explain)


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r} is not key=value")
        labels[key] = value
    return labels


def _offline_input(args: argparse.Namespace) -> tuple[str, list, config.MeshConfig]:
    from webhook import offline

    try:
        mesh = config.load(args.config) if args.config else config.MeshConfig()
    except config.ConfigError as exc:
        raise SystemExit(f"proxy-injector {args.command}: {exc}") from None
    try:
        if args.filename == "-":
            data = sys.stdin.buffer.read(args.max_bytes + 1)
        else:
            with open(args.filename, "rb") as handle:
                data = handle.read(args.max_bytes + 1)
        text = offline.text_of(data, args.max_bytes)
        return text, offline.load(text, args.max_documents), mesh
    except OSError as exc:
        raise SystemExit(
            f"proxy-injector {args.command}: {args.filename}: {exc.strerror}"
        ) from None
    except offline.DocumentError as exc:
        raise SystemExit(f"proxy-injector {args.command}: {args.filename}: {exc}") from None


def _inject(args: argparse.Namespace) -> int:
    from webhook import offline, roundtrip

    text, documents, mesh = _offline_input(args)
    result = offline.inject(documents, mesh, args.namespace, args.namespace_labels, args.all_kinds)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.denials:
        for denial in result.denials:
            print(f"proxy-injector inject: {denial}", file=sys.stderr)
        return 1
    written = roundtrip.write(text, result.documents, result.changes)
    sys.stdout.write(offline.diff(text, written) if args.diff else written)
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    from webhook import offline

    _, documents, mesh = _offline_input(args)
    for warning in offline.unknown_kinds(documents, args.all_kinds):
        print(f"warning: {warning}", file=sys.stderr)
    reports = offline.explain(
        documents, mesh, args.namespace, args.namespace_labels, args.all_kinds
    )
    if args.output == "json":
        print(json.dumps(reports, indent=2))
    else:
        sys.stdout.write(offline.explanation_text(reports))
    return 0


def _check_parser(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("check", help="is the installation healthy? (like linkerd check)")
    check.add_argument("--config", type=Path, help="mesh config YAML the webhook runs with")
    check.add_argument("--namespace", default="proxy-system", help="where the injector runs")
    check.add_argument(
        "--kube-api",
        default=None,
        help="a plain-HTTP API URL (kubectl proxy); default: kubeconfig, else in-cluster",
    )
    check.add_argument("-o", "--output", choices=["text", "json"], default="text")
    check.set_defaults(run=_check)


def _kube_client(kube_api: str | None) -> Any:
    from kubernetes import client
    from kubernetes import config as kube_config

    if kube_api:
        configuration = client.Configuration()
        configuration.host = kube_api
        return client.ApiClient(configuration)
    try:
        kube_config.load_kube_config()
    except kube_config.ConfigException:
        kube_config.load_incluster_config()
    return client.ApiClient()


def _check(args: argparse.Namespace) -> int:
    from webhook import check

    try:
        mesh = config.load(args.config) if args.config else config.MeshConfig()
        results = check.run(
            check.kube_reader(_kube_client(args.kube_api)), mesh, check.Target(args.namespace)
        )
    except config.ConfigError as exc:
        print(f"proxy-injector check: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"proxy-injector check: cannot read the cluster: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(
        check.as_json(results) + "\n" if args.output == "json" else check.text(results)
    )
    return 0 if all(r.ok for r in results) else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="proxy-injector", description=__doc__)
    top.add_argument("--version", action="version", version=f"proxy-injector {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    _serve_parser(commands)
    _init_iptables_parser(commands)
    _validate_parser(commands)
    _cni_parser(commands)
    _certs_parser(commands)
    _offline_parsers(commands)
    _check_parser(commands)
    return top


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
        backend = (
            iptables.detect_backend() if args.iptables_backend == "auto" else args.iptables_backend
        )
        documents = iptables.plan(spec, backend)
        iptables.apply(documents, backend)
    except (ValueError, iptables.InterceptionError) as exc:
        print(f"proxy-injector init-iptables: {exc}", file=sys.stderr)
        return 1
    for family, document in documents.items():
        print(f"# IPv{family}, iptables-{backend}, applied\n{document}", end="")
    return 0


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _managed_certificates(args: argparse.Namespace) -> tuple[Path, Path]:
    import os

    from kubernetes import client

    from certs.kube import KubeCluster
    from certs.manager import Target, ensure, keep_renewed, write_files

    namespace = (
        args.namespace
        or os.environ.get("POD_NAMESPACE")
        or (
            SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
            if SERVICE_ACCOUNT_NAMESPACE.exists()
            else None
        )
    )
    if not namespace:
        raise SystemExit("proxy-injector serve: --manage-certs needs --namespace or POD_NAMESPACE")
    api = None
    if args.kube_api:
        configuration = client.Configuration()
        configuration.host = args.kube_api
        api = client.ApiClient(configuration)
    target = Target(
        args.service, namespace, args.secret, args.webhook_configuration, args.cluster_domain
    )
    directory = args.certs_dir or Path(tempfile.mkdtemp(prefix="proxy-injector-"))
    try:
        cluster = KubeCluster(api)
        cert, key = write_files(ensure(cluster, target), directory)
    except Exception as exc:
        raise SystemExit(f"proxy-injector serve: --manage-certs: {exc}") from None
    keep_renewed(cluster, target, directory, args.renew_check_seconds)
    return cert, key


def _certificates(args: argparse.Namespace) -> tuple[Path, Path]:
    from certs.authority import write_self_signed

    if args.manage_certs:
        return _managed_certificates(args)
    if args.self_signed:
        directory = args.certs_dir or Path(tempfile.mkdtemp(prefix="proxy-injector-"))
        names = ["localhost", "127.0.0.1", "::1"]
        if args.host not in ("0.0.0.0", "::", *names):
            names.append(args.host)
        files = write_self_signed(directory, names)
        print(f"CA bundle: {files.ca}", flush=True)
        return files.cert, files.key
    if not (args.cert and args.key):
        raise SystemExit("proxy-injector serve: give --cert and --key, or --self-signed")
    return args.cert, args.key


def _event_sender(args: argparse.Namespace, metrics: Any) -> Any:
    """Events go to the API given by --kube-api, or the cluster's when run in one."""
    import logging
    import os

    from kubernetes import client
    from kubernetes import config as kube_config

    from webhook.events import EventSender, kube_post

    if args.kube_api:
        configuration = client.Configuration()
        configuration.host = args.kube_api
        api = client.ApiClient(configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config()
        api = client.ApiClient()
    else:
        logging.getLogger("proxy_injector.events").info("no Kubernetes API: no Events")
        return None
    return EventSender(kube_post(api), metrics.event)


def _serve(args: argparse.Namespace) -> int:
    from webhook import logs, server
    from webhook.app import create_app

    logs.configure(args.log_level)
    try:
        mesh = config.load(args.config) if args.config else config.MeshConfig()
    except config.ConfigError as exc:
        print(f"proxy-injector serve: {exc}", file=sys.stderr)
        return 2
    from prometheus_client import start_http_server

    from webhook.live_config import LiveConfig
    from webhook.metrics import Metrics

    cert, key = _certificates(args)
    lifecycle = Lifecycle()
    metrics = Metrics()
    live = LiveConfig(args.config, mesh, metrics)
    app = create_app(live, ready=lifecycle.ready, events=_event_sender(args, metrics))
    if args.metrics_port:
        start_http_server(args.metrics_port, args.host, registry=metrics.registry)
    limits = Limits(
        header_timeout=args.header_timeout_seconds,
        max_connections=args.max_connections,
        handshake_timeout=args.handshake_timeout_seconds,
        max_header_bytes=args.max_header_bytes,
        drain_seconds=args.drain_seconds,
    )
    try:
        server.run(
            app,
            host=args.host,
            port=args.port,
            cert=cert,
            key=key,
            lifecycle=lifecycle,
            limits=limits,
            reload_every=args.cert_reload_seconds,
            on_certificate=metrics.certificate,
            background=(lambda: live.watch(args.config_reload_seconds),),
        )
    except server.CertificateError as exc:
        print(f"proxy-injector serve: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
