"""A fixed reference kernel (attnbench.engine.reference_kernel) timed in the worker right
before and right after a case's sampling: how fast the host was while the case was timed.

A cloud VM's speed changes under it without any sign inside it: the hypervisor moves a
vCPU onto a core whose sibling thread another tenant keeps busy, or the host's clock
boost changes. On the 2-core VM this project is built on, with no other process running
and no steal time reported, a compute-bound kernel switched between two speeds 30-40%
apart, each held from a fraction of a second to several seconds. The readings are kept in
each record (machine_check.readings_s) and `bench compare` reports their spread across
the two runs (machine_drift), so a reader can see the host's share of a change.

Those two readings are snapshots. What lets a comparison see through the host's changes
is a shorter reading of the same kernel taken between every two timed samples of a case
on the host CPU (`pair_readings_s`; each sample is paired with the geometric mean of
the readings just before and just after it). The host's speed states last far longer than one sample
(about 20 ms), so a sample and its paired reading see the same state, and the ratio
sample / paired reading -- the case's time in units of the reference kernel -- keeps the
code's cost and drops most of the host's: measured on that VM with the test workload, raw
medians of unchanged code spread 25% over four processes, these ratios 2.5%, and a 10%
heavier workload moved them by 10-11% in every process. That workload was, however, the
reference kernel itself; on the real attention variants of the nightly suite these ratios
moved unchanged code by up to +100% between runs where raw medians moved a few percent,
so attnbench.analysis.compare reports them (host_relative_ratio) and judges on them only when asked
(--time-basis host-relative). Not for GPU cases: the host's speed says nothing about the
accelerator's.

The kernel is compute-bound (128×128 float32 matrix products, about 50 µs each on one
core, so the dispatcher's few µs per op are noise) and fixed: it is not the workload, so
a change to the code under test cannot change it.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

KERNEL = "20 chained 128x128 float32 matmuls on the host CPU"
SIZE = 128
STEPS = 20
REPS = 15  # the median of these; about 15-25 ms in all on one core
PAIR_STEPS = 10  # one paired reading: about 0.6-0.8 ms on one core, 3% of a 20 ms sample


def paired(readings: Sequence[float]) -> list[float]:
    """One reference per sample from the n + 1 readings around n samples: the geometric
    mean of the reading before and the reading after each."""
    return [math.sqrt(a * b) for a, b in itertools.pairwise(readings)]


def record(
    before_s: float, after_s: float, pair_readings_s: Sequence[float] | None = None, *, threads: int | None = None
) -> dict[str, Any]:
    """readings_s: before and after sampling, in order; a case measured in several passes
    (RunSettings.passes) holds two per pass. pair_readings_s (cases on the host CPU only):
    per pass, the n + 1 short readings taken around its n samples, in order. threads: the
    worker's torch threads, which the kernel ran on."""
    out: dict[str, Any] = {"kernel": KERNEL, "threads": threads, "readings_s": [before_s, after_s]}
    if pair_readings_s is not None:
        out["pair_kernel"] = f"{PAIR_STEPS} chained {SIZE}x{SIZE} float32 matmuls"
        out["pair_readings_s"] = [list(pair_readings_s)]
    return out


def merge(checks: list[Any]) -> dict[str, Any] | None:
    """One machine_check holding the readings of several passes of a case (pair readings
    kept only when every pass has them, so they stay aligned with the merged samples)."""
    present = [c for c in checks if isinstance(c, dict)]
    if not present:
        return None
    out = {**present[0], "readings_s": [v for c in present for v in values(c)]}
    if len(present) == len(checks) and all(isinstance(c.get("pair_readings_s"), list) for c in present):
        out["pair_readings_s"] = [p for c in present for p in c["pair_readings_s"]]
    else:
        out.pop("pair_readings_s", None)
    return out


def relative_samples(samples: Sequence[float], check: Any) -> list[float] | None:
    """The case's samples in units of the reference kernel (each sample over its paired
    reading), or None when the record has no pair readings aligned with its samples."""
    passes = check.get("pair_readings_s") if isinstance(check, dict) else None
    if not samples or not isinstance(passes, list):
        return None
    pairs: list[float] = []
    for readings in passes:
        if not isinstance(readings, list) or not all(isinstance(v, (int, float)) and v > 0 for v in readings):
            return None
        pairs += paired(readings)
    if len(pairs) != len(samples):
        return None
    return [float(s) / p for s, p in zip(samples, pairs, strict=True)]


HOST_SPREAD_LIMIT = 0.10  # the reference kernel's IQR/median above this: the host's speed varied


def host_spread(check: Any) -> float | None:
    """How much the host's own speed varied while a case was sampled: the IQR/median of its
    short reference readings (each pass's first, taken before any sample, left out: the
    others follow a sample and share its cache state). None without pair readings."""
    passes = check.get("pair_readings_s") if isinstance(check, dict) else None
    if not isinstance(passes, list):
        return None
    readings = [float(v) for p in passes if isinstance(p, list) for v in p[1:] if isinstance(v, (int, float)) and v > 0]
    if len(readings) < 4:
        return None
    q1, median, q3 = statistics.quantiles(readings, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else None


def values(check: Any) -> list[float]:
    """The reference timings held in a record's machine_check (none when not measured)."""
    if not isinstance(check, dict):
        return []
    return [float(v) for v in check.get("readings_s") or [] if isinstance(v, (int, float)) and v > 0]


def drift(*checks: Any) -> float | None:
    """Largest relative difference between the reference timings of the given records."""
    times = [v for check in checks for v in values(check)]
    return max(times) / min(times) - 1 if len(times) >= 2 else None
