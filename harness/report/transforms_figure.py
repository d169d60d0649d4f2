"""The transforms' trade-off figure: speedup and peak-memory saving over the untransformed case
of the same configuration, against the fidelity loss each transformed case recorded
(attnbench.engine.transforms measures it). Drawn from stored records only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _get(rec: Any, key: str) -> Any:
    """A field of a stored case: its record (attnbench.core.record.CaseRecord) or the record's JSON."""
    return rec.get(key) if isinstance(rec, dict) else getattr(rec, key, None)


def _median(rec: Any) -> float:
    time_s = _get(rec, "time_s")
    return time_s["median"] if isinstance(time_s, dict) else time_s.median


_CONFIG_KEYS = ("variant", "backend", "dtype", "mode", "scope", "batch", "heads", "head_dim", "seq_len", "threads")


def _config(rec: Any) -> tuple:
    return (*(_get(rec, k) for k in _CONFIG_KEYS), json.dumps(_get(rec, "params"), sort_keys=True))


def tradeoff_points(cases: Iterable[Any]) -> list[dict[str, Any]]:
    """One point per ok transformed case with an ok untransformed case of the same configuration:
    speedup (baseline median / median), peak-memory and weight saving, and fidelity loss.

    Accepts stored records as CaseRecords (load_run(...).cases) or as their JSON.
    """
    cases = list(cases)
    base = {
        _config(r): r
        for r in cases
        if (_get(r, "transform") or "none") == "none" and _get(r, "status") == "ok" and _get(r, "time_s")
    }
    points = []
    for r in cases:
        t = _get(r, "transform") or "none"
        if t == "none" or _get(r, "status") != "ok" or not _get(r, "time_s"):
            continue
        b = base.get(_config(r))
        if b is None:
            continue
        fid = _get(r, "fidelity") or {}
        details = _get(r, "transform_details") or {}
        peak, base_peak = _get(r, "peak_memory_bytes"), _get(b, "peak_memory_bytes")
        wb, wa = details.get("weight_bytes_before"), details.get("weight_bytes_after")
        points.append(
            {
                "variant": _get(r, "variant"),
                "transform": t,
                "seq_len": _get(r, "seq_len"),
                "scope": _get(r, "scope"),
                "dtype": _get(r, "dtype"),
                "mode": _get(r, "mode"),
                "case_id": _get(r, "case_id"),
                "baseline_case_id": _get(b, "case_id"),
                "speedup": _median(b) / _median(r),
                "memory_saving": 1 - peak / base_peak if peak is not None and base_peak else None,
                "weight_saving": 1 - wa / wb if wa is not None and wb else None,
                "rel_err": fid.get("rel_err"),
                "cosine": fid.get("cosine"),
                "within_tolerance": fid.get("within"),
                "stable": bool(_get(r, "stable")) and bool(_get(b, "stable")),
            }
        )
    return points


def tradeoff_figure(cases: Iterable[Any]) -> Figure:
    """Speedup (left) and peak-memory saving (right) against fidelity loss (relative error vs
    the untransformed model in float64), one point per transform and variant; hollow markers
    flag cases beyond their transform's tolerance."""
    from matplotlib.figure import Figure

    points = tradeoff_points(cases)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    if not points:
        for ax in (ax_t, ax_m):
            ax.text(0.5, 0.5, "no transformed case with an ok baseline", ha="center", va="center")
            ax.set_axis_off()
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
