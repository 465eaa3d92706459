"""The command line as people meet it: every flag explained with its default, the commands
people run listed apart from those the image runs, and shell completion that works in a
real bash."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from tests.support import proxy_injector
from webhook.cli import NODE_SIDE, parser


def _commands(top: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[f"{prefix}{name}"] = child
                found |= _commands(child, f"{prefix}{name} ")
    return found


COMMANDS = _commands(parser())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_a_help_line_with_its_default(name: str) -> None:
    command = COMMANDS[name]
    text = command.format_help()
    for action in command._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help line"
        if (
            action.option_strings
            and action.default not in (None, False, [])
            and not action.required
        ):
            flag = action.option_strings[-1]
            shown = command._get_formatter()._get_help_string(action) or ""
            assert "default" in shown.lower(), f"{name} {flag}: default not shown"
    assert "usage: proxy-injector" in text


def test_the_top_help_lists_what_the_image_runs_apart() -> None:
    done = proxy_injector("--help")
    assert done.returncode == 0
    people, _, image = done.stdout.partition("run by the image")
    for name in NODE_SIDE:
        assert f"\n  {name} " in image and f"\n  {name} " not in people
    for name in ("inject", "explain", "bootstrap", "check", "version", "completion"):
        assert f"\n  {name} " in people
    assert "Exit codes: 0 ok, 1 a finding, 2 a usage or input error, 3" in done.stdout


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("proxy-injector ex", {"explain"}),
        ("proxy-injector check --eg", {"--egress-interval"}),
        ("proxy-injector certs c", {"create", "check"}),
    ],
)
def test_bash_completion_completes_commands_and_flags(words: str, expected: set[str]) -> None:
    script = proxy_injector("completion", "bash").stdout
    program = (
        f"{script}\nCOMP_WORDS=({words}); COMP_CWORD={len(words.split()) - 1}; "
        "_proxy_injector; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == expected


def test_zsh_completion_loads_bashs_through_bashcompinit() -> None:
    script = proxy_injector("completion", "zsh").stdout
    assert script.splitlines()[1] == "autoload -U +X bashcompinit && bashcompinit"
    assert "complete -o default -F _proxy_injector proxy-injector" in script
