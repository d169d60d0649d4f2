"""Summary statistics of raw timing samples: median with a distribution-free CI, IQR, stability."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

UNSTABLE_IQR_RATIO = 0.10  # IQR/median above this flags a result as unstable
CONFIDENCE = 0.95


def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (lo, hi) of the order statistics bounding the median's CI.

    Distribution-free: the count of samples below the true median is Binomial(n, 1/2), so
    [x_(lo), x_(hi)] covers it with probability 1 - 2·P(Bin <= lo-1). None when n is too
    small for any pair of order statistics to reach the confidence (n < 6 at 95%).
    """
    alpha = 1.0 - confidence
    cdf = 0.0
    lo = 0
    for k in range(n + 1):
        cdf += math.comb(n, k) / 2.0**n
        if cdf > alpha / 2:
            break
        lo = k + 1
    if lo < 1:
        return None
    return lo, n + 1 - lo


@dataclass(frozen=True)
class TimeStats:
    median: float
    mean: float
    stdev: float
    min: float
    max: float
    iqr: float
    ci95_low: float
    ci95_high: float
    n: int
    samples: tuple[float, ...]

    @property
    def ci_half_width_rel(self) -> float:
        """The larger side of the median's 95% CI, relative to the median."""
        if self.median <= 0:
            return math.inf
        return max(self.median - self.ci95_low, self.ci95_high - self.median) / self.median

    @property
    def iqr_rel(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = list(self.samples)
        return d


def summarize(samples: list[float] | tuple[float, ...]) -> TimeStats:
    if not samples:
        raise ValueError("no samples")
    xs = sorted(samples)
    n = len(xs)
    if n >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    ranks = median_ci_ranks(n)
    # Too few samples for a 95% interval: the whole range is the honest (wider) answer.
    lo, hi = (xs[ranks[0] - 1], xs[ranks[1] - 1]) if ranks else (xs[0], xs[-1])
    return TimeStats(
        median=statistics.median(xs),
        mean=statistics.fmean(xs),
        stdev=statistics.stdev(xs) if n >= 2 else 0.0,
        min=xs[0],
        max=xs[-1],
        iqr=q3 - q1,
        ci95_low=lo,
        ci95_high=hi,
        n=n,
        samples=tuple(samples),
    )


def converged(stats: TimeStats, target: float) -> bool:
    """True when the median's 95% CI lies within ±target of it (and a real CI exists)."""
    return median_ci_ranks(stats.n) is not None and stats.ci_half_width_rel <= target


def is_stable(stats: TimeStats, reached_target: bool) -> bool:
    return reached_target and stats.iqr_rel <= UNSTABLE_IQR_RATIO
