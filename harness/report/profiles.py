"""A case's profile, drawn from its profile.json (attnbench.engine.profile_data): the tables
(ops.csv, ops.md), the memory figure (memory.png), and the summary `bench profile` prints.

The profile phase writes only the trace and profile.json; the command that asked for the
profile (bench profile, bench run --profile) calls write_profile_files on its folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from attnbench.engine.profile_data import MEMORY_PNG, OPS_CSV, OPS_MD, SUMMARY, TOP, Analysis
from attnbench.report.escaping import LiteralTable, csv_cell, line, literal_figure, md_cell, md_code, md_text


def write_profile_files(folder: Path) -> None:
    """ops.csv, ops.md and memory.png of the profile in folder, from its profile.json."""
    summary = json.loads((folder / SUMMARY).read_text())
    analysis = Analysis.from_json(summary)
    write_tables(folder, analysis)
    case = summary["case"]
    title = (
        f"{case['variant']} {case['backend']}/{case['dtype']}/{case['mode']} n={case['seq_len']}: "
        f"{analysis.calls} profiled call(s)"
    )
    memory_figure(folder / MEMORY_PNG, analysis, title)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def write_tables(out: Path, analysis: Analysis) -> None:
    """ops.csv (every operator) and ops.md (steps, top operators by time and by memory)."""
    with open(out / OPS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "step", "count_per_call", "self_s", "share", "device_s", "allocated_bytes"])
        for o in analysis.ops:
            w.writerow([csv_cell(o.name), csv_cell(o.step or ""), f"{o.count:g}", f"{o.self_s:.9g}", f"{o.share:.6f}",
                        "" if o.device_s is None else f"{o.device_s:.9g}", o.allocated_bytes])  # fmt: skip
    lines = [f"Per call, mean over {analysis.calls} profiled call(s) of {_ms(analysis.call_s)} ms each "
             f"(profiler overhead included; the timed figures are in the case record).", ""]  # fmt: skip
    lines += [f"- {md_text(n)}" for n in analysis.notes]
    if analysis.steps:
        lines += ["", "## Named steps (inclusive)", "", "| step | per call | time ms | share of call | allocated MiB |"]
        lines.append("|---|---:|---:|---:|---:|")
        for s in analysis.steps:
            name = ("  " * (s.depth - 1)) + md_cell(s.name)
            lines.append(f"| {name} | {s.count:g} | {_ms(s.total_s)} | {s.share:.1%} | {_mib(s.allocated_bytes)} |")
    header = "| operator | step | calls | self ms | share | device ms | allocated MiB |"
    for title, rows in (
        (f"## Top operators by {md_text(analysis.time_basis)}", analysis.ops[:TOP]),
        ("## Top operators by memory allocated", sorted(analysis.ops, key=lambda o: -o.allocated_bytes)[:TOP]),
    ):
        lines += ["", title, "", header, "|---|---|---:|---:|---:|---:|---:|"]
        for o in rows:
            lines.append(
                f"| {md_code(o.name, in_table=True)} | {md_cell(o.step or '-')} | {o.count:g} | {_ms(o.self_s)} | "
                f"{o.share:.1%} | "
                f"{_ms(o.device_s)} | {_mib(o.allocated_bytes)} |"
            )
    (out / OPS_MD).write_text("\n".join(lines) + "\n")


def memory_figure(path: Path, analysis: Analysis, title: str) -> None:
    """Memory over the profiled calls, one line per series, the top-level steps shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    names = sorted({n for n, _, _ in analysis.spans})
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    for name, a, b in analysis.spans:
        ax.axvspan(a * 1e3, b * 1e3, color=colours[name], alpha=0.25, lw=0)
    for s in analysis.memory:
        ax.step([t * 1e3 for t in s.times_s], [b / 2**20 for b in s.bytes], where="post", label=s.label, lw=1.2)
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles += [Patch(color=colours[n], alpha=0.35) for n in names]
    labels += names
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if not analysis.memory:
        ax.text(0.5, 0.5, "no memory events recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("time since the first profiled call (ms)")
    ax.set_ylabel("MiB above the start of the calls")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    literal_figure(fig)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_profile(console: Any, profile: dict[str, Any], top: int) -> None:
    """The named steps and the top operators, then where the files are."""
    folder = Path(profile["path"])
    summary = json.loads((folder / profile["summary"]).read_text())
    basis = summary.get("time_basis", "self time")
    console.print(
        line(
            f"{summary['calls']} call(s), {summary['call_s'] * 1e3:.3f} ms each under the profiler "
            "(its overhead included: the timed figures come from bench run)"
        )
    )
    steps = summary.get("steps_all") or []
    if steps:
        t = LiteralTable(title="named steps (inclusive, per call)", title_justify="left")
        for col, just in (("step", "left"), ("ms", "right"), ("share of call", "right"), ("allocated MiB", "right")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for s in steps:
            t.add_row(
                "  " * (s["depth"] - 1) + s["name"],
                f"{s['total_s'] * 1e3:.3f}",
                f"{s['share']:.1%}",
                f"{s['allocated_bytes'] / 2**20:.2f}",
            )
        console.print(t)
    t = LiteralTable(title=f"top operators by {basis} (per call)", title_justify="left")
    for col, just in (
        ("operator", "left"),
        ("step", "left"),
        ("calls", "right"),
        ("self ms", "right"),
        ("share", "right"),
        ("device ms", "right"),
        ("allocated MiB", "right"),
    ):
        t.add_column(col, justify=just, no_wrap=col == "operator")  # type: ignore[arg-type]
    for o in summary.get("ops", [])[:top]:
        t.add_row(
            o["name"],
            o["step"] or "-",
            f"{o['count']:g}",
            f"{o['self_s'] * 1e3:.3f}",
            f"{o['share']:.1%}",
            "-" if o["device_s"] is None else f"{o['device_s'] * 1e3:.3f}",
            f"{o['allocated_bytes'] / 2**20:.2f}",
        )
    console.print(t)
    for name, m in (summary.get("metrics") or {}).items():
        console.print(line(f"torch-xla {name}: {m['count']} × {m['total_s'] / max(1, m['count']) * 1e3:.3f} ms"))
    for note in summary.get("notes", []):
        console.print(line(f"note: {note}"), soft_wrap=True)
    files = [profile[k] for k in ("trace", "ops_md", "ops_csv", "memory_png", "summary")]
    if profile.get("tensorboard"):
        files.append(profile["tensorboard"] + "/")
    console.print(line(f"files in {folder}: {', '.join(files)}"), soft_wrap=True)
    console.print(
        line(
            "open trace.json in https://ui.perfetto.dev or chrome://tracing"
            + ("; tensorboard --logdir " + str(folder / profile["tensorboard"]) if profile.get("tensorboard") else "")
        ),
        soft_wrap=True,
    )
