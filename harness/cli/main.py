"""The `bench` command: builds the parser from the command modules and dispatches to one.

Each command lives in its own module, named in COMMAND_MODULES, with
`add_parser(subparsers) -> argparse.ArgumentParser` and `run(args, argv) -> int`.
Those modules import heavy dependencies (torch, matplotlib, ray) inside `run` only,
so `bench --help` and a usage error stay fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import import_module
from pathlib import Path
from typing import Any, NoReturn

from attnbench.core import interrupts
from attnbench.core.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USER_ERROR,
    EXIT_WRITE_FAILED,
    UserError,
    WriteFailed,
)

# The commands, in the order `bench --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "attnbench.cli.run",
    "attnbench.cli.list",
    "attnbench.cli.env",
    "attnbench.cli.calibrate",
    "attnbench.cli.report",
    "attnbench.cli.history",
    "attnbench.cli.compare",
    "attnbench.cli.export",
    "attnbench.cli.profile",
    "attnbench.cli.ab",
    "attnbench.cli.quality",
    "attnbench.cli.completion",
)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # a checkout's (harness/cli/main.py)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def version() -> str:
    """attnbench's version: the installed distribution's, else the checkout's pyproject.toml's
    (code imported from a checkout that was never installed), else "unknown"."""
    from importlib import metadata

    try:
        return metadata.version("attnbench")
    except metadata.PackageNotFoundError:
        pass
    try:
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            import tomli as tomllib
        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


class VersionAction(argparse.Action):
    """--version: `bench X.Y.Z` on stdout, exit 0; the version is looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        sys.stdout.write(f"{parser.prog} {version()}\n")
        parser.exit(0)


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Hardware-aware benchmarks of transformer attention.")
    parser.add_argument("--version", action=VersionAction, help="print bench's version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(name).add_parser(sub).set_defaults(command_module=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    with interrupts.noted():
        code = _dispatch(parser, args, argv)
        if code == EXIT_INTERRUPTED and interrupts.received() == signal.SIGTERM:
            code = EXIT_TERMINATED  # 128 + the signal, as a shell reports a process it ended
        return code


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    if not getattr(args, "command_module", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return import_module(args.command_module).run(args, argv)
    except UserError as exc:
        sys.stderr.write(f"bench: error: {exc}\n")
        return EXIT_USER_ERROR
    except WriteFailed as exc:
        sys.stderr.write(f"bench: error: {exc}; the run stopped there (finish it with bench run --resume)\n")
        return EXIT_WRITE_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left early (`bench list --json | head`): no traceback, as a tool that SIGPIPE ends.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not raise again
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
