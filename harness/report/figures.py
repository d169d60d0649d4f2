"""The report's figures, drawn with matplotlib (Agg) and saved as PNG and SVG.

Conventions shared by every scaling figure: x = sequence length and both axes logarithmic;
one colour per curve (variant and parameters), one line style and marker per source (run,
backend, host); a shaded band for the 95% confidence interval of the median; hollow markers
for unstable points; × on the top edge at lengths whose case is not ok.

Importing this module imports matplotlib: the CLI imports it inside `run` only.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window, never a display server

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from attnbench.core.pattern_grid import PATTERN_MAX_LEN, PatternGrid
from attnbench.report.data import Group, Point, ReportData, SeriesKey, curve_key
from attnbench.report.escaping import literal_figure
from attnbench.report.impls import ImplSection, impl_sections
from attnbench.report.labels import separate_labels
from attnbench.report.tables import SeriesStats, calibration_notes, energy_note, fmt_bytes, fmt_len

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
)
RC = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titlepad": 16,  # room for the marker key between the title and the axes
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 7.5,
    "legend.framealpha": 0.85,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "attnbench",  # stable SVG ids: a re-rendered report diffs cleanly
}
PNG_DPI = 144
PATTERN_PREFERRED_LEN = 1024  # long enough for windows and blocks to show as structure
PATTERN_SINCE = "0.2.0"  # the first attnbench whose case records store the pattern


@dataclass(frozen=True)
class FigureFile:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: Path
    svg: Path


@dataclass
class Figures:
    """What was drawn, and for what could not be, why."""

    folder: Path
    files: list[FigureFile]
    notes: dict[str, list[str]]  # group key (or "patterns", "ponder") -> reasons

    def of(self, prefix: str) -> list[FigureFile]:
        return [f for f in self.files if f.name.startswith(prefix + "-") or f.name == prefix]

    def named(self, name: str) -> FigureFile | None:
        return next((f for f in self.files if f.name == name), None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def impl_figure_name(section: ImplSection) -> str:
    """The file stem of a design's implementation figure; not under its group's prefix, so the
    formats show it beside the design's tables rather than among the group's figures."""
    return f"impls-{_slug(section.key)}"


class Painter:
    """Colours and line styles fixed for the whole report."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        self.colour = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(data.curves)}
        self.style = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(data.sources)}
        self.marker = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(data.sources)}

    def line_kw(self, key: SeriesKey) -> dict:
        return {"color": self.colour[key.curve], "linestyle": self.style[key.source], "linewidth": 1.5}

    def scatter(self, ax: Axes, key: SeriesKey, xs: list[float], ys: list[float], stable: list[bool]) -> None:
        colour, marker = self.colour[key.curve], self.marker[key.source]
        for x, y, s in zip(xs, ys, stable, strict=True):
            ax.plot(
                [x],
                [y],
                marker=marker,
                markersize=5,
                color=colour,
                markerfacecolor=colour if s else "white",
                markeredgewidth=1.2,
                linestyle="none",
                zorder=3,
            )

    def failures(self, ax: Axes, key: SeriesKey, points: list[Point], row: int = 0) -> None:
        """× at the top edge for each length whose case is not ok; one row per curve with
        failures, so two curves failing at the same length stay visible."""
        bad = [p.seq_len for p in points if not p.ok]
        if bad:
            ax.plot(
                bad,
                [0.97 - 0.045 * row] * len(bad),
                marker="x",
                markersize=7,
                markeredgewidth=1.8,
                linestyle="none",
                color=self.colour[key.curve],
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                zorder=4,
            )


def _length_axis(ax: Axes, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length n (tokens)")
    distinct = sorted(set(lengths))
    if 0 < len(distinct) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(distinct))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_len(x) if x > 0 else ""))
    if len(distinct) == 1:  # one length: give the point some room
        ax.set_xlim(distinct[0] / 1.5, distinct[0] * 1.5)


def _legend(ax: Axes, handles: list, labels: list[str], marker_key: bool = True, key: tuple = ()) -> None:
    """Curves in a legend under the axes (never over the data: on log-log axes curves go
    anywhere); the marker key in one row between the title and the axes."""
    key_h: list = list(key[0]) if key else []
    key_l: list[str] = list(key[1]) if key else []
    if marker_key:
        key_h += [
            Patch(facecolor="0.6", alpha=0.3),
            Line2D([], [], marker="o", color="0.3", linestyle="none"),
            Line2D([], [], marker="o", color="0.3", markerfacecolor="white", linestyle="none"),
            Line2D([], [], marker="x", color="0.3", linestyle="none", markeredgewidth=1.8),
        ]
        key_l += ["95% CI", "stable", "unstable", "not ok"]
    if key_h:
        top = ax.legend(
            key_h,
            key_l,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=len(key_h),
            frameon=False,
            fontsize=7,
            handlelength=1.4,
            columnspacing=1.0,
        )
        ax.add_artist(top)
    if handles:
        ncol = 1 if max((len(lb) for lb in labels), default=0) > 45 else 2
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def _log_y(ax: Axes, base: int = 10) -> None:
    """A log y axis labelled often enough to read a value off it: 1-2-5 steps per decade,
    or every power of two (bytes); sparser when the range is wide."""
    ax.set_yscale("log", base=base)
    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 else 10
    if base == 2:
        ax.yaxis.set_major_locator(LogLocator(base=2, numticks=8))
    elif decades < 3:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs="auto", numticks=12) if base == 10 else NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _bytes_formatter() -> FuncFormatter:
    return FuncFormatter(lambda y, _pos: fmt_bytes(y) if y > 0 else "")


def _eng(unit: str) -> FuncFormatter:
    def f(y: float, _pos: int) -> str:
        if y <= 0:
            return ""
        for prefix, div in (
            ("P", 1e15),
            ("T", 1e12),
            ("G", 1e9),
            ("M", 1e6),
            ("k", 1e3),
            ("", 1.0),
            ("m", 1e-3),
            ("µ", 1e-6),
            ("n", 1e-9),
        ):
            if y >= div * 0.9999:
                return f"{y / div:.3g} {prefix}{unit}"
        return f"{y:.1e} {unit}"

    return FuncFormatter(f)


@dataclass(frozen=True)
class Metric:
    kind: str
    title: str
    ylabel: str
    value: Callable[[Point], tuple[float, float, float] | None]  # (y, band low, band high)
    formatter: Callable[[], FuncFormatter]
    caption: str


def _single(fn: Callable[[Point], float | None]) -> Callable[[Point], tuple[float, float, float] | None]:
    def f(p: Point) -> tuple[float, float, float] | None:
        y = fn(p)
        return None if y is None else (y, y, y)

    return f


METRICS = (
    Metric(
        "time",
        "median time per call",
        "seconds per call",
        lambda p: p.time(),
        lambda: _eng("s"),
        "Median wall time of one call; the band is the median's 95% confidence interval.",
    ),
    Metric(
        "throughput",
        "throughput",
        "tokens per second",
        lambda p: p.throughput(),
        lambda: _eng("tok/s"),
        "batch × n / median time; the band follows from the median's 95% CI.",
    ),
    Metric(
        "memory",
        "peak memory above the inputs",
        "peak memory",
        _single(lambda p: p.peak_memory),
        _bytes_formatter,
        "Measured peak above the baseline taken after the inputs exist; thin dotted lines: the analytic minimum.",
    ),
    Metric(
        "energy",
        "energy per token",
        "joules per token",
        _single(lambda p: p.energy_per_token),
        lambda: _eng("J"),
        "Energy of one call from the device's hardware counter, divided by batch × n.",
    ),
)


def _save(fig: Figure, folder: Path, name: str, title: str, caption: str) -> FigureFile:
    literal_figure(fig)  # labels are variant names, parameters, hosts: `$` in them is not math
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    fig.savefig(png, dpi=PNG_DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return FigureFile(name, title, caption, png, svg)


def metric_figure(data: ReportData, paint: Painter, group: Group, metric: Metric) -> Figure | None:
    series = {k: [(p, metric.value(p)) for p in pts] for k, pts in group.series.items()}
    if not any(v for pts in series.values() for _, v in pts):
        return None
    fig, ax = plt.subplots()
    handles, labels = [], []
    failed_rows = 0
    for key, pts in series.items():
        good = [(p, v) for p, v in pts if v is not None]
        xs = [p.seq_len for p, _ in good]
        ys = [v[0] for _, v in good]
        if good:
            (line,) = ax.plot(xs, ys, **paint.line_kw(key))
            if any(v[1] != v[2] for _, v in good):
                ax.fill_between(
                    xs, [v[1] for _, v in good], [v[2] for _, v in good], color=line.get_color(), alpha=0.15, lw=0
                )
            paint.scatter(ax, key, xs, ys, [p.stable for p, _ in good])
            handles.append(line)
            labels.append(data.series_label(key, group))
        elif metric.kind in ("time", "throughput", "memory"):
            handles.append(Line2D([], [], **paint.line_kw(key)))  # only × marks: still named
            labels.append(data.series_label(key, group) + " (no ok case)")
        if metric.kind == "memory":
            mins = [(p.seq_len, p.analytic_min_bytes) for p in group.series[key] if p.ok and p.analytic_min_bytes]
            if mins:
                ax.plot(
                    *zip(*mins, strict=True), color=paint.colour[key.curve], linestyle=":", linewidth=0.8, alpha=0.8
                )
        # Where this metric was not measured at all (e.g. no energy counter) there is nothing to flag.
        flag = metric.kind in ("time", "throughput", "memory") or good
        if flag and any(not p.ok for p in group.series[key]):
            paint.failures(ax, key, group.series[key], failed_rows)
            failed_rows += 1
    _log_y(ax, base=2 if metric.kind == "memory" else 10)
    ax.yaxis.set_major_formatter(metric.formatter())
    ax.set_ylabel(metric.ylabel)
    _length_axis(ax, [p.seq_len for p in group.points])
    ax.set_title(f"{metric.title} — {group.title}")
    _legend(ax, handles, labels)
    return fig


def speedup_figure(data: ReportData, paint: Painter, group: Group, stats: list[SeriesStats]) -> Figure | None:
    compared = [s for s in stats if s.baseline is not None and s.speedups]
    if not compared:
        return None
    fig, ax = plt.subplots()
    handles, labels = [], []
    for s in compared:
        measured = [sp for sp in s.speedups if sp.outcome == "measured"]
        kw = paint.line_kw(s.key)
        if measured:
            xs = [sp.seq_len for sp in measured]
            (line,) = ax.plot(xs, [sp.speedup for sp in measured], **kw)
            ax.fill_between(
                xs, [sp.low for sp in measured], [sp.high for sp in measured], color=kw["color"], alpha=0.15, lw=0
            )
            stable = {p.seq_len: p.stable for p in s.points}
            base_stable = {p.seq_len: p.stable for p in group.series[s.baseline]}  # type: ignore[index]
            paint.scatter(
                ax,
                s.key,
                xs,
                [sp.speedup for sp in measured],
                [stable[x] and base_stable[x] for x in xs],  # type: ignore[misc]
            )
        else:
            line = Line2D([], [], **kw)
        handles.append(line)
        labels.append(s.label)
        for outcome, y, marker in (("baseline failed", 0.97, "^"), ("variant failed", 0.03, "v")):
            xs = [sp.seq_len for sp in s.speedups if sp.outcome == outcome]
            if xs:
                ax.plot(
                    xs,
                    [y] * len(xs),
                    marker=marker,
                    linestyle="none",
                    color=kw["color"],
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
        c = s.crossover
        if c.kind == "at":
            x = c.interpolated or c.length
            ax.axvline(x, color=kw["color"], linestyle=(0, (2, 2)), linewidth=1, alpha=0.9)
            ax.plot([x], [1.0], marker="*", markersize=11, color=kw["color"], markeredgecolor="black", zorder=5)
            ax.annotate(
                f"n≈{fmt_len(round(x))}",
                (x, 1.0),
                xytext=(5, -12),
                textcoords="offset points",
                fontsize=7.5,
                color=kw["color"],
                zorder=6,  # over the stars and lines of nearby crossovers
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
            )
    ax.axhline(1.0, color="black", linewidth=0.9)
    _log_y(ax)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}×"))
    lo, hi = ax.get_ylim()
    span = max(abs(math.log10(lo)), abs(math.log10(hi)), 0.3)
    ax.set_ylim(10 ** (-span), 10**span)  # symmetric about 1: faster and slower look alike
    ax.set_ylabel(f"speedup over {data.baseline} (>1: faster)")
    _length_axis(ax, [sp.seq_len for s in compared for sp in s.speedups])
    ax.set_title(f"speedup over {data.baseline} — {group.title}")
    extra = [
        Line2D([], [], marker="*", color="0.5", markeredgecolor="black", markersize=9, linestyle="none"),
        Line2D([], [], marker="^", color="0.3", linestyle="none"),
        Line2D([], [], marker="v", color="0.3", linestyle="none"),
    ]
    extra += [
        Patch(facecolor="0.6", alpha=0.3),
        Line2D([], [], marker="o", color="0.3", markerfacecolor="white", linestyle="none"),
    ]
    _legend(
        ax,
        handles,
        labels,
        marker_key=False,
        key=(extra, ["crossover", "only variant ran", "only baseline ran", "95% band", "unstable"]),
    )
    separate_labels(ax, down=True)  # close crossovers (n≈1,014 and n≈1,180) would print on top of each other
    return fig


def _loglog_at(points: list[tuple[float, float]], x: float) -> float | None:
    """The y of a curve at x, linear in log-log between the measured points that bracket it."""
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1 and x1 > x0:
            frac = math.log(x / x0) / math.log(x1 / x0)
            return math.exp(math.log(y0) + frac * (math.log(y1) - math.log(y0)))
    return next((y for px, y in points if px == x), None)


def impl_figure(data: ReportData, paint: Painter, section: ImplSection) -> Figure | None:
    """One design, one line per implementation: time per call and (where measured) peak memory
    against n, with the baseline's native curve dashed and each implementation's crossover (★)."""
    group = section.group
    metrics = [m for m in METRICS if m.kind == "time"]
    if any(p.peak_memory for impl in section.impls for p in section.points(impl)):
        metrics += [m for m in METRICS if m.kind == "memory"]
    if not any(p.ok for impl in section.impls for p in section.points(impl)):
        return None
    base = next((s.baseline for s in section.stats.values() if s.baseline is not None), None)
    own = {s.key for s in section.stats.values()}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.4), squeeze=False)
    fig.subplots_adjust(bottom=0.26, top=0.84, wspace=0.28)
    handles: list = []
    labels: list[str] = []
    for ax, metric in zip(axes.flat, metrics, strict=True):
        failed_rows = 0
        for impl, s in section.stats.items():
            kw = paint.line_kw(s.key)
            good = [(p, v) for p in s.points if (v := metric.value(p)) is not None]
            if good:
                xs, ys = [p.seq_len for p, _ in good], [v[0] for _, v in good]
                (line,) = ax.plot(xs, ys, label=impl, **kw)
                if any(v[1] != v[2] for _, v in good):
                    ax.fill_between(
                        xs, [v[1] for _, v in good], [v[2] for _, v in good], color=kw["color"], alpha=0.15, lw=0
                    )
                paint.scatter(ax, s.key, xs, ys, [p.stable for p, _ in good])
                end = {"xytext": (5, 0), "textcoords": "offset points", "va": "center", "fontsize": 7.5}
                ax.annotate(impl, (xs[-1], ys[-1]), color=kw["color"], **end)
                if metric.kind == "time" and s.crossover.kind == "at":
                    x = s.crossover.interpolated or s.crossover.length
                    y = _loglog_at(list(zip(xs, ys, strict=True)), x)  # type: ignore[arg-type]
                    if y is not None:
                        ax.plot(
                            [x], [y], marker="*", markersize=11, color=kw["color"], markeredgecolor="black", zorder=5
                        )
                        at = {"xytext": (5, -12), "textcoords": "offset points", "fontsize": 7, "zorder": 6}
                        ax.annotate(f"n≈{fmt_len(round(x))}", (x, y), color=kw["color"], **at)
            elif ax is axes.flat[0]:
                line = Line2D([], [], **kw)  # only × marks: still named
            if ax is axes.flat[0]:
                handles.append(line)
                labels.append(impl if good else f"{impl} (no ok case)")
            if any(not p.ok for p in s.points):
                paint.failures(ax, s.key, s.points, failed_rows)
                failed_rows += 1
        if base is not None and base not in own:
            ref = [(p.seq_len, v[0]) for p in group.series[base] if (v := metric.value(p)) is not None]
            if ref:
                kw = {**paint.line_kw(base), "linestyle": "--", "linewidth": 1.1}
                (line,) = ax.plot(*zip(*ref, strict=True), label=f"{data.baseline} (native)", **kw)
                end = {"xytext": (5, 0), "textcoords": "offset points", "va": "center", "fontsize": 7.5}
                ax.annotate(data.baseline, ref[-1], color=kw["color"], **end)
                if ax is axes.flat[0]:
                    handles.append(line)
                    labels.append(f"{data.baseline} (native): the baseline")
        _log_y(ax, base=2 if metric.kind == "memory" else 10)
        ax.yaxis.set_major_formatter(metric.formatter())
        ax.set_ylabel(metric.ylabel)
        lengths = [p.seq_len for impl in section.impls for p in section.points(impl)]
        lengths += [p.seq_len for p in group.series[base]] if base is not None and base not in own else []
        _length_axis(ax, lengths)
        # room right of the longest length for the names at the lines' ends, whatever the span
        span = math.log2(max(lengths) / min(lengths))
        ax.set_xlim(min(lengths) / 2 ** (0.05 * span + 0.2), max(lengths) * 2 ** (0.25 * span + 0.4))
        ax.set_title(metric.title, pad=6)
        separate_labels(ax)  # implementations of one design run close: their names and crossovers stack up
    handles += [
        Line2D([], [], marker="*", color="0.5", markeredgecolor="black", markersize=9, linestyle="none"),
        Patch(facecolor="0.6", alpha=0.3),
        Line2D([], [], marker="o", color="0.3", markerfacecolor="white", linestyle="none"),
        Line2D([], [], marker="x", color="0.3", linestyle="none", markeredgewidth=1.8),
    ]
    labels += [f"crossover vs {data.baseline}", "95% CI", "unstable", "not ok"]
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False)
    fig.suptitle(f"implementations — {section.title} — {group.title}", fontsize=10)
    return fig


def roofline_figure(data: ReportData, paint: Painter, group: Group) -> tuple[Figure | None, list[str]]:
    """Achieved FLOP/s against arithmetic intensity under each source's ceilings, if it has any."""
    sources = sorted({k.source for k in group.series}, key=lambda s: (s.run_index, s.backend))
    ceilings = {s: data.ceilings(s, group.dtype) for s in sources}
    notes = calibration_notes(data, group)
    drawn = [s for s, c in ceilings.items() if c.any]
    if not drawn:
        return None, notes
    pts = [p for k, ps in group.series.items() if k.source in drawn for p in ps if p.intensity and p.flops_per_s]
    if not pts:
        return None, [*notes, "roofline: no case records both FLOPs and a minimum byte count."]
    fig, ax = plt.subplots()
    xs = [p.intensity for p in pts]
    lo, hi = min(xs) / 4, max(xs) * 4  # type: ignore[type-var, operator]
    for s in drawn:
        c = ceilings[s]
        if c.flops_per_s and c.bytes_per_s:
            lo, hi = min(lo, c.flops_per_s / c.bytes_per_s / 4), max(hi, c.flops_per_s / c.bytes_per_s * 4)
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    handles, labels = [], []
    for s in drawn:
        c = ceilings[s]
        roof = [min(c.flops_per_s or math.inf, (c.bytes_per_s or math.inf) * x) for x in grid]
        (line,) = ax.plot(grid, roof, color="black", linestyle=paint.style[s], linewidth=1.4)
        where = data.source_label(s, drawn)
        parts = []
        if c.flops_per_s:
            parts.append(_eng("FLOP/s")(c.flops_per_s, 0))
        if c.bytes_per_s:
            parts.append(_eng("B/s")(c.bytes_per_s, 0))
        handles.append(line)
        labels.append(
            f"ceiling ({c.source or 'unknown source'}): {', '.join(parts)}" + (f" · {where}" if where else "")
        )
    for key, ps in group.series.items():
        if key.source not in drawn:
            continue
        good = sorted((p for p in ps if p.intensity and p.flops_per_s), key=lambda p: p.seq_len)
        if not good:
            continue
        kw = paint.line_kw(key)
        (line,) = ax.plot(
            [p.intensity for p in good], [p.flops_per_s for p in good], color=kw["color"], linewidth=0.8, alpha=0.6
        )
        paint.scatter(ax, key, [p.intensity for p in good], [p.flops_per_s for p in good], [p.stable for p in good])  # type: ignore[misc]
        for p in (good[0], good[-1]) if len(good) > 1 else (good[0],):
            ax.annotate(
                fmt_len(p.seq_len),
                (p.intensity, p.flops_per_s),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=6.5,
                color=kw["color"],
            )  # type: ignore[arg-type]
        handles.append(Line2D([], [], color=kw["color"], marker=paint.marker[key.source]))
        labels.append(data.series_label(key, group))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (useful FLOPs per minimum byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.yaxis.set_major_formatter(_eng("FLOP/s"))
    ax.set_title(f"roofline — {group.title}")
    _legend(ax, handles, labels, marker_key=False)
    separate_labels(ax)  # every curve has the same intensity at a given n: their length labels stack up
    return fig, notes


def _pattern_point(points: list[Point]) -> Point | None:
    """A measured length whose stored pattern shows the structure: the shortest from
    PATTERN_PREFERRED_LEN up, else the longest stored (patterns are stored up to PATTERN_MAX_LEN)."""
    stored = sorted((p for p in points if p.case.pattern is not None), key=lambda p: p.seq_len)
    long_enough = [p for p in stored if p.seq_len >= PATTERN_PREFERRED_LEN]
    return long_enough[0] if long_enough else (stored[-1] if stored else None)


def _why_no_pattern(data: ReportData, label: str, points: list[Point]) -> str | None:
    """The note for a curve none of whose cases stored a pattern; None where there is nothing to
    draw (every query sees every key) or nothing was measured (the cases table says why)."""
    measured = [p for p in points if p.status == "ok"]
    if not measured:
        return None
    if all(p.seq_len > PATTERN_MAX_LEN for p in measured):
        shortest = measured[0].seq_len
        return f"{label}: pattern not drawn (stored up to n={PATTERN_MAX_LEN:,}; measured from n={shortest:,})."
    if not any(p.case.recorded("pattern") for p in measured):  # written before records had patterns
        return f"{label}: pattern not stored in this run (recorded from attnbench {PATTERN_SINCE} on)."
    return None


def pattern_figure(data: ReportData) -> tuple[Figure | None, list[str]]:
    """Each sparse (or otherwise masked) curve's attention pattern, as its case record stored it.

    The worker pooled the variant's definition (its reference mask) after timing
    (attnbench.engine.patterns); nothing is rebuilt here, and it is never a measurement.
    """
    curves: dict = {}
    for p in data.points:
        if p.case.family in ("sparse", "hierarchical"):
            curves.setdefault(curve_key(p), []).append(p)
    panels: list[tuple[str, PatternGrid]] = []
    notes: list[str] = []
    for curve, pts in curves.items():
        label = data.curve_label(curve)
        pts = sorted(pts, key=lambda p: p.seq_len)
        point = _pattern_point(pts)
        if point is None or point.case.pattern is None:
            note = _why_no_pattern(data, label, pts)
            if note:
                notes.append(note)
            continue
        try:
            panels.append((label, PatternGrid.from_json(point.case.pattern)))
        except ValueError as exc:  # the worker could not build the mask, or a newer format
            notes.append(f"{label}: pattern not drawn ({exc}).")
    if not panels:
        return None, notes
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    image = None
    for ax, (label, grid) in zip(axes.flat, panels, strict=False):
        side = grid.extent
        image = ax.imshow(
            grid.shares(), cmap="Blues", vmin=0, vmax=1, extent=(0, side, side, 0), interpolation="nearest"
        )
        ax.grid(False)
        example = " (example input)" if grid.input_dependent else ""
        ax.set_title(f"{label}\nn={grid.n:,}, {grid.density:.1%} of pairs{example}", fontsize=8)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(image, ax=list(axes.flat[: len(panels)]), shrink=0.8, label="share of pairs attended (per cell)")
    return fig, notes


def ponder_figure(data: ReportData, paint: Painter) -> Figure | None:
    """ACT: how many steps tokens took, per curve and length, from the case records."""
    series: dict[SeriesKey, list[Point]] = {}
    for p in data.points:
        if p.ponder_histogram:
            series.setdefault(SeriesKey(p.source, curve_key(p)), []).append(p)
    if not series:
        return None
    cols = min(2, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(series) :]:
        ax.set_visible(False)
    cmap = plt.get_cmap("viridis")
    for ax, (key, pts) in zip(axes.flat, series.items(), strict=False):
        pts = sorted(pts, key=lambda p: p.seq_len)
        width = 0.8 / len(pts)
        for i, p in enumerate(pts):
            hist = p.ponder_histogram
            assert hist is not None
            total = sum(hist)
            steps = list(range(len(hist)))
            mean = sum(k * c for k, c in enumerate(hist)) / total
            colour = cmap(i / max(1, len(pts) - 1) * 0.85)
            ax.bar(
                [k - 0.4 + width * (i + 0.5) for k in steps],
                [c / total for c in hist],
                width=width,
                color=colour,
                label=f"n={fmt_len(p.seq_len)}: mean {mean:.2f}, max {max(k for k, c in enumerate(hist) if c)}",
            )
            ax.axvline(mean, color=colour, linestyle="--", linewidth=0.9)
        target = curve_key(pts[0]).param_dict.get("target_steps")
        ax.set_xlabel("ponder steps per token" + (f" (target mean {target})" if target is not None else ""))
        ax.set_ylabel("share of tokens")
        ax.set_xticks(range(len(pts[0].ponder_histogram or [])))
        ax.set_title(data.series_label(key), fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("ACT ponder steps (last timed call of each case; dashed: mean)", fontsize=10)
    fig.tight_layout()
    return fig


def transforms_figure(data: ReportData) -> tuple[Figure | None, str | None]:
    """The transforms' own trade-off figure (speedup and memory saving against fidelity loss)."""
    from attnbench.report.transforms_figure import tradeoff_figure

    return tradeoff_figure([p.case for p in data.points]), None


def render(data: ReportData, stats: dict[str, list[SeriesStats]], folder: Path) -> Figures:
    folder.mkdir(parents=True, exist_ok=True)
    out = Figures(folder, [], {})
    with plt.rc_context(RC):
        paint = Painter(data)
        for group in data.groups:
            notes = out.notes.setdefault(group.key, [])
            base = _slug(group.key)
            for metric in METRICS:
                fig = metric_figure(data, paint, group, metric)
                if fig is None:
                    if metric.kind == "energy":
                        notes.append(energy_note(group) or "energy: no ok case has this figure.")
                    else:
                        notes.append(f"{metric.title}: no ok case has this figure.")
                    continue
                out.files.append(
                    _save(fig, folder, f"{base}-{metric.kind}", f"{metric.title} — {group.title}", metric.caption)
                )
            fig = speedup_figure(data, paint, group, stats[group.key])
            if fig is None:
                notes.append(f"speedup: {data.baseline} is not in this group, so there is nothing to compare with.")
            else:
                out.files.append(
                    _save(
                        fig,
                        folder,
                        f"{base}-speedup",
                        f"speedup over {data.baseline} — {group.title}",
                        f"{data.baseline}'s median over the variant's, same source, scope and shape; band: "
                        "conservative 95% interval from both medians' CIs; ★ crossover "
                        "(interpolated in log-log between the bracketing lengths).",
                    )
                )
            fig, roof_notes = roofline_figure(data, paint, group)
            notes.extend(roof_notes)
            if fig is not None:
                out.files.append(
                    _save(
                        fig,
                        folder,
                        f"{base}-roofline",
                        f"roofline — {group.title}",
                        "Achieved useful FLOP/s against FLOPs per minimum byte; black: the device's ceilings "
                        "min(peak FLOP/s, intensity × peak bandwidth), as recorded in run.json.",
                    )
                )
            for section in impl_sections(data, group, stats[group.key]):
                fig = impl_figure(data, paint, section)
                if fig is None:
                    notes.append(f"implementations of {section.title}: no ok case to draw.")
                    continue
                out.files.append(
                    _save(
                        fig,
                        folder,
                        impl_figure_name(section),
                        f"implementations — {section.title} — {group.title}",
                        "One line per implementation of the design (same run, backend, dtype, mode, scope and "
                        f"shape); dashed: {data.baseline}'s native kernel; ★ where an implementation starts to beat "
                        "it (the crossover tables' figure); × on the top edge: a length whose case is not ok.",
                    )
                )
        fig, notes = pattern_figure(data)
        out.notes["patterns"] = notes
        if fig is not None:
            out.files.append(
                _save(
                    fig,
                    folder,
                    "patterns",
                    "attention patterns",
                    "Which keys each query attends at a measured length: the variant's reference mask, pooled "
                    "by the worker and stored in the case record (computed, not measured). Darker: a larger share of "
                    "the cell's pairs.",
                )
            )
        if any(p.case.transform != "none" for p in data.points):
            fig, note = transforms_figure(data)
            if note:
                out.notes["patterns"].append(note)
            if fig is not None:
                out.files.append(
                    _save(
                        fig,
                        folder,
                        "transforms",
                        "transform trade-offs",
                        "Per transform and variant: speedup and peak-memory saving over the untransformed case of the "
                        "same configuration, against the fidelity loss recorded in each case "
                        "(attnbench.report.transforms_figure.tradeoff_figure).",
                    )
                )
        fig = ponder_figure(data, paint)
        if fig is not None:
            out.files.append(
                _save(
                    fig,
                    folder,
                    "ponder",
                    "ACT ponder steps",
                    "Distribution of ponder steps per token that adaptive.act recorded for the last timed call of "
                    "each case (workload_metrics.ponder_histogram).",
                )
            )
    return out
