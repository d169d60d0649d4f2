"""Statistics for quality figures (accuracy, loss) measured over several training seeds.

Quality differs from timing: one figure per seed, a handful of seeds, and some seeds may fail
outright (diverge, run out of memory). So:

- `seed_summary`: the mean over the seeds that produced a figure, with a Student t interval
  (few seeds: a normal interval would be far too narrow). Failed seeds are counted out, visibly:
  `seeds` is the number of real figures, not the number of seeds launched.
- `pareto_front`: which (cost, quality) points no other point beats on both.
- `kendall_tau` / `rank_agreement`: does our ranking of methods agree with a published one
  (Kendall's tau-b, with an exact p-value for small untied samples).

Pure Python: stored results are analysed without torch, numpy or scipy.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from attnbench.core.stats import t_quantile

EXACT_MAX_N = 10  # exact Kendall p-values up to this many pairs of observations (without ties)


def _real(v: float | None) -> TypeGuard[float]:
    return v is not None and not math.isnan(v)


# ----------------------------------------------------------------------------- over seeds


@dataclass(frozen=True)
class SeedSummary:
    mean: float | None  # None when no seed produced a figure
    ci_low: float | None  # CI of the mean over seeds (Student t); None with fewer than 2 seeds
    ci_high: float | None
    seeds: int  # how many seeds produced a figure (failed seeds are not counted)
    values: tuple[float, ...]

    def half_width(self) -> float | None:
        """The larger side of the CI around the mean: the t half-width, unless `bounds` clipped both sides."""
        if self.mean is None or self.ci_low is None or self.ci_high is None:
            return None
        return max(self.mean - self.ci_low, self.ci_high - self.mean)


def seed_summary(
    values: Sequence[float | None], confidence: float = 0.95, bounds: tuple[float, float] | None = None
) -> SeedSummary:
    """Mean and t interval over seeds. None or NaN entries (a seed that diverged or failed) are
    dropped and not counted in `seeds`. The interval is the raw t interval (an accuracy's may
    pass 0 or 1), clipped to `bounds` only when given."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if bounds is not None and not bounds[0] < bounds[1]:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    real = tuple(float(v) for v in values if _real(v))
    n = len(real)
    if n == 0:
        return SeedSummary(None, None, None, 0, ())
    mean = statistics.fmean(real)
    if n < 2:
        return SeedSummary(mean, None, None, 1, real)
    half = t_quantile((1 + confidence) / 2, n - 1) * statistics.stdev(real) / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return SeedSummary(mean, low, high, n, real)


# ----------------------------------------------------------------------------- cost against quality


def pareto_front(points: Sequence[tuple[float | None, float | None] | None]) -> list[bool]:
    """Which (cost, quality) points are on the Pareto front: lower cost and higher quality are
    better, and a point is on it when no other point is at least as good in both and strictly
    better in one. Equal points do not beat each other (duplicates on the front all stay on it).
    A point with a None or NaN coordinate is off the front and beats nothing."""
    clean = [(float(p[0]), float(p[1])) if p is not None and _real(p[0]) and _real(p[1]) else None for p in points]
    usable = [p for p in clean if p is not None]
    front = []
    for p in clean:
        if p is None:
            front.append(False)
            continue
        cost, quality = p
        beaten = any(c <= cost and q >= quality and (c < cost or q > quality) for c, q in usable)
        front.append(not beaten)
    return front


# ----------------------------------------------------------------------------- rank agreement


@dataclass(frozen=True)
class KendallTau:
    tau: float  # tau-b: ties handled
    p_value: float  # two-sided, against no association
    n: int
    method: str  # "exact" | "normal approximation"


def _tie_sums(xs: Sequence[float]) -> tuple[int, int, int]:
    """Over the groups of t equal values: Σ t(t−1)/2 (tied pairs), Σ t(t−1)(t−2), Σ t(t−1)(2t+5)."""
    groups = [t for t in Counter(xs).values() if t > 1]
    return (
        sum(t * (t - 1) // 2 for t in groups),
        sum(t * (t - 1) * (t - 2) for t in groups),
        sum(t * (t - 1) * (2 * t + 5) for t in groups),
    )


def _inversion_counts(n: int) -> list[int]:
    """How many of the n! permutations have k inversions, for every k (the Mahonian numbers).

    Under no association every permutation of the ranks is equally likely and a permutation's
    discordant pairs are its inversions: counting the permutations by their inversions is the
    exact null distribution, without listing n! permutations. Adding element j to a permutation
    of j − 1 elements adds 0 to j − 1 inversions."""
    counts = [1]
    for j in range(2, n + 1):
        grown = [0] * (len(counts) + j - 1)
        for k, c in enumerate(counts):
            for extra in range(j):
                grown[k + extra] += c
        counts = grown
    return counts


def _exact_p(n: int, discordant: int) -> float:
    """Two-sided: twice the probability of a count of discordant pairs at least as far from the middle."""
    total = n * (n - 1) // 2
    c = min(discordant, total - discordant)
    counts = _inversion_counts(n)
    return min(1.0, 2 * sum(counts[: c + 1]) / math.factorial(n))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> KendallTau:
    """Kendall's tau-b between paired observations, with a two-sided p-value.

    The p-value is exact when n <= 10 and neither side has ties (every permutation counted);
    otherwise it is the normal approximation with the tie-corrected variance of the concordant
    minus discordant count (as scipy.stats.kendalltau's asymptotic method). Raises ValueError on
    fewer than 2 pairs, unequal lengths, NaN, or a side whose values are all equal (it has no
    ordering, so tau-b is undefined)."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"kendall_tau needs paired observations, got {n} and {len(y)} values")
    if n < 2:
        raise ValueError(f"kendall_tau needs at least 2 pairs, got {n}")
    if any(math.isnan(v) for v in (*x, *y)):
        raise ValueError("kendall_tau got a NaN value; drop the failed entries first")
    if len(set(x)) < 2 or len(set(y)) < 2:
        raise ValueError("kendall_tau: one side has all values equal, so it has no ordering to compare")
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = (x[i] - x[j]) * (y[i] - y[j])
            if s > 0:
                concordant += 1
            elif s < 0:
                discordant += 1
    total = n * (n - 1) // 2
    x_tied, x_t2, x_t5 = _tie_sums(x)
    y_tied, y_t2, y_t5 = _tie_sums(y)
    s = concordant - discordant
    tau = s / math.sqrt((total - x_tied) * (total - y_tied))
    if n <= EXACT_MAX_N and x_tied == 0 and y_tied == 0:
        return KendallTau(tau, _exact_p(n, discordant), n, "exact")
    m = n * (n - 1)
    var = (m * (2 * n + 5) - x_t5 - y_t5) / 18 + 2 * x_tied * y_tied / m
    if n > 2:
        var += x_t2 * y_t2 / (9 * m * (n - 2))
    p = math.erfc(abs(s) / math.sqrt(var) / math.sqrt(2))  # 2·P(Z > |z|)
    return KendallTau(tau, min(1.0, p), n, "normal approximation")


def rank_agreement(published: Mapping[str, float | None], measured: Mapping[str, float | None]) -> KendallTau | None:
    """Kendall's tau between a published and a measured figure over the names both have a real
    value for (None or NaN: not measured, left out). None when fewer than 3 names are shared, or
    when one side's shared values are all equal (no ordering to agree with)."""
    names = sorted(k for k in published.keys() & measured.keys() if _real(published[k]) and _real(measured[k]))
    if len(names) < 3:
        return None
    xs = [float(published[k]) for k in names]  # type: ignore[arg-type]
    ys = [float(measured[k]) for k in names]  # type: ignore[arg-type]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return kendall_tau(xs, ys)
