"""Summary statistics of raw timing samples (median with a distribution-free CI, IQR,
stability), and Student's t distribution: its two-sided tail and its quantile, exact (by the
regularised incomplete beta function), the one t-quantile the project uses."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

UNSTABLE_IQR_RATIO = 0.10  # IQR/median above this flags a result as unstable
CONFIDENCE = 0.95


def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks (lo, hi) of the order statistics bounding the median's CI.

    Distribution-free: the count of samples below the true median is Binomial(n, 1/2), so
    [x_(lo), x_(hi)] covers it with probability 1 - 2·P(Bin <= lo-1). None when n is too
    small for any pair of order statistics to reach the confidence (n < 6 at 95%).
    """
    # In whole numbers: P(Bin <= k) = Σ C(n, i) / 2^n, and 2^n overflows a float from n = 1024.
    tail = Fraction(1.0 - confidence) / 2 * 2**n
    cumulative = 0
    lo = 0
    for k in range(n + 1):
        cumulative += math.comb(n, k)
        if cumulative > tail:
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


# ----------------------------------------------------------------------------- Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with df degrees of freedom: a t-test's two-sided p."""
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (as scipy.stats.t.ppf), by
    bisection on its tail (on its central mass near the median, where the tail, close to 1,
    has too few digits left). t_quantile(0.975, df) is the half-width factor of a 95%
    interval; t_quantile(1 - alpha / 2, df) the critical value of a two-sided test at alpha."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs a probability in (0, 1), got {p!r}")
    if not df > 0:
        raise ValueError(f"Student's t needs positive degrees of freedom, got {df!r}")
    tail = 2 * min(p, 1 - p)  # P(|T| > t) at the quantile sought
    central = 2 * abs(p - 0.5)  # P(|T| < t), exact where tail is not
    if central == 0:
        return 0.0

    def beyond(t: float) -> bool:  # whether the quantile lies beyond t
        if tail <= 0.5:
            return t_two_sided_p(t, df) > tail
        return betainc(0.5, df / 2, t * t / (df + t * t)) < central

    lo, hi = 0.0, 1.0
    while beyond(hi):
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if beyond(mid):
            lo = mid
        else:
            hi = mid
    return math.copysign((lo + hi) / 2, p - 0.5)
