"""A fixed reference kernel timed in the worker right before and right after a case's
sampling: how fast the host was while the case was timed.

A cloud VM's speed changes under it without any sign inside it: the hypervisor moves a
vCPU onto a core whose sibling thread another tenant keeps busy, or the host's clock
boost changes. On the 2-core VM this project is built on, with no other process running
and no steal time reported, a compute-bound kernel switched between two speeds 30-40%
apart, each held from a fraction of a second to several seconds. The readings are kept in
each record (machine_check.readings_s) and `bench compare` reports their spread across
the two runs (machine_drift), so a reader can see the host's share of a change. They are
snapshots, so they do not decide verdicts; what protects verdicts from the host is
measuring each case in several passes spread over the run and requiring the fastest
sample to move with the median (harness.compare).

The kernel is compute-bound (128×128 float32 matrix products, about 50 µs each on one
core, so the dispatcher's few µs per op are noise) and fixed: it is not the workload, so
a change to the code under test cannot change it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

KERNEL = "20 chained 128x128 float32 matmuls on the host CPU"
SIZE = 128
STEPS = 20
REPS = 15  # the median of these; about 15-25 ms in all on one core


def _chain(w: torch.Tensor) -> torch.Tensor:
    x = w
    for _ in range(STEPS):
        x = x @ w
    return x


def reference_seconds(reps: int = REPS) -> float:
    """Median seconds of one run of the reference kernel, on the worker's threads."""
    gen = torch.Generator().manual_seed(0)
    # Orthogonal, so the chain neither overflows nor underflows whatever STEPS is.
    w = torch.linalg.qr(torch.randn(SIZE, SIZE, generator=gen))[0]
    _chain(w)  # first call: allocation and dispatch caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _chain(w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def record(before_s: float, after_s: float) -> dict[str, Any]:
    """readings_s: before and after sampling, in order; a case measured in several passes
    (RunSettings.passes) holds two per pass."""
    return {"kernel": KERNEL, "threads": torch.get_num_threads(), "readings_s": [before_s, after_s]}


def merge(checks: list[Any]) -> dict[str, Any] | None:
    """One machine_check holding the readings of several passes of a case."""
    present = [c for c in checks if isinstance(c, dict)]
    if not present:
        return None
    return {**present[0], "readings_s": [v for c in present for v in values(c)]}


def values(check: Any) -> list[float]:
    """The reference timings held in a record's machine_check (none when not measured)."""
    if not isinstance(check, dict):
        return []
    return [float(v) for v in check.get("readings_s") or [] if isinstance(v, (int, float)) and v > 0]


def drift(*checks: Any) -> float | None:
    """Largest relative difference between the reference timings of the given records."""
    times = [v for check in checks for v in values(check)]
    return max(times) / min(times) - 1 if len(times) >= 2 else None
