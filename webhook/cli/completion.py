"""``completion bash|zsh``: a completion script for the commands and their flags, made
from the parser itself so it never falls behind it."""

from __future__ import annotations

import argparse
import sys

_BASH = """# proxy-injector completion for bash: source <(proxy-injector completion bash)
_proxy_injector() {
  local current=${COMP_WORDS[COMP_CWORD]} command=${COMP_WORDS[1]}
  if (( COMP_CWORD == 1 )); then
    COMPREPLY=( $(compgen -W "%(commands)s" -- "$current") )
    return
  fi
  case "$command" in
%(cases)s
  esac
}
complete -o default -F _proxy_injector proxy-injector
"""
_ZSH_HEAD = """# proxy-injector completion for zsh: source <(proxy-injector completion zsh)
autoload -U +X bashcompinit && bashcompinit
"""


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(command: argparse.ArgumentParser) -> list[str]:
    """A command's flags, and its own subcommands (``certs create``)."""
    flags = [f for a in command._actions for f in a.option_strings if f.startswith("--")]
    return [*_commands(command), *flags]


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _commands(parser)
    cases = "\n".join(
        f'    {name}) COMPREPLY=( $(compgen -W "{" ".join(_words(command))}" -- "$current") ) ;;'
        for name, command in commands.items()
    )
    bash = _BASH % {"commands": " ".join(commands), "cases": cases}
    return (_ZSH_HEAD + bash.split("\n", 1)[1]) if shell == "zsh" else bash


def add_parser(commands: argparse._SubParsersAction) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Example: source <(proxy-injector completion bash)",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="bash or zsh")
    completion.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from webhook.cli import parser

    sys.stdout.write(script(parser(), args.shell))
    return 0
