"""`bench completion bash|zsh`: the shell's completion script for bench, printed to stdout.

Made by shtab from bench's own parser, so it knows every command, flag and choice of this
version; the script is static (a TAB runs no Python). shtab is an optional dependency
(`pip install shtab`, or the `completion` extra). Enable it:

  bash:  bench completion bash > ~/.local/share/bash-completion/completions/bench
         (or: eval "$(bench completion bash)" in ~/.bashrc)
  zsh:   bench completion zsh > ~/.zfunc/_bench, with fpath+=(~/.zfunc) before compinit in ~/.zshrc
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from attnbench.cli.parsing import add_documented_command
from attnbench.core.errors import UserError

SHELLS = ("bash", "zsh")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_documented_command(subparsers, "completion", "print the bash or zsh completion script", __doc__)
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return p


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """parser and every (sub)command's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases name a parser twice
                yield from _parsers(sub)


def script(shell: str) -> str:
    """The completion script for `shell`; UserError when shtab is not installed."""
    try:
        import shtab
    except ImportError:
        raise UserError(
            "bench completion needs shtab: pip install shtab (or pip install 'attnbench[completion]')"
        ) from None
    from attnbench.cli.main import build_parser

    parser = build_parser()  # this one only; changed below for shtab's sake
    for p in _parsers(parser):
        if p is not parser:
            p.description = None  # shtab would describe a command by its --help's first line, cut mid-sentence
        for action in p._actions:
            if _takes_path(action):
                action.complete = shtab.FILE  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def _takes_path(action: argparse.Action) -> bool:
    """Whether a TAB should offer files and folders here (shtab offers nothing by default): a Path,
    or a positional taking a run folder (compare's, export's, report's runs, profile's RUN_DIR/CASE_ID)."""
    if action.type is Path:
        return True
    positional_help = "" if action.option_strings else action.help or ""
    return "folder" in positional_help or "RUN_DIR" in positional_help


def run(args: argparse.Namespace, argv: list[str]) -> int:
    print(script(args.shell))
    return 0
