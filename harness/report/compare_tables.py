"""bench compare's output: the comparison (attnbench.analysis.compare) as a rich table on the
terminal, as markdown (a pull request's comment, GitHub's step summary), and its headline."""

from __future__ import annotations

from typing import Any

from attnbench.analysis.compare import FAILING, Comparison
from attnbench.analysis.significance import p_text
from attnbench.analysis.time_judgements import RELATIVE
from attnbench.analysis.verdicts import MetricChange, change_text
from attnbench.report.console import fit
from attnbench.report.escaping import LiteralTable, line, literal, md_cell, md_code, md_text


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _host_rel(m: MetricChange | None) -> str:
    """The change of the host-relative medians, where both runs paired their samples."""
    return "-" if m is None or m.host_relative_ratio is None else change_text(m.host_relative_ratio)


def _ci(m: MetricChange | None) -> str:
    if m is None or m.ci_low is None or m.ci_high is None:
        return "-"
    return f"[{m.ci_low - 1:+.1%}, {m.ci_high - 1:+.1%}]"


def _mem_cell(m: MetricChange | None) -> str:
    if m is None or m.verdict is None:
        return "-"
    delta = (m.current or 0) - (m.baseline or 0)
    return f"{_mib(m.current)} ({delta / 2**20:+.1f})"


def headline(cmp: Comparison) -> str:
    """One line: the cases by verdict, and the geometric means of the time and memory changes."""
    s = cmp.summary
    counts = ", ".join(f"{n} {v}" for v, n in s.counts.items() if n)
    geo = ""
    if s.time_geomean is not None:
        ci = ""
        if s.time_ci_low is not None and s.time_ci_high is not None:
            ci = f" (95% CI {s.time_ci_low - 1:+.1%} to {s.time_ci_high - 1:+.1%})"
        geo = f"; time geometric mean {s.time_geomean - 1:+.1%}{ci} over {s.cases_compared} cases"
    if s.memory_geomean is not None:
        geo += f"; memory geometric mean {s.memory_geomean - 1:+.1%} over {s.memory_cases} cases"
    return f"{len(cmp.cases)} cases: {counts or 'none'}{geo}"


VERDICT_STYLE = {
    "regression": "bold red",
    "failed": "bold red",
    "unstable": "yellow",
    "improvement": "green",
    "no change": "dim",
    "changed": "cyan",
    "new": "cyan",
    "missing": "magenta",
}


def _paired_cell(m: MetricChange | None) -> str:
    if m is None or m.paired_ratio is None:
        return "-"
    return f"{change_text(m.paired_ratio)} (p={p_text(m.pass_p)})"


def is_paired(cmp: Comparison) -> bool:
    """Whether the runs are the two sides of one bench ab (judged on the passes' ratios)."""
    return any(c.time is not None and c.time.paired_ratio is not None for c in cmp.cases)


def time_basis_used(cmp: Comparison) -> bool:
    """Whether any case's time was judged host-relative."""
    return any(c.time is not None and c.time.basis == RELATIVE for c in cmp.cases)


def render_table(cmp: Comparison, console: Any) -> None:
    """The comparison on the terminal: a table where the console is wide enough for its ten
    columns with every word whole (fit), otherwise a few lines per case (80 columns)."""
    b, c = cmp.baseline, cmp.current
    console.print(
        line(
            "baseline ",
            (b["run_id"], "bold"),
            f" ({b['ref']}, {b['started_at']})  →  current ",
            (c["run_id"], "bold"),
            f" ({c['ref']}, {c['started_at']})",
        ),
        soft_wrap=True,
    )
    for refusal in cmp.environment_refusals:
        console.print(line(("environment differs", "bold yellow"), f" (allowed by --allow-env-mismatch): {refusal}"))
    for note in cmp.environment_notes:
        console.print(line((f"note: {note}", "dim")))
    paired = is_paired(cmp)
    table = wide_table(cmp, paired)
    if fit(console, [table]):
        console.print(table)
    else:  # 80 columns: ten columns do not fit beside a case's label; a few lines per case
        console.print(case_lines(cmp, paired))
    console.print(line(headline(cmp)), soft_wrap=True)


def wide_table(cmp: Comparison, paired: bool) -> LiteralTable:
    """A row per case, a column per figure (where the terminal is wide enough: fit)."""
    table = LiteralTable(title_justify="left")
    table.add_column("case")
    for col in ("base ms", "cur ms", "change", "paired (p)" if paired else "host-rel", "95% CI", "p", "memory MiB (Δ)"):
        table.add_column(col, justify="right")
    table.add_column("verdict", no_wrap=True)
    table.add_column("why", overflow="fold")
    for case in cmp.cases:
        t = case.time
        table.add_row(
            case.label,
            _ms(t.baseline if t else None),
            _ms(t.current if t else None),
            change_text(t.ratio if t else None),
            _paired_cell(t) if paired else _host_rel(t),
            _ci(t),
            p_text(t.p_value if t else None),
            _mem_cell(case.memory),
            literal(case.verdict, VERDICT_STYLE[case.verdict]),
            case.reason or "",
        )
    return table


def case_lines(cmp: Comparison, paired: bool) -> LiteralTable:
    """A few lines per case: its verdict and label, then its time, memory and why, each
    wrapping at its spaces (no name, figure or status is cut at any width)."""
    lines = LiteralTable.grid(padding=(0, 1))
    lines.add_column(no_wrap=True, min_width=max(map(len, VERDICT_STYLE)))  # the labels line up
    lines.add_column(overflow="fold")  # only a word longer than the whole line folds
    for case in cmp.cases:
        lines.add_row(literal(case.verdict, VERDICT_STYLE[case.verdict]), literal(case.label, "bold"))
        t, m = case.time, case.memory
        if t is not None:
            figures = [
                f"{_ms(t.baseline)} → {_ms(t.current)} ms, {change_text(t.ratio)}",
                f"95% CI {_ci(t)}",
                f"p {p_text(t.p_value)}",
            ]
            if paired and t.paired_ratio is not None:
                figures.append(f"paired {_paired_cell(t)}")
            elif not paired and t.host_relative_ratio is not None:
                figures.append(f"host-rel {_host_rel(t)}")
            lines.add_row(literal("  time", "dim"), "; ".join(figures))
        if m is not None and m.verdict is not None:
            delta = ((m.current or 0) - (m.baseline or 0)) / 2**20
            lines.add_row(literal("  memory", "dim"), f"{_mib(m.current)} MiB ({delta:+.1f})")
        if case.reason:
            lines.add_row(literal("  why", "dim"), case.reason)
    return lines


def render_markdown(cmp: Comparison) -> str:
    """The comparison as markdown, for a pull request's comment or GitHub's step summary."""
    b, c = cmp.baseline, cmp.current
    n_fail = len(cmp.failing)
    status = f":x: **{n_fail} regression(s)**" if n_fail else ":white_check_mark: **no regression**"
    lines = [
        "## attnbench comparison",
        "",
        f"{status} — {md_text(headline(cmp))}",
        "",
        *(
            f"- {side}: {md_code(r['run_id'])} ({md_text(r['ref'])}; {md_text(r['started_at'])}; "
            f"commit {md_code((r['git'] or {}).get('commit'))})"
            for side, r in (("baseline", b), ("current", c))
        ),
    ]
    paired = is_paired(cmp)
    source = md_text(cmp.config_source)
    if paired:
        lines += [
            f"- thresholds: {source}; the runs took turns (bench ab), so a change counts when the paired "
            "estimate is beyond the threshold *and* its test's p is below alpha (sides timed in block turns: the "
            "mean over passes of each pass's Hodges–Lehmann change over its block pairs, t-test across passes; "
            "in whole-pass turns: Hodges–Lehmann and Wilcoxon signed-rank over the pass pairs); change, CI and "
            "p (Mann–Whitney) are those of the pooled samples, for reading",
        ]
    else:
        lines += [
            f"- thresholds: {source}; a change counts when beyond the threshold *and* Mann–Whitney p below alpha",
            f"- change, CI and p on {'host-relative' if time_basis_used(cmp) else 'raw'} samples; host-rel: the "
            "change of each sample over the host's reference kernel timed around it (for reading; see the README)",
        ]
    lines += [f"- environment differs (allowed): {md_text(r)}" for r in cmp.environment_refusals]
    lines += [f"- note: {md_text(n)}" for n in cmp.environment_notes]
    lines += [
        "",
        f"| case | base ms | cur ms | change | {'paired (p)' if paired else 'host-rel'} | 95% CI | p | "
        "memory MiB (Δ) | verdict | why |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for case in cmp.cases:
        t = case.time
        verdict = f"**{case.verdict}**" if case.verdict in FAILING else case.verdict
        lines.append(
            f"| {md_code(case.label, in_table=True)} | {_ms(t.baseline if t else None)} | "
            f"{_ms(t.current if t else None)} | "
            f"{change_text(t.ratio if t else None)} | {_paired_cell(t) if paired else _host_rel(t)} | {_ci(t)} | "
            f"{p_text(t.p_value if t else None)} | "
            f"{_mem_cell(case.memory)} | {verdict} | {md_cell(case.reason or '')} |"
        )
    return "\n".join(lines) + "\n"
