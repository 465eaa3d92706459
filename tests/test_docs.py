"""The docs name commands and flags other tools rely on: each one the docs show exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from webhook.cli import parser

DOCS = Path(__file__).parent.parent / "docs"


def subcommands(top: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(command: argparse.ArgumentParser) -> set[str]:
    found = {flag for action in command._actions for flag in action.option_strings}
    for nested in (a for a in command._actions if isinstance(a, argparse._SubParsersAction)):
        for sub in nested.choices.values():
            found |= options(sub)
    return found


def shown_commands() -> list[tuple[str, str]]:
    """(page, line) for every `proxy-injector ...` the docs show, in code or in prose."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for line in page.read_text().splitlines():
            for match in re.finditer(r"proxy-injector ([a-z][a-z-]*)([^`|#]*)", line):
                found.append((page.name, match.group(0)))
    return found


@pytest.mark.parametrize(("page", "command"), shown_commands())
def test_every_command_the_docs_show_exists_with_its_flags(page, command) -> None:
    words = command.split()
    commands = subcommands(parser())
    assert words[1] in commands, f"{page}: {command}"
    known = options(commands[words[1]])
    flags = {w.strip("[]").split("=")[0] for w in words[2:] if w.strip("[]").startswith("-")}
    flags -= {"-"}  # stdin
    assert flags <= known, f"{page}: {command}: unknown {sorted(flags - known)}"


def test_every_reason_code_is_in_the_operations_guide() -> None:
    from webhook.engine.reasons import Reason

    guide = (DOCS / "operations.md").read_text()
    assert [r.code for r in Reason if f"| `{r.code}` | {r.sentence} |" not in guide] == []
