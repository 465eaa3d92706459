"""The ``proxy-injector`` command: one small module per command group (``serve``, ``node``,
``certs``, ``signer``, ``tools``), each only parsing flags and calling its package."""

from __future__ import annotations

import argparse

from webhook import __version__
from webhook.cli import certs, completion, node, serve, signer, tools
from webhook.cli.args import Help

NODE_SIDE = ("init-iptables", "validate-interception", "cni", "signer")
"""Run by the image's containers (init container, DaemonSet, signer Deployment), not by
people: listed apart in --help."""


class _TopHelp(Help):
    """The commands in two groups: what people run, and what the manifests run."""

    def _format_action(self, action: argparse.Action) -> str:
        if not isinstance(action, argparse._SubParsersAction):
            return super()._format_action(action)
        rows = {choice.dest: choice.help or "" for choice in action._choices_actions}

        def listed(names: list[str]) -> str:
            return "".join(f"  {name:<24}{rows[name]}\n" for name in names)

        people = [name for name in rows if name not in NODE_SIDE]
        nodes = [name for name in rows if name in NODE_SIDE]
        return (
            f"commands:\n{listed(people)}\n"
            f"run by the image (init container, CNI DaemonSet, signer):\n{listed(nodes)}"
        )


def _every_parser(top: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [top]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _every_parser(child)
    return found


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="proxy-injector",
        description="An Envoy sidecar for Kubernetes pods, talking to the app over a Unix "
        "socket: the admission webhook, its node agent, and tools for manifests and clusters.",
        epilog="Exit codes: 0 ok, 1 a finding, 2 a usage or input error, 3 the cluster "
        "could not be read (docs/operations.md).",
    )
    top.add_argument("--version", action="version", version=f"proxy-injector {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(commands)
    tools.add_parsers(commands)
    certs.add_parser(commands)
    completion.add_parser(commands)
    node.add_parsers(commands)
    signer.add_parser(commands)
    for each in _every_parser(top):
        each.formatter_class = Help
    top.formatter_class = _TopHelp
    top._positionals.title = None  # the two groups have their own headings
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
