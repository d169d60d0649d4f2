"""The Quality section's figures, drawn with matplotlib (Agg) like attnbench.report.figures and
saved through its `_save` (PNG and SVG, literal labels, stable SVG ids):

- cost against accuracy per task and length: what each design's accuracy costs in time per
  training step, with the Pareto front and chance;
- accuracy by dependency distance per task: where each design stops seeing far enough;
- attention maps per task and design (`bench quality --maps`): what a trained model attends;
- cost against approximation per length (`bench run --quality approx`): time per call beside
  the error against exact full attention, and the pattern mass.

Reads stored records and map files only (attnbench.report.quality); imports matplotlib, so the
CLI imports it inside `run` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window, never a display server

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from attnbench.analysis.quality import QualityPoint
from attnbench.analysis.quality_stats import pareto_front
from attnbench.report.figures import PALETTE, RC, FigureFile, _save
from attnbench.report.labels import separate_labels
from attnbench.report.quality import ApproxPoint, QualityReport, QualityTask
from attnbench.report.tables import fmt_len

MAP_HEADS = 4  # columns of a map figure: more heads make each panel too small to read
MAP_GAMMA = 0.5  # square-root colour scale: a sharp peak would otherwise leave the rest of a map blank
ERR_FLOOR = 1e-16  # an exact design (relative error 0) still gets a place on the log axis
FRONT_KW = {"color": "black", "linewidth": 1.1, "alpha": 0.75, "zorder": 2}

COST_CAPTION = (
    "Held-out accuracy (mean over seeds; bars: its 95% CI) against the median time per training step (log). "
    "Black steps: the Pareto front, the designs no other design beats on both time and accuracy (ringed). "
    "Dashed: chance, the best input-blind guess."
)
DISTANCE_CAPTION = (
    "Held-out accuracy per dependency distance (the tokens between an answer and what it depends on, in "
    "power-of-two bins; correct over asked, summed over seeds). Where a design's line falls to chance is where "
    "its pattern stops reaching."
)
MAPS_CAPTION = (
    "Attention probabilities a trained model (one seed: the title names it) gives one held-out example: rows are "
    "layers, columns "
    "heads (at most 4); each cell is the mean over pool × pool query-key pairs; square-root colour scale. "
    "◂ marks the query positions whose answers are scored."
)
APPROX_CAPTION = (
    "Each case's median time per call (log) against how far its output is from exact full attention on "
    "structured inputs: relative error (log; lower is better) and pattern mass (higher is better). Black steps: "
    "the Pareto front (ringed); exact designs sit at the bottom left."
)


def _colours(labels: Iterable[str]) -> dict[str, str]:
    """One colour per design, fixed across a run's figures."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(sorted(set(labels)))}


def _ms_axis(ax: Axes, xs: Sequence[float], label: str) -> None:
    ax.set_xscale("log")
    lo, hi = min(xs), max(xs)
    ax.set_xlim(lo / 1.5, hi * 1.5)  # room for the labels beside the points at either end
    decades = math.log10(hi * 1.5 / (lo / 1.5))
    # Enough ticks to read a time off a narrow range (designs often lie within a factor of a few).
    if decades <= 0.7:
        subs: tuple[float, ...] = tuple(float(k) for k in range(1, 10))
    elif decades <= 1.5:
        subs = (1.0, 2.0, 3.0, 5.0)
    else:
        subs = (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.set_xlabel(label)


def _front_line(ax: Axes, points: Sequence[tuple[float, float]]) -> None:
    """The front as steps: from each point level to the next one's cost, then to its quality, and
    on from the last to the right edge (so a front of one point shows too). Call after the x limits
    are set."""
    pts = sorted(points)
    if pts:
        right = max(ax.get_xlim()[1], pts[-1][0])
        xs, ys = [x for x, _ in pts] + [right], [y for _, y in pts] + [pts[-1][1]]
        ax.step(xs, ys, where="post", **FRONT_KW)


def _point(ax: Axes, x: float, y: float, colour: str, front: bool, yerr: tuple[float, float] | None = None) -> None:
    kw: dict[str, Any] = {
        "marker": "o",
        "markersize": 8 if front else 5.5,
        "color": colour,
        "markeredgecolor": "black" if front else colour,
        "markeredgewidth": 1.6 if front else 1.0,
        "linestyle": "none",
        "zorder": 4 if front else 3,
    }
    if yerr is None:
        ax.plot([x], [y], **kw)
    else:
        ax.errorbar([x], [y], yerr=[[yerr[0]], [yerr[1]]], capsize=3, elinewidth=1.0, **kw)


def _key(ax: Axes, handles: list, labels: list[str], designs: list[tuple[str, str]]) -> None:
    """The marker key between the title and the axes; the designs' colours under the axes."""
    top = ax.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        frameon=False,
        fontsize=7,
        handlelength=1.6,
        columnspacing=1.0,
    )
    ax.add_artist(top)
    if designs:
        dh = [Line2D([], [], marker="o", color=c, linestyle="none") for _, c in designs]
        ncol = 1 if max(len(d) for d, _ in designs) > 45 else 2
        ax.legend(
            dh, [d for d, _ in designs], loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False
        )


# ----------------------------------------------------------------------------- cost against accuracy


def cost_figure(
    task: QualityTask, n: int, backend: str, dtype: str, colours: dict[str, str]
) -> tuple[Figure | None, list[str]]:
    """Accuracy (95% CI) against time per training step at one length, the front and chance."""
    pts = [p for p in task.points if (p.seq_len, p.backend, p.dtype) == (n, backend, dtype)]
    drawn = [p for p in pts if p.step_time_s and p.accuracy.mean is not None]
    notes = [
        f"{task.task} n={fmt_len(n)}: {task.design_of(p)} is not drawn (no seed trained and was timed)."
        for p in pts
        if p not in drawn
    ]
    if not drawn:
        return None, notes
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in drawn:
        x, y = p.step_time_s * 1e3, p.accuracy.mean  # type: ignore[operator]
        acc = p.accuracy
        err = (y - acc.ci_low, acc.ci_high - y) if acc.ci_low is not None and acc.ci_high is not None else (0.0, 0.0)  # type: ignore[operator]
        label = task.design_of(p)
        _point(ax, x, y, colours[label], p.pareto, err)  # type: ignore[arg-type]
        ax.annotate(label, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=7, color=colours[label])
    chance = next((p.chance for p in drawn if p.chance is not None), None)
    if chance is not None:
        ax.axhline(chance, color="0.35", linestyle="--", linewidth=1.0, zorder=1)
    ax.set_ylim(-0.02, 1.02)  # the whole accuracy range: figures of one report compare at a glance
    ax.set_ylabel("held-out accuracy")
    _ms_axis(ax, [p.step_time_s * 1e3 for p in drawn], "time per training step (ms, median over seeds; log)")  # type: ignore[operator]
    _front_line(ax, [(p.step_time_s * 1e3, p.accuracy.mean) for p in drawn if p.pareto])  # type: ignore[misc, operator]
    ax.set_title(f"{task.task}: accuracy against cost — n={fmt_len(n)}, {backend} · {dtype}")
    key_h = [
        Line2D([], [], marker="o", color="0.5", markeredgecolor="black", markeredgewidth=1.6, linestyle="none"),
        Line2D([], [], drawstyle="steps-post", **{k: v for k, v in FRONT_KW.items() if k != "zorder"}),
        Line2D([], [], color="0.35", linestyle="--"),
        Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=9),
    ]
    designs = sorted({task.design_of(p) for p in drawn})
    _key(ax, key_h, ["on the front", "Pareto front", "chance", "95% CI"], [(d, colours[d]) for d in designs])
    separate_labels(ax)
    return fig, notes


# ----------------------------------------------------------------------------- accuracy by distance


def _bin_x(b: dict[str, Any]) -> float:
    return math.sqrt(b["lo"] * b["hi"])  # the bin's middle on the log axis


def distance_figure(task: QualityTask, colours: dict[str, str]) -> Figure | None:
    """Accuracy per dependency-distance bin, one line per design (and length, where several)."""
    with_bins = [p for p in task.points if any(b["asked"] for b in p.by_distance)]
    if not with_bins:
        return None
    several = len({p.seq_len for p in with_bins}) > 1
    styles = ("-", "--", ":", "-.")
    lengths = sorted({p.seq_len for p in with_bins})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    handles, labels = [], []
    ticks: dict[float, str] = {}
    for p in sorted(with_bins, key=lambda p: (task.design_of(p), p.seq_len)):
        bins = [b for b in p.by_distance if b["asked"]]
        xs = [_bin_x(b) for b in bins]
        ys = [b["correct"] / b["asked"] for b in bins]
        for b, x in zip(bins, xs, strict=True):
            ticks[x] = f"{b['lo']}" if b["hi"] - b["lo"] == 1 else f"{b['lo']}–{b['hi'] - 1}"
        label = task.design_of(p) + (f" n={fmt_len(p.seq_len)}" if several else "")
        (line,) = ax.plot(
            xs,
            ys,
            marker="o",
            markersize=4,
            color=colours[task.design_of(p)],
            linestyle=styles[lengths.index(p.seq_len) % len(styles)],
            linewidth=1.4,
        )
        handles.append(line)
        labels.append(label)
    chance = next((p.chance for p in with_bins if p.chance is not None), None)
    if chance is not None:
        ax.axhline(chance, color="0.35", linestyle="--", linewidth=1.0, zorder=1)
        handles.append(Line2D([], [], color="0.35", linestyle="--"))
        labels.append("chance")
    ax.set_xscale("log", base=2)
    xs = sorted(ticks)
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: ticks.get(x, "")))
    if len(xs) > 6:
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    if len(xs) == 1:
        ax.set_xlim(xs[0] / 1.5, xs[0] * 1.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("dependency distance (tokens; power-of-two bins)")
    ax.set_ylabel("held-out accuracy in the bin")
    ax.set_title(f"{task.task}: accuracy by dependency distance", pad=6)
    ncol = 1 if max(len(lb) for lb in labels) > 45 else 2
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False)
    return fig


# ----------------------------------------------------------------------------- attention maps


def _answers(data: dict[str, Any]) -> str:
    answers, predicted = list(data.get("answers") or []), list(data.get("predicted") or [])
    if not answers:
        return "no answer asked"
    if len(answers) <= 3 and len(predicted) == len(answers):
        a, p = ", ".join(map(str, answers)), ", ".join(map(str, predicted))
        return f"answer {a}, predicted {p}" if len(answers) == 1 else f"answers {a}; predicted {p}"
    right = sum(1 for x, y in zip(answers, predicted, strict=False) if x == y)
    return f"{right} of {len(answers)} answers predicted right"


def read_map(folder: Path, relative: str) -> tuple[dict[str, Any] | None, str | None]:
    """A map file the record names, inside its run folder; (None, why) where it cannot be read."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        return None, f"{relative} lies outside the run folder; not read"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{relative} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{relative} could not be read ({exc})"
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(la, dict) and la.get("heads") for la in layers):
        return None, f"{relative} holds no layers of heads"
    if not all(_square(head) for la in layers for head in la["heads"]):
        return None, f"{relative} holds a head that is not a square grid of numbers"
    return data, None


def _square(head: Any) -> bool:
    """A map as maps.py writes it: m rows of m numbers."""
    if not isinstance(head, list) or not head:
        return False
    m = len(head)
    return all(
        isinstance(row, list)
        and len(row) == m
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in row)
        for row in head
    )


def map_figure(task: QualityTask, p: QualityPoint, folder: Path) -> tuple[Figure | None, str | None]:
    """One trained model's attention on one held-out example: layers by heads."""
    relative = p.maps[0]  # the first job's to finish with maps; its file says which seed
    data, why = read_map(folder, relative)
    if data is None:
        return None, f"{task.task} {task.design_of(p)}: attention maps not drawn ({why})."
    layers = data["layers"]
    cols = min(MAP_HEADS, max(len(la["heads"]) for la in layers))  # at least 1: read_map checked
    pool = int(data.get("pool") or 1)
    n = int(data.get("seq_len") or p.seq_len)
    panels = [[la["heads"][h] if h < len(la["heads"]) else None for h in range(cols)] for la in layers]
    peak = max((max(max(row) for row in m) for r in panels for m in r if m), default=1.0) or 1.0
    norm = PowerNorm(MAP_GAMMA, vmin=0.0, vmax=peak)
    fig, axes = plt.subplots(len(layers), cols, figsize=(2.4 * cols + 1.2, 2.4 * len(layers) + 1.0), squeeze=False)
    image = None
    asked = [int(x) for x in data.get("asked_positions") or []]
    for r, (la, row) in enumerate(zip(layers, panels, strict=True)):
        for c, m in enumerate(row):
            ax = axes[r][c]
            ax.grid(False)
            if m is None:
                ax.set_visible(False)
                continue
            side = len(m) * pool
            image = ax.imshow(m, cmap="magma_r", norm=norm, extent=(0, side, side, 0), interpolation="nearest")
            ax.set_xlim(0, n)
            ax.set_ylim(n, 0)
            if asked:
                ax.plot(
                    [0] * len(asked),
                    [a + 0.5 for a in asked],
                    marker="<",
                    markersize=4,
                    color="#1f77b4",
                    linestyle="none",
                    clip_on=False,
                    zorder=5,
                )
            ax.set_title(f"layer {la.get('layer', r)}, head {c}", fontsize=8, pad=4)
            ax.tick_params(labelsize=6.5)
            if r == len(layers) - 1:
                ax.set_xlabel("key position", fontsize=7.5)
            if c == 0:
                ax.set_ylabel("query position", fontsize=7.5)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.85, label="attention probability (pooled)")
    heads = max(len(la["heads"]) for la in layers)
    shown = f"{cols} of {heads} heads" if cols < heads else f"{cols} heads"
    pooled = f"pooled {pool}×{pool}" if pool > 1 else "not pooled"
    fig.suptitle(
        f"{data.get('task', task.task)} — {task.design_of(p)} — n={fmt_len(n)}, seed {data.get('seed', '?')}, "
        f"{pooled}, {shown}\n{_answers(data)}",
        fontsize=9,
    )
    return fig, None


# ----------------------------------------------------------------------------- cost against approximation


def approx_figure(points: Sequence[ApproxPoint], group: str, n: int) -> tuple[Figure, list[str]]:
    """Time per call against relative error (log) and against pattern mass, with each panel's front."""
    colours = _colours(a.label for a in points)
    fig, (ax_e, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    fig.subplots_adjust(bottom=0.3, top=0.8, wspace=0.25)
    notes = []
    floored = [a.label for a in points if (a.value("rel_err") or 0.0) < ERR_FLOOR and a.value("rel_err") is not None]
    if floored:
        notes.append(f"approximation n={fmt_len(n)}: {', '.join(floored)} drawn at {ERR_FLOOR:g} (relative error 0).")
    for ax, key, ylabel, lower in (
        (ax_e, "rel_err", "relative error vs full attention (log)", True),
        (ax_m, "pattern_mass", "pattern mass (share of full attention's mass seen)", False),
    ):
        drawn = [(a, a.median_s * 1e3, a.value(key)) for a in points if a.value(key) is not None]  # type: ignore[operator]
        if not drawn:
            ax.text(0.5, 0.5, f"no case has {key}", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ys = [max(y, ERR_FLOOR) if lower else y for _, _, y in drawn]  # type: ignore[type-var]
        front = pareto_front([(x, -y if lower else y) for (_, x, _), y in zip(drawn, ys, strict=True)])
        for (a, x, _), y, on in zip(drawn, ys, front, strict=True):
            _point(ax, x, y, colours[a.label], on)
            ax.annotate(a.label, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=7, color=colours[a.label])
        if lower:
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.02, 1.05)
        ax.set_ylabel(ylabel)
        _ms_axis(ax, [x for _, x, _ in drawn], "median time per call (ms; log)")
        _front_line(ax, [(x, y) for (_, x, _), y, on in zip(drawn, ys, front, strict=True) if on])
        ax.set_title(("lower is better" if lower else "higher is better"), pad=6, fontsize=9)
        separate_labels(ax)
    fig.suptitle(f"cost against approximation — n={fmt_len(n)}, {group}", fontsize=10)
    handles = [
        Line2D([], [], marker="o", color="0.5", markeredgecolor="black", markeredgewidth=1.6, linestyle="none"),
        Line2D([], [], drawstyle="steps-post", **{k: v for k, v in FRONT_KW.items() if k != "zorder"}),
        *(Line2D([], [], marker="o", color=c, linestyle="none") for c in colours.values()),
    ]
    labels = ["on the front", "Pareto front", *colours]
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), frameon=False)
    return fig, notes


# ----------------------------------------------------------------------------- all of them


def render_quality(quality: QualityReport, folder: Path) -> tuple[list[FigureFile], list[str]]:
    """Every figure of the Quality section, under the names attnbench.report.quality gives them,
    and a note for each one that could not be drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[FigureFile] = []
    notes: list[str] = []
    with plt.rc_context(RC):
        for run in quality.runs:
            colours = _colours(label for t in run.tasks for label in t.labels.values())
            for task in run.tasks:
                for n, backend, dtype in task.settings:
                    fig, why = cost_figure(task, n, backend, dtype, colours)
                    notes += why
                    if fig is not None:
                        title = f"{task.task}: accuracy against cost — n={fmt_len(n)}, {backend} · {dtype}"
                        files.append(_save(fig, folder, task.cost_figure(n, backend, dtype), title, COST_CAPTION))
                fig = distance_figure(task, colours)
                if fig is not None:
                    title = f"{task.task}: accuracy by dependency distance"
                    files.append(_save(fig, folder, task.distance_figure, title, DISTANCE_CAPTION))
                notes += task.map_notes
                for p in task.map_points():
                    fig, note = map_figure(task, p, run.folder)
                    if fig is None:
                        notes.append(note or "")
                        continue
                    title = f"{task.task}: attention maps — {task.design_of(p)}, n={fmt_len(p.seq_len)}"
                    files.append(_save(fig, folder, task.map_figure(p), title, MAPS_CAPTION))
        for group, n, points in quality.approx_groups():
            fig, why = approx_figure(points, group, n)
            notes += why
            title = f"cost against approximation — n={fmt_len(n)}, {group}"
            files.append(_save(fig, folder, quality.approx_figure(group, n), title, APPROX_CAPTION))
    return files, [n for n in notes if n]
