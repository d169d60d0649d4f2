"""Quality tables: accuracy ± 95% CI over seeds beside time per training step and peak memory,
one table per task, and LRA's published ordering against the measured one. Plain rows
(attnbench.report.tables.Table), so the terminal, Markdown and HTML show the same numbers.
Reads summarised records only (attnbench.analysis.quality).

`quality_report` gathers what a report's "Quality" section shows from the stored runs: each
run's quality.jsonl (`bench quality`) summarised per task, and the cases of `bench run
--quality approx` that carry approx_quality. The figures' file names are fixed here, so the
formats find the figures that attnbench.report.quality_figures drew by name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.analysis.quality import LraAgreement, QualityPoint, lra_agreement, summarize_quality
from attnbench.analysis.quality_stats import pareto_front
from attnbench.core.quality_record import QualityRecord, load_quality
from attnbench.report.data import Point, ReportData, SeriesKey, curve_key
from attnbench.report.tables import Table, fmt_bytes, fmt_len, fmt_ms

if TYPE_CHECKING:
    from rich.console import Console

QUALITY_TITLE = "Quality"
APPROX_TITLE = "Approximation of full attention (bench run --quality approx)"
LRA_NOTE = (
    "Long Range Arena's published accuracies beside this run's: only the orderings are comparable (Kendall's τ), "
    "not the percentages."
)
NOT_LEARNED = "did not beat chance"  # how a record that trained but learned nothing begins its reason
APPROX_FIGURES = (  # approx_quality key, column header
    ("rel_err", "rel. error"),
    ("cosine", "cosine"),
    ("pattern_mass", "pattern mass"),
    ("partner_recall", "partner recall"),
    ("long_range_mass", "long-range mass"),
)


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


def _fmt_param(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def design_labels(points: Sequence[QualityPoint]) -> dict[str, str]:
    """config_id -> the design as tables and figures name it: the implementation's label, plus
    what tells apart configurations of one task and length that would otherwise read alike (the
    parameters that differ, the transform, the backend and dtype). The same configuration keeps
    one label at every length, so its colour and legend entry follow it across figures."""
    collide: dict[tuple, list[QualityPoint]] = defaultdict(list)
    for p in points:
        collide[(p.task, p.seq_len, p.impl_label)].append(p)
    shown: dict[str, set[str]] = defaultdict(set)  # impl_label -> the parameters to show
    settings: dict[str, set[str]] = defaultdict(set)  # impl_label -> "backend", "dtype" where they differ
    for (_, _, label), ps in collide.items():
        if len({p.config_id for p in ps}) < 2:
            continue
        names = {k for p in ps for k in p.params}
        shown[label] |= {k for k in names if len({repr(p.params.get(k)) for p in ps}) > 1}
        settings[label] |= {k for k in ("backend", "dtype") if len({getattr(p, k) for p in ps}) > 1}
    out = {}
    for p in points:
        text = p.impl_label
        keys = sorted(shown.get(p.impl_label, ()))
        if keys:
            text += " " + ", ".join(f"{k}={_fmt_param(p.params.get(k))}" for k in keys)
        if p.transform != "none":
            text += f" +{p.transform}"
        for k in sorted(settings.get(p.impl_label, ())):
            text += f" {getattr(p, k)}"
        out[p.config_id] = text
    return out


def quality_tables(points: Sequence[QualityPoint], labels: Mapping[str, str] | None = None) -> list[Table]:
    """One table per task: a row per design and implementation, a column block per length.
    `labels`: config_id -> the design's name (default design_labels(points))."""
    labels = labels if labels is not None else design_labels(points)
    tables = []
    for task in dict.fromkeys(p.task for p in points):
        rows_of = [p for p in points if p.task == task]
        rows = []
        for p in sorted(rows_of, key=lambda p: (p.seq_len, labels[p.config_id])):
            chance = f"{p.chance:.3f}" if p.chance is not None else "—"
            learned = f"{p.learned}/{p.accuracy.seeds}" if p.accuracy.seeds else "—"
            rows.append(
                [
                    labels[p.config_id],
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
                # A seed that trained but stayed at chance is counted in "above chance"; a line per
                # seed saying so again would bury the reasons jobs failed.
                if not reason.startswith(NOT_LEARNED):
                    notes.append(f"{labels[p.config_id]} n={p.seq_len}: {reason}")
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


# ----------------------------------------------------------------------------- the report's section


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


@dataclass(frozen=True)
class QualityTask:
    """One task of one run: its table, and the names its figures are drawn under."""

    task: str
    table: Table
    points: tuple[QualityPoint, ...]
    labels: dict[str, str]  # config_id -> design label (design_labels over the run)
    prefix: str  # figure names start with it
    map_notes: tuple[str, ...] = ()  # designs asked for maps that wrote none, and why

    @property
    def settings(self) -> list[tuple[int, str, str]]:
        """(n, backend, dtype) of each cost-against-accuracy figure: the Pareto front is within one."""
        return sorted({(p.seq_len, p.backend, p.dtype) for p in self.points})

    def cost_figure(self, n: int, backend: str, dtype: str) -> str:
        several = len({(b, d) for _, b, d in self.settings}) > 1
        return f"{self.prefix}-{slug(f'{backend}-{dtype}')}-n{n}-cost" if several else f"{self.prefix}-n{n}-cost"

    @property
    def distance_figure(self) -> str:
        return f"{self.prefix}-distance"

    def map_points(self) -> list[QualityPoint]:
        """One per design that wrote maps: at the longest length it has them."""
        best: dict[str, QualityPoint] = {}
        for p in self.points:
            if not p.maps:
                continue
            design = self.design_of(p)
            if design not in best or p.seq_len > best[design].seq_len:
                best[design] = p
        return sorted(best.values(), key=lambda p: self.design_of(p))

    def design_of(self, p: QualityPoint) -> str:
        return self.labels[p.config_id]

    def map_figure(self, p: QualityPoint) -> str:
        return f"{self.prefix}-maps-{slug(self.design_of(p))}"

    @property
    def figure_names(self) -> list[str]:
        """Every figure this task may have, in the order the formats show them (a name that was
        not drawn is skipped there)."""
        names = [self.cost_figure(*s) for s in self.settings]
        names.append(self.distance_figure)
        names += [self.map_figure(p) for p in self.map_points()]
        return names


@dataclass(frozen=True)
class QualityRun:
    """The quality records of one run folder, summarised."""

    run_id: str
    label: str | None  # the run's short name where several runs have quality records
    folder: Path
    models: int  # records in quality.jsonl
    points: tuple[QualityPoint, ...]
    tasks: tuple[QualityTask, ...]
    lra: tuple[Table, ...]


@dataclass(frozen=True)
class ApproxPoint:
    """One case with approximation figures, as the approximation table and figure show it."""

    point: Point
    label: str
    group: str  # backend · dtype · mode, and the scope where it is not core
    figures: dict[str, Any]  # approx_quality: the figures, or {"unavailable": reason}
    front: bool  # on the front of (time per call, relative error) within its group and length

    @property
    def available(self) -> bool:
        return "unavailable" not in self.figures

    def value(self, key: str) -> float | None:
        v = self.figures.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def median_s(self) -> float | None:
        t = self.point.time()
        return t[0] if t is not None else None


@dataclass(frozen=True)
class QualityReport:
    runs: tuple[QualityRun, ...]
    approx: tuple[ApproxPoint, ...]
    approx_table: Table | None

    @property
    def lra(self) -> list[Table]:
        return [t for r in self.runs for t in r.lra]

    @property
    def title(self) -> str:
        return QUALITY_TITLE

    @property
    def lra_note(self) -> str:
        return LRA_NOTE

    def approx_groups(self) -> list[tuple[str, int, list[ApproxPoint]]]:
        """(group, n, its points) of each approximation figure: one per backend · dtype · mode (· scope) and length."""
        by: dict[tuple[str, int], list[ApproxPoint]] = defaultdict(list)
        for a in self.approx:
            if a.available and a.median_s is not None:
                by[(a.group, a.point.seq_len)].append(a)
        return [(g, n, ps) for (g, n), ps in sorted(by.items())]

    def approx_figure(self, group: str, n: int) -> str:
        several = len({g for g, _, _ in self.approx_groups()}) > 1
        return f"approx-{slug(group)}-n{n}" if several else f"approx-n{n}"

    @property
    def approx_figure_names(self) -> list[str]:
        return [self.approx_figure(g, n) for g, n, _ in self.approx_groups()]


def _fmt_figure(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def _approx_points(data: ReportData) -> list[ApproxPoint]:
    found = [p for p in data.points if isinstance(p.case.approx_quality, dict) and p.case.approx_quality]
    # Times compare within one backend, dtype, mode and scope (a layer's time includes its projections).
    groups = [
        f"{p.case.backend} · {p.case.dtype} · {p.case.mode}" + (f" · {p.scope}" if p.scope != "core" else "")
        for p in found
    ]
    labels = [data.series_label(SeriesKey(p.source, curve_key(p))) for p in found]
    # The front of (time per call, relative error) per group and length: lower is better on both.
    by: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, p in enumerate(found):
        by[(groups[i], p.seq_len)].append(i)
    front = [False] * len(found)
    for idx in by.values():
        pairs: list[tuple[float, float] | None] = []
        for i in idx:
            t, figures = found[i].time(), found[i].case.approx_quality or {}
            err = figures.get("rel_err")
            usable = t is not None and isinstance(err, (int, float)) and "unavailable" not in figures
            pairs.append((t[0], -float(err)) if usable else None)  # type: ignore[index, arg-type]
        for i, on in zip(idx, pareto_front(pairs), strict=True):
            front[i] = on
    order = sorted(range(len(found)), key=lambda i: (groups[i], found[i].seq_len, labels[i]))
    return [
        ApproxPoint(found[i], labels[i], groups[i], dict(found[i].case.approx_quality or {}), front[i]) for i in order
    ]


def approx_table(points: Sequence[ApproxPoint]) -> Table | None:
    """Design, n, time per call and the approximation figures of each case that has them."""
    if not points:
        return None
    # The label names the scope and the backend where they vary (ReportData.series_label); the
    # dtype and mode only where they vary too.
    varying = [k for k in ("dtype", "mode") if len({getattr(a.point.case, k) for a in points}) > 1]
    rows, notes = [], []
    for a in points:
        design = " ".join([a.label, *(str(getattr(a.point.case, k)) for k in varying)])
        ms = fmt_ms(a.median_s) if a.median_s is not None else a.point.status
        if not a.available:
            rows.append([design, fmt_len(a.point.seq_len), ms, *("—" for _ in APPROX_FIGURES), ""])
            notes.append(f"{design} n={a.point.seq_len}: no figures ({a.figures.get('unavailable')}).")
            continue
        rows.append(
            [
                design,
                fmt_len(a.point.seq_len),
                ms,
                *(_fmt_figure(a.value(k)) for k, _ in APPROX_FIGURES),
                "yes" if a.front else "",
            ]
        )
        compared = a.figures.get("seq_len")
        if isinstance(compared, int) and compared != a.point.seq_len:
            notes.append(f"{design} n={a.point.seq_len}: compared at n={compared} (the dense comparison's limit).")
        if a.figures.get("pattern_mass_reason"):
            notes.append(f"{design} n={a.point.seq_len}: no pattern mass ({a.figures['pattern_mass_reason']}).")
        if a.figures.get("note"):
            notes.append(f"{a.point.case.variant}: {a.figures['note']}.")
    notes = list(dict.fromkeys(notes))
    notes.insert(
        0,
        "Each design's own definition against exact full attention on structured inputs (queries matched to "
        "planted near or far keys), float64, means over heads and queries. rel. error: ‖out − full‖/‖full‖; "
        "cosine: mean cosine of the outputs; pattern mass: full attention's probability mass on the keys the "
        "design lets a query see; partner recall: share of queries whose planted key it sees; long-range mass: "
        "pattern mass of the queries whose key is far. front: on the Pareto front of time per call against "
        "relative error at that length.",
    )
    return Table(
        title=APPROX_TITLE,
        headers=["design", "n", "ms/call", *(h for _, h in APPROX_FIGURES), "front"],
        rows=rows,
        right=frozenset(range(1, 2 + len(APPROX_FIGURES) + 1)),
        notes=notes,
    )


def _quality_run(data: ReportData, index: int, records: Sequence[QualityRecord], several: bool) -> QualityRun:
    r = data.runs[index]
    points = tuple(summarize_quality(records))
    labels = design_labels(points)
    label = data.run_label(index) if several else None
    base = "quality" + (f"-{slug(label)}" if label else "")
    tables = quality_tables(points, labels)
    tasks = []
    for table, task in zip(tables, dict.fromkeys(p.task for p in points), strict=True):
        if label:
            table = Table(f"{label}: {table.title}", table.headers, table.rows, table.right, table.notes)
        own = tuple(p for p in points if p.task == task)
        missing = {
            (rec.config_id, rec.maps_reason): None
            for rec in records
            if rec.task == task and rec.maps_reason and not any(q.maps for q in own if q.config_id == rec.config_id)
        }
        map_notes = tuple(f"{task} {labels[c]}: no attention maps ({why})." for c, why in missing)
        tasks.append(QualityTask(task, table, own, labels, f"{base}-{slug(task)}", map_notes))
    lra = []
    for t in lra_tables(lra_agreement(points)):
        lra.append(Table(f"{label}: {t.title}", t.headers, t.rows, t.right, t.notes) if label else t)
    return QualityRun(r.run.run_id, label, r.folder, len(records), points, tuple(tasks), tuple(lra))


def quality_report(data: ReportData) -> QualityReport | None:
    """What the report's Quality section shows; None where no run has quality data (the report
    is then exactly what it was without one)."""
    records = {i: found for i, r in enumerate(data.runs) if (found := load_quality(r.folder))}
    runs = [_quality_run(data, i, recs, len(records) > 1) for i, recs in records.items()]
    approx = _approx_points(data)
    if not runs and not approx:
        return None
    return QualityReport(tuple(runs), tuple(approx), approx_table(approx))
