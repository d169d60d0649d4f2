"""`bench list`: the variants, backends and suites this installation knows."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rich.console import Console

    from attnbench.report.escaping import LiteralTable


class Variant(NamedTuple):
    name: str
    family: str
    params: str  # the defaults, "k=v, k=v"
    scopes: str
    what: str


PROSE_WIDTH = 40  # the least room for the descriptions beside the family and scopes columns


def variants_table(rows: list[Variant], columns: bool) -> LiteralTable:
    """One row per variant: its name, then what it is over its default parameters; the family
    and scopes in columns of their own (`columns`), or under the name where room is short."""
    from attnbench.report.escaping import LiteralTable, line

    table = LiteralTable(title="variants", title_justify="left", show_lines=True)
    table.add_column("variant" if columns else "variant (family; scopes)")
    if columns:
        table.add_column("family")
        table.add_column("scopes")
    table.add_column("what; parameters (defaults)")
    for v in rows:
        what = line(v.what, "\n", ("defaults: ", "dim"), v.params)
        if columns:
            table.add_row(v.name, v.family, v.scopes, what)
        else:
            table.add_row(line(v.name, "\n", (f"({v.family}; {v.scopes})", "dim")), what)
    return table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser("list", help="variants, backends and suites")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.registry import load_plugins
    from attnbench.report.console import make_console

    load_plugins()
    print_list(make_console())
    return 0


def print_list(console: Console) -> None:
    """The variants, backends and suites, laid out for the console's width (80 columns too)."""
    from attnbench.core.registry import BACKENDS, PLUGIN_ERRORS, WORKLOADS
    from attnbench.engine.suites import builtin_suites
    from attnbench.report.console import fit, print_table
    from attnbench.report.escaping import LiteralTable, line, literal

    rows = [
        Variant(
            name,
            cls.family,
            ", ".join(f"{k}={v}" for k, v in cls.default_params().items()) or "-",
            ",".join(cls.scopes),
            cls.summary + (" (sub-quadratic)" if cls.subquadratic else ""),
        )
        for name, cls in sorted(WORKLOADS.items())
    ]
    table = variants_table(rows, columns=True)
    if not fit(console, [table]) or (table.columns[-1].width or 0) < PROSE_WIDTH:  # 80 columns
        table = variants_table(rows, columns=False)
    print_table(console, table)

    backends = LiteralTable(title="backends", title_justify="left")
    backends.add_column("backend")
    backends.add_column("available")
    backends.add_column("why not / what", overflow="fold")
    for name, cls in sorted(BACKENDS.items()):
        avail = cls.availability()
        what = avail.reason or cls.summary + ("" if cls.in_available else " (runs when named: --backends)")
        backends.add_row(name, "yes" if avail.available else literal("no", "red"), what)
    print_table(console, backends)

    suites = LiteralTable(title="suites", title_justify="left")
    suites.add_column("suite")
    suites.add_column("what", overflow="fold")
    for name, desc in builtin_suites().items():
        suites.add_row(name, desc)
    print_table(console, suites)
    for where, err in PLUGIN_ERRORS.items():
        console.print(line(("plugin failed to load", "red"), f" {where}: {err}"), soft_wrap=True)
