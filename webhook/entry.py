"""The ``proxy-injector`` executable."""

from __future__ import annotations

import sys


def main() -> int:
    from webhook import cli

    return cli.main(sys.argv[1:])
