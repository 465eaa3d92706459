"""The ``proxy-injector`` executable. ``proxy-injector cni`` runs as the node's CNI plugin for
every pod created there, so it starts without importing the engine or the web stack;
everything else goes to ``webhook.cli``."""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv == ["cni"]:
        from webhook import cni

        return cni.main()
    from webhook import cli

    return cli.main(argv)
