"""bench compare's output: the comparison (attnbench.analysis.compare) as a rich table on the
terminal, as markdown (a pull request's comment, GitHub's step summary), and its headline."""

from __future__ import annotations

from typing import Any

from attnbench.analysis.compare import FAILING, Comparison
from attnbench.analysis.significance import p_text
from attnbench.analysis.time_judgements import RELATIVE
from attnbench.analysis.verdicts import MetricChange, change_text
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
            ci = f" (95% CI {s.time_ci_low - 1:+.1%} … {s.time_ci_high - 1:+.1%})"
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
    """The comparison as a rich table on the terminal."""
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
    table = LiteralTable(title_justify="left")
    table.add_column("case", min_width=24, ratio=3, overflow="fold")
    paired = is_paired(cmp)
    for col, just in (
        ("base ms", "right"),
        ("cur ms", "right"),
        ("change", "right"),
        ("paired (p)" if paired else "host-rel", "right"),
        ("95% CI", "right"),
        ("p", "right"),
        ("memory MiB (Δ)", "right"),
        ("verdict", "left"),
    ):
        table.add_column(col, justify=just, no_wrap=col == "verdict")  # type: ignore[arg-type]
    table.add_column("why", ratio=2, overflow="fold")
    for case in cmp.cases:
        t = case.time
        style = VERDICT_STYLE[case.verdict]
        table.add_row(
            case.label,
            _ms(t.baseline if t else None),
            _ms(t.current if t else None),
            change_text(t.ratio if t else None),
            _paired_cell(t) if paired else _host_rel(t),
            _ci(t),
            p_text(t.p_value if t else None),
            _mem_cell(case.memory),
            literal(case.verdict, style),
            case.reason or "",
        )
    console.print(table)
    console.print(line(headline(cmp)), soft_wrap=True)


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
