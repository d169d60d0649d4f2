"""The `bench` command: builds the parser from the command modules and dispatches to one.

Each command lives in its own module, named in COMMAND_MODULES, with
`add_parser(subparsers) -> argparse.ArgumentParser` and `run(args, argv) -> int`.
Those modules import heavy dependencies (torch, matplotlib, ray) inside `run` only,
so `bench --help` and a usage error stay fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
from importlib import import_module
from typing import NoReturn

from attnbench.core import interrupts
from attnbench.core.errors import (
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
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Hardware-aware benchmarks of transformer attention.")
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


if __name__ == "__main__":
    raise SystemExit(main())
