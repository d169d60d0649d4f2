"""Implementations side by side: for each design (a curve but for its `impl`) that ran with more than
one implementation in a group, which one is fastest at each length and by how much, and where each
crosses the dense baseline.

The crossovers are the series' own (tables.series_stats against ReportData.baseline_for: the
baseline's native kernel of the same run, backend, dtype, mode, scope and shape), so these tables
and the scaling table never disagree. Pure Python: the figure is figures.impl_figure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attnbench.report.analysis import memory_crossover
from attnbench.report.data import CurveKey, Group, Point, ReportData, SeriesKey, Source
from attnbench.report.tables import SeriesStats, Table, fmt_len, fmt_ms, fmt_ratio, memory_points


@dataclass(frozen=True)
class ImplSection:
    """One design of one group (and source) with every implementation that ran it."""

    key: str  # unique within the report; names the figure file
    title: str  # the design as the group's tables name it (variant, telling parameters, source)
    group: Group
    design: CurveKey  # the curve with impl "native" (whether or not native ran)
    stats: dict[str, SeriesStats]  # impl -> its series' stats, in the report's curve order (native first)
    fastest: Table
    crossovers: Table

    @property
    def impls(self) -> list[str]:
        return list(self.stats)

    def points(self, impl: str) -> list[Point]:
        return self.stats[impl].points


def _is_baseline(data: ReportData, key: SeriesKey) -> bool:
    c = key.curve
    return c.variant == data.baseline and c.transform == "none" and c.impl == "native"


def _ok_time(p: Point | None) -> float | None:
    t = p.time() if p is not None else None
    return t[0] if t else None


def fastest_table(title: str, stats: dict[str, SeriesStats]) -> Table:
    """A row per length: the fastest implementation, its median, and every implementation's median
    over the fastest one's (its status where it has no figure)."""
    impls = list(stats)
    at = {impl: {p.seq_len: p for p in s.points} for impl, s in stats.items()}
    lengths = sorted({n for by in at.values() for n in by})
    rows = []
    for n in lengths:
        times = {impl: t for impl in impls if (t := _ok_time(at[impl].get(n))) is not None}
        best = min(times, key=lambda i: times[i]) if times else None  # a tie goes to the first (native)
        row = [fmt_len(n), best or "—", fmt_ms(times[best]) if best else "—"]
        for impl in impls:
            p = at[impl].get(n)
            if p is None:
                row.append("—")
            elif impl in times and best is not None:
                row.append(fmt_ratio(times[impl] / times[best]) + ("" if p.stable else " ~"))
            else:
                row.append(p.status)  # a case without a figure: its status, never a number
        rows.append(row)
    return Table(
        f"Fastest implementation at each length — {title}",
        ["n", "fastest", "ms", *impls],
        rows,
        right=frozenset({0, 2, *range(3, 3 + len(impls))}),
        notes=[
            "ms: the fastest implementation's median per call; under each implementation its median over the "
            "fastest's at that length (1.00×: the fastest; ~: unstable).",
            "words: the case's status (it has no figure); —: no case at that length.",
        ],
        nowrap=frozenset({0, 1}),
    )


def _speedup_at_longest(s: SeriesStats) -> str:
    measured = [sp for sp in s.speedups if sp.outcome == "measured"]
    if not measured:
        return "—"
    last = max(measured, key=lambda sp: sp.seq_len)
    return f"{fmt_ratio(last.speedup)} @ {fmt_len(last.seq_len)}" + ("" if last.significant else " (n.s.)")  # type: ignore[arg-type]


def crossover_table(data: ReportData, title: str, group: Group, stats: dict[str, SeriesStats]) -> Table:
    """Per implementation: its speedup over the baseline at the longest common length, and where it
    starts to beat the baseline in time and in peak memory."""
    rows = []
    for impl, s in stats.items():
        if _is_baseline(data, s.key):
            rows.append([impl, "baseline", "—", "—"])
        elif s.baseline is None:
            rows.append([impl, f"no {data.baseline} in scope {s.key.curve.scope}", "n/a", "n/a"])
        else:
            memory = memory_crossover(memory_points(group.series[s.baseline], s.points))
            rows.append([impl, _speedup_at_longest(s), s.crossover.text(), memory.text()])
    b = data.baseline
    return Table(
        f"Crossover vs {b} per implementation — {title}",
        ["impl", "speedup @ longest", "time crossover", "memory crossover"],
        rows,
        notes=[
            f"against {b} itself (its native kernel) of the same run, backend, dtype, mode, scope and shape; "
            f"speedup = {b} time / implementation time; crossovers as in the scaling and memory tables.",
        ],
    )


def impl_sections(data: ReportData, group: Group, stats: list[SeriesStats]) -> list[ImplSection]:
    """The group's designs that ran with more than one implementation, in the report's curve order;
    none for an overlay group across backends (each backend's own group has them)."""
    if group.backend is None:
        return []
    designs: dict[tuple[Source, CurveKey], dict[str, SeriesStats]] = {}
    for s in stats:
        designs.setdefault((s.key.source, replace(s.key.curve, impl="native")), {})[s.key.curve.impl] = s
    several = [(k, by) for k, by in designs.items() if len(by) > 1]
    out = []
    for i, ((source, design), by) in enumerate(several):
        title = data.curve_label(design, group)
        where = data.source_label(source, group.sources)
        if where:
            title += f" · {where}"
        out.append(
            ImplSection(
                f"{group.key}-impls-{i}",
                title,
                group,
                design,
                by,
                fastest_table(title, by),
                crossover_table(data, title, group, by),
            )
        )
    return out


def without_notes(table: Table) -> Table:
    """The table for all but a group's last section: the notes are the same, shown once after it."""
    return replace(table, notes=[])
