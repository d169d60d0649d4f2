"""`--format terminal`: the report's tables and sentences, printed with rich (every text
literal: attnbench.report.escaping)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from attnbench.report.console import fit, print_table, transposed
from attnbench.report.data import FAILED
from attnbench.report.escaping import LiteralTable, literal
from attnbench.report.tables import Table, group_notes

if TYPE_CHECKING:  # attnbench.report.quality prints its tables with `show`: no import circle back to it
    from attnbench.report.report import Report


def _style(text: str) -> str:
    if text in FAILED:
        return "red"
    if text in ("skipped", "unsupported"):
        return "dim"
    if text.endswith(" ~"):
        return "yellow"
    return ""


def rich_table(table: Table) -> LiteralTable:
    """The table for rich; print it with `show` (attnbench.report.console.print_table), which
    keeps every word whole at the console's width. Names and ids (`nowrap`) wrap only at their
    spaces; other cells may also fold a word longer than console.FOLD_MIN (a status never is)."""
    t = LiteralTable(title=table.title, title_justify="left", title_style="bold")
    for i, h in enumerate(table.headers):
        fold = "ellipsis" if i in table.nowrap else "fold"  # ellipsis: never shown, fit keeps the words whole
        t.add_column(h, justify="right" if i in table.right else "left", overflow=fold)
    for row in table.rows:
        t.add_row(*(literal(c, _style(c)) for c in row))
    return t


def show(console: Console, table: Table, turn: bool = False) -> None:
    """The table at the console's width: where its columns do not fit, turned (`turn`: a row
    per column) if that fits, else in parts that each repeat its first column (the variant,
    run or case)."""
    t = rich_table(table)
    if turn and not fit(console, [t]) and fit(console, [turned := transposed(t)]):
        console.print(turned)
        return
    print_table(console, t)


def print_report(console: Console, report: Report) -> None:
    print_ = lambda text, style="": console.print(literal(text, style), soft_wrap=True)  # noqa: E731
    print_(f"attnbench report: {report.title}", "bold")
    for w in report.warnings:
        print_(f"warning: {w}", "yellow")
    show(console, report.runs, turn=True)  # a few runs, ten fields each
    for g in report.data.groups:
        print_(f"\n{g.title}", "bold cyan")
        for h in report.highlights[g.key]:
            print_(f"  • {h}")
        for n in group_notes(report.data, g):
            print_(f"  {n}", "dim")
        if g.backend is not None:
            show(console, report.scaling[g.key])
            show(console, report.times[g.key])
            for n in report.scaling[g.key].notes + report.times[g.key].notes:
                print_(n, "dim")
            for t in report.ratios[g.key]:
                show(console, t)
                for n in t.notes:
                    print_(n, "dim")
            if report.profiles[g.key].rows:
                show(console, report.profiles[g.key])
            sections = report.impls[g.key]
            for section in sections:
                print_(f"\nImplementations of {section.title}", "bold")
                show(console, section.fastest)
                show(console, section.crossovers)
            if sections:  # the same notes for every design: once, after the last
                for n in sections[-1].fastest.notes + sections[-1].crossovers.notes:
                    print_(n, "dim")
    quality = report.quality
    if quality is not None:
        print_(f"\n{quality.title}", "bold cyan")
        tables = [t.table for r in quality.runs for t in r.tasks]
        tables += [quality.approx_table] if quality.approx_table is not None else []
        for t in tables:
            show(console, t)
            for n in t.notes:
                print_(n, "dim")
    if report.published.rows:
        show(console, report.published)
        for n in report.published.notes:
            print_(n, "dim")
    if quality is not None and quality.lra:
        if not report.published.rows:
            print_(f"\n{report.published.title}", "bold")
        print_(quality.lra_note, "dim")
        for t in quality.lra:
            show(console, t)
            for n in t.notes:
                print_(n, "dim")
    if report.failures.rows:
        show(console, report.failures)
    elif report.data.points:  # a report of quality runs only has no cases to be ok
        print_("every case is ok.")
    if report.unstable.rows:
        print_(
            f"{len(report.unstable.rows)} case(s) unstable (status ok, CI target missed or IQR/median over 10%); "
            "the HTML report lists them with their notes.",
            "yellow",
        )
    print_(report.footer, "dim")
