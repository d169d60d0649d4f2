"""`bench list`: the variants, backends and suites this installation knows."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser("list", help="variants, backends and suites")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.registry import BACKENDS, PLUGIN_ERRORS, WORKLOADS, load_plugins
    from attnbench.engine.suites import builtin_suites
    from attnbench.report.console import make_console
    from attnbench.report.escaping import LiteralTable, line, literal

    load_plugins()
    console = make_console()
    variants = LiteralTable(title="variants", title_justify="left")
    for col in ("variant", "family", "parameters (defaults)", "scopes", "what"):
        variants.add_column(col)
    for name, cls in sorted(WORKLOADS.items()):
        params = ", ".join(f"{k}={v}" for k, v in cls.default_params().items()) or "-"
        tag = " (sub-quadratic)" if cls.subquadratic else ""
        variants.add_row(name, cls.family, params, ",".join(cls.scopes), cls.summary + tag)
    console.print(variants)

    backends = LiteralTable(title="backends", title_justify="left")
    for col in ("backend", "available", "why not / what"):
        backends.add_column(col)
    for name, cls in sorted(BACKENDS.items()):
        avail = cls.availability()
        what = avail.reason or cls.summary + ("" if cls.in_available else " (runs when named: --backends)")
        backends.add_row(name, "yes" if avail.available else literal("no", "red"), what)
    console.print(backends)

    suites = LiteralTable(title="suites", title_justify="left")
    suites.add_column("suite")
    suites.add_column("what")
    for name, desc in builtin_suites().items():
        suites.add_row(name, desc)
    console.print(suites)
    for where, err in PLUGIN_ERRORS.items():
        console.print(line(("plugin failed to load", "red"), f" {where}: {err}"), soft_wrap=True)
    return 0
