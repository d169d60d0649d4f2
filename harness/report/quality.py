"""Quality tables: accuracy ± 95% CI over seeds beside time per training step and peak memory,
one table per task, and LRA's published ordering against the measured one. Plain rows
(attnbench.report.tables.Table), so the terminal, Markdown and HTML show the same numbers.
Reads summarised records only (attnbench.analysis.quality)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from attnbench.analysis.quality import LraAgreement, QualityPoint, lra_agreement
from attnbench.report.tables import Table, fmt_bytes, fmt_len, fmt_ms

if TYPE_CHECKING:
    from rich.console import Console


def accuracy_cell(p: QualityPoint) -> str:
    """ "0.982 ± 0.011 (3)": mean ± the CI's half width (seeds); a status where no seed finished."""
    acc = p.accuracy
    if acc.mean is None:
        bad = [s for s in p.statuses if s != "ok"]
        return bad[0] if bad else "—"
    half = acc.half_width()
    text = f"{acc.mean:.3f}" + (f" ± {half:.3f}" if half is not None else "") + f" ({acc.seeds})"
    if acc.seeds < p.seeds:
        text += f" of {p.seeds}"
    return text


def quality_tables(points: Sequence[QualityPoint]) -> list[Table]:
    """One table per task: a row per design and implementation, a column block per length."""
    tables = []
    for task in dict.fromkeys(p.task for p in points):
        rows_of = [p for p in points if p.task == task]
        rows = []
        for p in sorted(rows_of, key=lambda p: (p.seq_len, p.impl_label)):
            chance = f"{p.chance:.3f}" if p.chance is not None else "—"
            learned = f"{p.learned}/{p.accuracy.seeds}" if p.accuracy.seeds else "—"
            rows.append(
                [
                    p.impl_label,
                    fmt_len(p.seq_len),
                    accuracy_cell(p),
                    chance,
                    learned,
                    fmt_ms(p.step_time_s) if p.step_time_s is not None else "—",
                    fmt_bytes(p.peak_memory_bytes) if p.peak_memory_bytes is not None else "—",
                    "yes" if p.pareto else "",
                ]
            )
        notes = [
            "accuracy: held-out mean ± half the 95% CI over seeds (Student t), clipped to [0, 1]; (k): seeds that "
            "trained and were evaluated. above chance: seeds whose accuracy beats the best input-blind guess "
            "(one-sided binomial p < 0.01). front: on the Pareto front of time per step against accuracy at that "
            "length."
        ]
        for p in rows_of:
            for reason in p.reasons:
                notes.append(f"{p.impl_label} n={p.seq_len}: {reason}")
        steps = sorted({p.steps for p in rows_of})
        tables.append(
            Table(
                title=f"{task}: accuracy and cost ({', '.join(map(str, steps))} training steps)",
                headers=["design", "n", "accuracy", "chance", "above chance", "ms/step", "peak memory", "front"],
                rows=rows,
                right=frozenset({1, 2, 3, 4, 5, 6}),
                notes=notes,
            )
        )
    return tables


def lra_tables(agreements: Sequence[LraAgreement]) -> list[Table]:
    """Published LRA accuracy beside the measured one, with Kendall's τ between the orderings."""
    tables = []
    for a in agreements:
        labels = sorted(a.measured, key=lambda k: -a.measured[k])
        rows = [[k, f"{a.published[k]:.2f}" if k in a.published else "—", f"{a.measured[k]:.3f}"] for k in labels]
        tau = (
            f"Kendall's τ = {a.tau.tau:.2f}, p = {a.tau.p_value:.2g} ({a.tau.method}, {a.tau.n} designs)"
            if a.tau is not None
            else "fewer than 3 designs in common: no rank agreement"
        )
        tables.append(
            Table(
                title=f"LRA {a.lra_task} (Tay et al. 2020, Table 1) against {a.task} at n={fmt_len(a.seq_len)}",
                headers=["design", "published accuracy %", "measured accuracy"],
                rows=rows,
                right=frozenset({1, 2}),
                notes=[tau, a.note],
            )
        )
    return tables


def print_quality_summary(console: Console, points: Sequence[QualityPoint]) -> None:
    from attnbench.report.escaping import literal
    from attnbench.report.terminal import show

    for table in [*quality_tables(points), *lra_tables(lra_agreement(points))]:
        show(console, table)
        for note in table.notes:
            console.print(literal(note, "dim"), soft_wrap=True)
