"""Log-log growth exponents of median time and peak memory per variant, from stored runs.

    python tools/slopes.py results/<run_id> [more runs...] [--min-len 1024]

Reads result files only (never re-runs). The exponent is the least-squares slope of
log(figure) on log(seq_len) over the ok cases of each curve: ~1 is linear, ~2 quadratic.
The fit is `bench report`'s (attnbench.report.analysis.fit_loglog), which also gives the
slope's 95% interval; the report shows these exponents with crossovers and figures.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

from attnbench.core.results import load_run
from attnbench.report.analysis import fit_loglog


def slope(xs: list[float], ys: list[float]) -> float:
    fit = fit_loglog(xs, ys)
    return fit.slope if fit is not None else math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--min-len", type=int, default=0)
    args = ap.parse_args()
    curves: dict[tuple, list] = defaultdict(list)
    for folder in args.runs:
        for c in load_run(folder).cases:
            if c.status == "ok" and c.seq_len >= args.min_len:
                key = (c.variant, c.backend, c.dtype, c.mode, c.scope)
                curves[key].append(c)
    print(f"{'variant':24s} {'lengths':>14s} {'time slope':>10s} {'memory slope':>12s}  median ms by length")
    for key, cases in sorted(curves.items()):
        cases.sort(key=lambda c: c.seq_len)
        if len(cases) < 2:
            continue
        ns = [c.seq_len for c in cases]
        t = slope(ns, [c.median_s for c in cases])
        mems = [c.peak_memory_bytes for c in cases]
        m = slope(ns, mems) if all(mems) else float("nan")
        times = " ".join(f"{c.median_s * 1e3:.0f}" for c in cases)
        print(f"{key[0]:24s} {ns[0]:>6d}-{ns[-1]:<7d} {t:10.2f} {m:12.2f}  {times}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
