"""`proxy-injector serve`: the admission webhook over HTTPS (the flags; the server is
``webhook.server``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from webhook.cli.args import byte_count, count, seconds
from webhook.common import mesh_config
from webhook.engine import config
from webhook.server.settings import Lifecycle, Limits


def add_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the admission webhook over HTTPS",
        description="Example: proxy-injector serve --self-signed",
    )
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
    serve.add_argument(
        "--config",
        type=Path,
        help="mesh config YAML, or a directory of layers: mesh.yaml, then every other "
        "*.yaml (default: built-in defaults)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8443, help="HTTPS port")
    managed = serve.add_argument_group(
        "--manage-certs",
        "keep the serving certificate in a Secret and its CA in the "
        "MutatingWebhookConfiguration (in-cluster)",
    )
    managed.add_argument(
        "--manage-certs",
        action="store_true",
        help="keep the serving certificate in a Secret and the webhook's caBundle current",
    )
    managed.add_argument(
        "--service", default="proxy-injector", help="the webhook's Service (the certificate's name)"
    )
    managed.add_argument(
        "--namespace",
        default=None,
        help="default: POD_NAMESPACE, else the service account's namespace",
    )
    managed.add_argument(
        "--secret", default="proxy-injector-tls", help="the Secret holding the certificate"
    )
    managed.add_argument(
        "--webhook-configuration",
        default="proxy-injector",
        help="the MutatingWebhookConfiguration whose caBundle is kept current",
    )
    managed.add_argument(
        "--cluster-domain", default="cluster.local", help="for the certificate's DNS names"
    )
    managed.add_argument(
        "--renew-check-seconds",
        type=float,
        default=3600.0,
        help="how often the certificate's renewal window is checked",
    )
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
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least level logged",
    )
    defaults = Limits()
    serve.add_argument(
        "--drain-seconds",
        type=seconds,
        default=defaults.drain_seconds,
        help="after SIGTERM, how long to go on answering and accepting (each response "
        "closing its connection; /readyz fails): the time the endpoint takes to leave the "
        "Service; then the listener closes, resetting no connection (default %(default)g); "
        "keep preStop + this + 21.5 under terminationGracePeriodSeconds",
    )
    serve.add_argument(
        "--header-timeout-seconds",
        type=seconds,
        default=defaults.header_timeout,
        help="a request's headers must arrive within this long (default %(default)g)",
    )
    serve.add_argument(
        "--handshake-timeout-seconds",
        type=seconds,
        default=defaults.handshake_timeout,
        help="a connection's TLS handshake must finish within this long (default %(default)g)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=byte_count,
        default=defaults.max_header_bytes,
        help="a request's line and headers together, at most (default %(default)d; past it, "
        f"or past {defaults.max_header_fields} header fields, 431 and the connection closed)",
    )
    serve.add_argument(
        "--max-connections",
        type=count,
        default=defaults.max_connections,
        help="connections at once, those in their TLS handshake included; past it a new one "
        "replaces the oldest still in its handshake, or is closed (default %(default)d)",
    )
    serve.set_defaults(run=_serve)


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

    from webhook.server.events import EventSender, kube_post

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
    from webhook.server import logs
    from webhook.server import serve as server
    from webhook.server.app import create_app

    logs.configure(args.log_level)
    try:
        mesh = mesh_config.load(args.config) if args.config else config.MeshConfig()
    except config.ConfigError as exc:
        print(f"proxy-injector serve: {exc}", file=sys.stderr)
        return 2
    from prometheus_client import start_http_server

    from webhook.server.live_config import LiveConfig
    from webhook.server.metrics import Metrics

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
