"""The transforms' trade-off figure: speedup and peak-memory saving over the untransformed case
of the same configuration, against the fidelity loss each transformed case recorded
(attnbench.engine.transforms measures it). Drawn from stored records only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from attnbench.core.record import CaseRecord


def tradeoff_points(cases: Iterable[CaseRecord]) -> list[dict[str, Any]]:
    """One point per ok transformed case with an ok untransformed case of the same configuration
    (the same Case but for its transform): speedup (baseline median / median), peak-memory and
    weight saving, and fidelity loss."""
    cases = [c for c in cases if c.status == "ok" and c.time_s is not None]
    base = {c.case(): c for c in cases if c.transform == "none"}
    points = []
    for r in cases:
        b = base.get(replace(r.case(), transform="none"))
        if r.transform == "none" or b is None:
            continue
        fid = r.fidelity or {}
        details = r.transform_details or {}
        peak, base_peak = r.peak_memory_bytes, b.peak_memory_bytes
        wb, wa = details.get("weight_bytes_before"), details.get("weight_bytes_after")
        points.append(
            {
                "variant": r.variant,
                "transform": r.transform,
                "seq_len": r.seq_len,
                "scope": r.scope,
                "dtype": r.dtype,
                "mode": r.mode,
                "case_id": r.case_id,
                "baseline_case_id": b.case_id,
                "speedup": b.median_s / r.median_s,  # type: ignore[operator]
                "memory_saving": 1 - peak / base_peak if peak is not None and base_peak else None,
                "weight_saving": 1 - wa / wb if wa is not None and wb else None,
                "rel_err": fid.get("rel_err"),
                "cosine": fid.get("cosine"),
                "within_tolerance": fid.get("within"),
                "stable": bool(r.stable) and bool(b.stable),
            }
        )
    return points


def tradeoff_figure(cases: Iterable[CaseRecord]) -> Figure:
    """Speedup (left) and peak-memory saving (right) against fidelity loss (relative error vs
    the untransformed model in float64), one point per transform and variant; hollow markers
    flag cases beyond their transform's tolerance."""
    from matplotlib.figure import Figure

    from attnbench.report.labels import separate_labels

    points = tradeoff_points(cases)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    if not points:
        for ax in (ax_t, ax_m):
            ax.text(0.5, 0.5, "no transformed case with an ok baseline", ha="center", va="center")
            ax.set_axis_off()
            separate_labels(ax)  # inside its half of the figure, whatever the layout leaves it
        return fig
    transforms = sorted({p["transform"] for p in points})
    variants = sorted({p["variant"] for p in points})
    markers = "osD^vP*Xh<>"
    colours = [f"C{i}" for i in range(10)]
    floor = 1e-9  # exact transforms (rel_err 0) still get a place on the log axis
    for ax, key, label in (
        (ax_t, "speedup", "speedup over untransformed (×)"),
        (ax_m, "memory_saving", "peak-memory saving vs untransformed"),
    ):
        for p in points:
            y = p[key]
            if y is None or p["rel_err"] is None:
                continue
            c = colours[transforms.index(p["transform"]) % len(colours)]
            mk = markers[variants.index(p["variant"]) % len(markers)]
            within = p["within_tolerance"]
            ax.scatter(
                max(p["rel_err"], floor),
                y,
                marker=mk,
                s=60,
                facecolors=c if within else "none",
                edgecolors=c,
                alpha=1.0 if p["stable"] else 0.5,
            )
        ax.set_xscale("log")
        ax.set_xlabel("fidelity loss: relative error vs float64 untransformed (log)")
        ax.set_ylabel(label)
        ax.axhline(1.0 if key == "speedup" else 0.0, color="grey", lw=0.8, ls="--")
        ax.grid(True, which="both", alpha=0.3)
    if any(p["speedup"] > 0 for p in points):
        ax_t.set_yscale("log")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colours[i % len(colours)], marker="o", ls="", label=t) for i, t in enumerate(transforms)
    ]
    handles += [
        Line2D([], [], color="black", marker=markers[i % len(markers)], ls="", label=v) for i, v in enumerate(variants)
    ]
    handles.append(Line2D([], [], color="black", marker="o", ls="", mfc="none", label="hollow: beyond tolerance"))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    seq = sorted({p["seq_len"] for p in points})
    fig.suptitle(f"Transform trade-offs (n = {', '.join(map(str, seq))}; faded: unstable timing)")
    return fig
