"""`bench history show`'s plot: a metric's trend over runs, drawn from the history's rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from attnbench.analysis.history import METRICS
from attnbench.report.escaping import literal_figure


def trend_figure(rows: list[dict[str, Any]], metric: str, what: str, out: Path) -> None:
    """One line per case over run start time; error bars from the median's 95% CI; hollow
    markers where the run flagged the case unstable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, unit, scale = METRICS[metric]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    handles, labels = [], []  # given to the legend as they are: one from a label starting "_" too
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r)
    for case_id, pts in by_case.items():
        xs = [dt.datetime.fromisoformat(p["started_at"]) for p in pts]
        ys = [p["value"] * scale for p in pts]
        label = f"n={pts[0]['seq_len']}" if len({p["seq_len"] for p in rows}) > 1 else case_id
        line = ax.plot(xs, ys, marker="o")[0]
        handles.append(line)
        labels.append(label)
        lows = [p["ci95_low"] for p in pts]
        if all(v is not None for v in lows):
            err = [
                [y - p["ci95_low"] * scale for y, p in zip(ys, pts, strict=True)],
                [p["ci95_high"] * scale - y for y, p in zip(ys, pts, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=line.get_color(), alpha=0.6, capsize=3)
        unstable = [(x, y) for x, y, p in zip(xs, ys, pts, strict=True) if p["stable"] == 0]
        if unstable:
            ax.scatter(*zip(*unstable, strict=True), s=70, facecolors="white", edgecolors=line.get_color(), zorder=3)
    ax.set_title(f"{metric} of {what} over runs (hollow: unstable)")
    ax.set_ylabel(f"{metric} ({unit})")
    ax.set_xlabel("run start (UTC)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles, labels, fontsize="small")
    literal_figure(fig)
    fig.autofmt_xdate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
