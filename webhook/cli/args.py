"""Argument types the command groups share: each names what it accepts."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

OK, FINDING, INPUT_ERROR, UNREACHABLE = 0, 1, 2, 3
"""Exit codes of every user-facing command: 0 all is well; 1 a finding (a template that
would be denied, a failing check, a pod that is not injected); 2 a usage or input error
(a flag, a file, a mesh config); 3 the cluster could not be read."""


class Help(argparse.RawDescriptionHelpFormatter):
    """Every flag's help line ends with its default, unless it says its default already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default in (None, False, [], argparse.SUPPRESS) or action.required
        if quiet or not action.option_strings or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


def fail(command: str, message: str, code: int = INPUT_ERROR) -> NoReturn:
    """One line on stderr naming the command, then exit with ``code``."""
    print(f"proxy-injector {command}: {message}", file=sys.stderr)
    raise SystemExit(code)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 to 3600 seconds")
    return value


def byte_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1 << 30:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes, 1 to 1 GiB")
    return int(text)


def count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number 1 to 1000000")
    return int(text)


def labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r} is not key=value")
        labels[key] = value
    return labels


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def span(text: str) -> float:
    """A span like 24h, 90m, 1h30m or 7d, in seconds: 0 to 400 days."""
    import re

    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a span like 24h, 90m or 7d")
    total = sum(int(n or 0) * _UNITS[u] for n, u in zip(parts.groups(), "dhms", strict=True))
    if total > 400 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 400 days")
    return float(total)
