"""data.csv: one row per case, the figures the report draws, flat enough for a spreadsheet
(text that a spreadsheet would run as a formula is neutralised: attnbench.report.escaping)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from attnbench.report.data import ReportData, SeriesKey, curve_key
from attnbench.report.escaping import csv_cell
from attnbench.report.tables import SeriesStats

COLUMNS = (
    "run_id",
    "host",
    "backend",
    "device",
    "series",
    "variant",
    "family",
    "scope",
    "params",
    "dtype",
    "mode",
    "batch",
    "heads",
    "head_dim",
    "seq_len",
    "status",
    "reason",
    "stable",
    "median_s",
    "ci95_low_s",
    "ci95_high_s",
    "iqr_s",
    "samples",
    "tokens_per_s",
    "flops",
    "flops_per_s",
    "bytes_per_s",
    "arithmetic_intensity",
    "fraction_of_peak_flops",
    "fraction_of_peak_bytes",
    "peak_memory_bytes",
    "analytic_min_bytes",
    "energy_j",
    "energy_per_token_j",
    "energy_reason",
    "baseline",
    "speedup_vs_baseline",
    "case_id",
)


def write_csv(data: ReportData, stats: dict[str, list[SeriesStats]], path: Path) -> None:
    speedup: dict[tuple[SeriesKey, int], float | None] = {}
    baseline: dict[SeriesKey, str] = {}
    for group in data.groups:
        if group.backend is None:
            continue  # overlay groups repeat the per-backend ones
        for s in stats[group.key]:
            if s.baseline is not None:
                baseline[s.key] = data.series_label(s.baseline)  # labels across the whole report
                for sp in s.speedups:
                    speedup[(s.key, sp.seq_len)] = sp.speedup
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for p in data.points:
            c, key = p.case, SeriesKey(p.source, curve_key(p))
            t = c.time_s
            frac = p.fraction_of_peak
            row = {
                "run_id": p.source.run_id,
                "host": p.source.host,
                "backend": c.backend,
                "device": c.device,
                "series": data.series_label(key),
                "variant": c.variant,
                "family": c.family,
                "scope": p.scope,
                "params": json.dumps(c.params, sort_keys=True),
                "dtype": c.dtype,
                "mode": c.mode,
                "batch": c.batch,
                "heads": c.heads,
                "head_dim": c.head_dim,
                "seq_len": c.seq_len,
                "status": c.status,
                "reason": c.reason,
                "stable": c.stable,
                "median_s": t.median if t else None,
                "ci95_low_s": t.ci95_low if t else None,
                "ci95_high_s": t.ci95_high if t else None,
                "iqr_s": t.iqr if t else None,
                "samples": t.n if t else None,
                "tokens_per_s": c.tokens_per_s,
                "flops": c.flops,
                "flops_per_s": c.flops_per_s,
                "bytes_per_s": p.bytes_per_s,
                "arithmetic_intensity": p.intensity,
                "fraction_of_peak_flops": frac.get("flops"),
                "fraction_of_peak_bytes": frac.get("bytes"),
                "peak_memory_bytes": c.peak_memory_bytes,
                "analytic_min_bytes": p.analytic_min_bytes,
                "energy_j": c.energy_j,
                "energy_per_token_j": p.energy_per_token,
                "energy_reason": c.energy_reason,
                "baseline": baseline.get(key),
                "speedup_vs_baseline": speedup.get((key, c.seq_len)),
                "case_id": c.case_id,
            }
            w.writerow([csv_cell(row[k]) for k in COLUMNS])
