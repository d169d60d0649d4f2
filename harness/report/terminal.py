"""`--format terminal`: the report's tables and sentences, printed with rich (every text
literal: attnbench.report.escaping)."""

from __future__ import annotations

from rich.console import Console

from attnbench.report.data import FAILED
from attnbench.report.escaping import LiteralTable, literal
from attnbench.report.report import Report
from attnbench.report.tables import Table, group_notes


def _style(text: str) -> str:
    if text in FAILED:
        return "red"
    if text in ("skipped", "unsupported"):
        return "dim"
    if text.endswith(" ~"):
        return "yellow"
    return ""


def rich_table(table: Table) -> LiteralTable:
    t = LiteralTable(title=table.title, title_justify="left", title_style="bold")
    for i, h in enumerate(table.headers):
        t.add_column(h, justify="right" if i in table.right else "left", overflow="fold", no_wrap=i in table.nowrap)
    for row in table.rows:
        t.add_row(*(literal(c, _style(c)) for c in row))
    return t


def print_report(console: Console, report: Report) -> None:
    print_ = lambda text, style="": console.print(literal(text, style), soft_wrap=True)  # noqa: E731
    print_(f"attnbench report: {report.title}", "bold")
    for w in report.warnings:
        print_(f"warning: {w}", "yellow")
    console.print(rich_table(report.runs))
    for g in report.data.groups:
        print_(f"\n{g.title}", "bold cyan")
        for h in report.highlights[g.key]:
            print_(f"  • {h}")
        for n in group_notes(report.data, g):
            print_(f"  {n}", "dim")
        if g.backend is not None:
            console.print(rich_table(report.scaling[g.key]))
            console.print(rich_table(report.times[g.key]))
            for n in report.scaling[g.key].notes + report.times[g.key].notes:
                print_(n, "dim")
            for t in report.ratios[g.key]:
                console.print(rich_table(t))
                for n in t.notes:
                    print_(n, "dim")
            if report.profiles[g.key].rows:
                console.print(rich_table(report.profiles[g.key]))
    if report.published.rows:
        console.print(rich_table(report.published))
        for n in report.published.notes:
            print_(n, "dim")
    if report.failures.rows:
        console.print(rich_table(report.failures))
    else:
        print_("every case is ok.")
    if report.unstable.rows:
        print_(
            f"{len(report.unstable.rows)} case(s) unstable (status ok, CI target missed or IQR/median over 10%); "
            "the HTML report lists them with their notes.",
            "yellow",
        )
    print_(report.footer, "dim")
