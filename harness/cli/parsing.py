"""What every command's parser shares: a command documented by its module's docstring."""

from __future__ import annotations

import argparse
from typing import Any


def add_documented_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, doc: str | None, **options: Any
) -> argparse.ArgumentParser:
    """The command's parser, with the module docstring as its --help description, line breaks kept."""
    return subparsers.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **options
    )
