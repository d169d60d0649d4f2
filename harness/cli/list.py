"""`bench list`: the variants, backends and suites this installation knows."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, NamedTuple

from attnbench.core import strict_json

if TYPE_CHECKING:
    from rich.console import Console

    from attnbench.report.escaping import LiteralTable


class Variant(NamedTuple):
    name: str
    family: str
    params: str  # the defaults, "k=v, k=v"
    scopes: str
    what: str
    impls: str = ""  # the implementations that run it, and why the others do not


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
        if v.impls:
            what = line(what, "\n", ("impls: ", "dim"), v.impls)
        if columns:
            table.add_row(v.name, v.family, v.scopes, what)
        else:
            table.add_row(line(v.name, "\n", (f"({v.family}; {v.scopes})", "dim")), what)
    return table


def impl_support(variant: Any) -> dict[str, str | None]:
    """Per registered implementation, why it cannot run the variant (its default parameters, in
    any of its scopes, on the CPU), or None where it can: the implementation's own missing
    library first, else its reason for the variant's first scope."""
    from attnbench.core.registry import IMPLS

    params = variant.make_params(variant.default_params())
    out: dict[str, str | None] = {}
    for name, impl in sorted(IMPLS.items(), key=lambda kv: (kv[0] != "native", kv[0])):
        missing = impl.availability()
        reasons = [impl.supports(variant, params, scope, "cpu") for scope in variant.scopes]
        out[name] = f"not available here: {missing}" if missing else None if None in reasons else reasons[0]
    return out


def impls_text(support: dict[str, str | None]) -> str:
    """The variants table's line of implementations: "native, masked_sdpa; not flex: why"."""
    runs = ", ".join(name for name, why in support.items() if why is None)
    refused = "; ".join(f"not {name}: {why}" for name, why in support.items() if why is not None)
    return "; ".join(part for part in (runs, refused) if part)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("list", help="variants, backends and suites")
    p.add_argument("--json", action="store_true", help="print them as JSON (for scripts)")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.registry import load_plugins
    from attnbench.report.console import make_console

    load_plugins()
    if args.json:
        print(strict_json.dumps(list_json(), indent=2, default=str))  # default: a parameter's odd default
        return 0
    print_list(make_console())
    return 0


def list_json() -> dict[str, Any]:
    """What print_list shows, as data: variants with their defaults and implementations,
    implementations and backends and why one is not available, suites, and the plugins that
    failed to load."""
    from attnbench.core.registry import BACKENDS, IMPLS, PLUGIN_ERRORS, WORKLOADS
    from attnbench.engine.suites import builtin_suites

    backends = []
    for name, cls in sorted(BACKENDS.items()):
        avail = cls.availability()
        backends.append(
            {
                "name": name,
                "available": avail.available,
                "reason": avail.reason,
                "summary": cls.summary,
                "in_available": cls.in_available,  # false: runs only when named (--backends)
            }
        )
    return {
        "variants": [
            {
                "name": name,
                "family": cls.family,
                "defaults": cls.default_params(),
                "scopes": list(cls.scopes),
                "summary": cls.summary,
                "subquadratic": cls.subquadratic,
                "impls": impl_support(cls),  # name -> why it cannot run the variant, null where it can
            }
            for name, cls in sorted(WORKLOADS.items())
        ],
        "implementations": [
            {
                "name": name,
                "available": impl.availability() is None,
                "reason": impl.availability(),
                "summary": impl.summary,
            }
            for name, impl in sorted(IMPLS.items())
        ],
        "backends": backends,
        "suites": [{"name": name, "description": desc} for name, desc in builtin_suites().items()],
        "plugin_errors": dict(PLUGIN_ERRORS),
    }


def print_list(console: Console) -> None:
    """The variants, implementations, backends and suites, laid out for the console's width (80
    columns too)."""
    from attnbench.core.registry import BACKENDS, IMPLS, PLUGIN_ERRORS, WORKLOADS
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
            impls_text(impl_support(cls)),
        )
        for name, cls in sorted(WORKLOADS.items())
    ]
    table = variants_table(rows, columns=True)
    if not fit(console, [table]) or (table.columns[-1].width or 0) < PROSE_WIDTH:  # 80 columns
        table = variants_table(rows, columns=False)
    print_table(console, table)

    impls = LiteralTable(title="implementations (--impls)", title_justify="left")
    impls.add_column("impl")
    impls.add_column("available")
    impls.add_column("why not / what", overflow="fold")
    for name, impl in sorted(IMPLS.items(), key=lambda kv: (kv[0] != "native", kv[0])):
        missing = impl.availability()
        impls.add_row(name, literal("no", "red") if missing else "yes", missing or impl.summary)
    print_table(console, impls)

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
