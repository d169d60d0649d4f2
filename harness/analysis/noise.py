"""Run-to-run noise of each case, estimated from earlier runs of the same code on the same
kind of host, so that `bench compare` does not call a change that runs of unchanged code
also show.

Samples within one run cannot show it: a cloud host's speed drifts between runs (and a
whole run can sit in a slow stretch), so two runs of unchanged code differ by more than
their within-run statistics allow. Measured here on the 2-core VM, the fastest sample of a
case moved by 2-3% (one standard deviation) from run to run, with one run in six slower
by a third. Each earlier run gives one value per case, the log of its fastest sample;
their standard deviation is the case's run-to-run noise. Because a handful of runs gives a
rough figure, the larger of the case's own and the median over all cases is used.

Which figure of a run: the one the comparison judges (attnbench.analysis.guards): the fastest raw
sample, as above, or, when it judges host-relative time (--time-basis host-relative), the
median of the host-relative samples (attnbench.core.machine_check).

A change between two runs, each one draw with that spread, is beyond the noise when its
log exceeds t(1 - alpha/2, runs - 1) * sqrt(2) * sigma: the `noise floor`, the smallest
change this history lets the comparison call at its significance level. Student's t, not
the normal quantile, because sigma comes from few runs: with 4 runs the floor is 8.3 sigma,
with 10 runs 4.6 sigma, so a young history widens the floor instead of raising false alarms.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attnbench.core import machine_check
from attnbench.core.stats import t_quantile

if TYPE_CHECKING:
    from attnbench.core.record import CaseRecord
    from attnbench.core.results import RunResult

MIN_RUNS = 3  # fewest runs with the case for a standard deviation worth using


@dataclass(frozen=True)
class NoiseEstimate:
    runs: int  # runs with this case that the case's own figure rests on (0: suite figure only)
    case_sigma: float | None  # SD of log(fastest sample) over those runs
    suite_sigma: float  # median of case_sigma over the suite's cases

    @property
    def sigma(self) -> float:
        return max(self.case_sigma or 0.0, self.suite_sigma)

    def floor(self, alpha: float) -> float:
        """Relative change that runs of unchanged code exceed with probability alpha: Student's
        t with the degrees of freedom of the case's estimate, so a short history gives a wide
        floor rather than false alarms."""
        return math.expm1(t_quantile(1 - alpha / 2, max(self.runs - 1, MIN_RUNS - 1)) * math.sqrt(2) * self.sigma)


# Stands for "a history was asked for but holds too few runs": no change can be called.
NO_HISTORY = NoiseEstimate(runs=0, case_sigma=None, suite_sigma=math.inf)


def fastest(rec: CaseRecord) -> float | None:
    samples = rec.samples
    return min(samples) if rec.status == "ok" and samples else None


def relative_median(rec: CaseRecord) -> float | None:
    """The median of the case's samples in units of the host's reference kernel."""
    if rec.status != "ok":
        return None
    rel = machine_check.relative_samples(rec.samples, rec.machine_check)
    return statistics.median(rel) if rel else None


def statistic(rec: CaseRecord, basis: str) -> float | None:
    """The figure of one run that the comparison judges on this basis: the host-relative
    median, or the fastest raw sample."""
    return relative_median(rec) if basis == "host-relative" else fastest(rec)


def _code(rec: CaseRecord) -> tuple[str | None, str | None]:
    """What makes two records the same code: the definition and implementation hashes, or the
    workload hash of records made before those existed."""
    if rec.definition_hash:
        return rec.definition_hash, rec.implementation_hash
    return rec.workload_hash, None


def estimate(
    runs: Sequence[RunResult], current: RunResult, bases: dict[str, str] | None = None
) -> tuple[dict[str, NoiseEstimate], int]:
    """Per case_id of `current`, its noise from `runs` (same workload_hash only), and how many
    runs were usable. bases: case_id -> the basis its comparison judges on ("host-relative" or
    "raw", the default); each basis has its own suite figure. Empty when fewer than MIN_RUNS
    runs hold the suite's cases."""
    bases = bases or {}
    # The same code only: a run of other code measured other speeds, not noise.
    hashes = {c.case_id: _code(c) for c in current.cases}
    logs: dict[str, list[float]] = {}
    used = 0
    for run in runs:
        took = False
        for rec in run.cases:
            if rec.case_id not in hashes or _code(rec) != hashes[rec.case_id]:
                continue
            value = statistic(rec, bases.get(rec.case_id, "raw"))
            if value is not None and value > 0:
                logs.setdefault(rec.case_id, []).append(math.log(value))
                took = True
        used += took
    sigmas = {k: statistics.stdev(v) for k, v in logs.items() if len(v) >= MIN_RUNS}
    if not sigmas:
        return {}, used
    out = {}
    for basis in set(bases.get(case_id, "raw") for case_id in hashes):
        of_basis = [v for k, v in sigmas.items() if bases.get(k, "raw") == basis]
        suite_sigma = statistics.median(of_basis) if of_basis else statistics.median(sigmas.values())
        for case_id in hashes:
            if bases.get(case_id, "raw") == basis:
                out[case_id] = NoiseEstimate(len(logs.get(case_id, [])), sigmas.get(case_id), suite_sigma)
    return out, used
