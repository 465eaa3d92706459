"""The ``proxy-injector`` command: one small module per command group (``serve``, ``node``,
``certs``, ``signer``, ``tools``), each only parsing flags and calling its package."""

from __future__ import annotations

import argparse

from webhook import __version__
from webhook.cli import certs, node, serve, signer, tools


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="proxy-injector",
        description="An Envoy sidecar for Kubernetes pods, talking to the app over a Unix "
        "socket: the admission webhook, its node agent, and tools for manifests and clusters.",
    )
    top.add_argument("--version", action="version", version=f"proxy-injector {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    serve.add_parser(commands)
    node.add_parsers(commands)
    certs.add_parser(commands)
    signer.add_parser(commands)
    tools.add_parsers(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
