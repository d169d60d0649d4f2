"""A report's content, computed once from the stored runs and shared by every output format."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from attnbench.report.data import ReportData
from attnbench.report.impls import ImplSection, impl_sections
from attnbench.report.quality import QualityReport, quality_report
from attnbench.report.tables import (
    SeriesStats,
    Table,
    failures_table,
    highlights,
    profiles_table,
    published_table,
    ratio_tables,
    runs_table,
    scaling_table,
    series_stats,
    time_table,
    unstable_table,
    warnings,
)


@dataclass(frozen=True)
class Report:
    data: ReportData
    title: str
    command: str
    generated_at: str
    stats: dict[str, list[SeriesStats]]  # group key -> one per curve
    scaling: dict[str, Table]
    times: dict[str, Table]
    ratios: dict[str, list[Table]]  # group key -> speedup and memory vs the baseline (none without one)
    highlights: dict[str, list[str]]
    runs: Table
    failures: Table
    unstable: Table
    warnings: list[str]
    published: Table  # rows only for runs of a reference suite
    profiles: dict[str, Table]  # group key -> its profiled cases
    impls: dict[str, list[ImplSection]]  # group key -> its designs that ran with several implementations
    quality: QualityReport | None = None  # None: no run has quality data, and the report has no Quality section

    @property
    def footer_parts(self) -> tuple[str, str, str]:
        """The footer as (before, command, after): each format quotes the command its own way."""
        runs = ", ".join(r.run.run_id for r in self.data.runs)
        return (
            "Made by ",
            self.command,
            f" at {self.generated_at} from stored results only ({runs}); nothing was re-run.",
        )

    @property
    def footer(self) -> str:
        before, command, after = self.footer_parts
        return f"{before}`{command}`{after}"


def default_title(data: ReportData) -> str:
    runs = data.runs
    if len(runs) == 1:
        r = runs[0].run
        return f"{r.suite} on {r.host.get('hostname', '?')} ({r.run_id})"
    return " vs ".join(f"{r.run.suite}@{r.run.host.get('hostname', '?')}" for r in runs)


def _warnings(data: ReportData) -> list[str]:
    out = warnings(data)
    if not data.points:  # a run of `bench quality` only: it times nothing, so it misses no baseline
        out = [w for w in out if not w.startswith(f"baseline {data.baseline} is not in these runs")]
    return out


def _runs_with_models(table: Table, quality: QualityReport | None) -> Table:
    """The runs table, with a column of the models each run trained where any run has quality records."""
    if quality is None or not quality.runs:
        return table
    models = {q.run_id: q.models for q in quality.runs}
    run_col = table.headers.index("run")
    rows = [[*row, str(models.get(row[run_col], 0))] for row in table.rows]
    return Table(table.title, [*table.headers, "models"], rows, table.right, table.notes, table.nowrap, table.links)


def build(data: ReportData, command: str, title: str | None = None, fit_min_len: int = 0) -> Report:
    stats = {g.key: series_stats(data, g, fit_min_len) for g in data.groups}
    quality = quality_report(data)
    return Report(
        data=data,
        title=title or default_title(data),
        command=command,
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        stats=stats,
        scaling={g.key: scaling_table(data, g, stats[g.key], fit_min_len) for g in data.groups},
        times={g.key: time_table(data, g) for g in data.groups},
        ratios={g.key: ratio_tables(data, g, stats[g.key]) for g in data.groups},
        highlights={g.key: highlights(data, g, stats[g.key]) for g in data.groups},
        runs=_runs_with_models(runs_table(data), quality),
        failures=failures_table(data),
        unstable=unstable_table(data),
        warnings=_warnings(data),
        published=published_table(data),
        profiles={g.key: profiles_table(data, g) for g in data.groups},
        impls={g.key: impl_sections(data, g, stats[g.key]) for g in data.groups},
        quality=quality,
    )
