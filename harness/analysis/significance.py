"""The statistical tests and intervals a comparison rests on, pure Python on lists of floats.

- Mann–Whitney U (two independent samples), the Wilcoxon signed-rank test and the
  Hodges–Lehmann estimate with its CI (paired differences), Welch's and the one-sample
  t-test (Student's t from attnbench.core.stats);
- the percentile bootstrap of a ratio of medians (numpy, imported when called).

The rank tests are implemented here (exact null distributions for small samples without
ties, normal approximations with tie and continuity corrections otherwise) rather than
taken from scipy, so the core install does not pull in scipy for them; tests/test_compare.py
checks them against scipy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from attnbench.core.stats import t_two_sided_p

if TYPE_CHECKING:
    import numpy as np

EXACT_MAX_N = 50  # exact U distribution up to this many samples in all (and no ties)


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Ranks (1-based, ties averaged) and the sizes of tied groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@functools.lru_cache(maxsize=256)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """Number of arrangements giving each U = 0..n1*n2 under the null (no ties)."""
    # f[m][u] for the current n2 column, built up by the standard recursion
    # f(n1, n2, u) = f(n1 - 1, n2, u - n2) + f(n1, n2 - 1, u).
    prev = [[1] for _ in range(n1 + 1)]  # n2 = 0: only U = 0
    for b in range(1, n2 + 1):
        cur = [[1]]  # n1 = 0: only U = 0
        for a in range(1, n1 + 1):
            size = a * b + 1
            row = [0] * size
            for u, c in enumerate(prev[a]):  # f(a, b-1, u)
                row[u] += c
            for u, c in enumerate(cur[a - 1]):  # f(a-1, b, u - b)
                row[u + b] += c
            cur.append(row)
        prev = cur
    return tuple(prev[n1])


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann–Whitney U test: (U of x, p-value).

    Exact when there are no ties and at most EXACT_MAX_N samples in all; otherwise the
    normal approximation with tie correction and continuity correction (as scipy's
    method="asymptotic", use_continuity=True).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann–Whitney U needs samples on both sides")
    ranks, ties = _ranks([*x, *y])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    if not ties and n1 + n2 <= EXACT_MAX_N:
        counts = _u_counts(n1, n2)
        total = sum(counts)
        k = round(min(u1, n1 * n2 - u1))  # the distribution is symmetric
        p = 2 * sum(counts[: k + 1]) / total
        return u1, min(1.0, p)
    n = n1 + n2
    mu = n1 * n2 / 2
    tie_term = sum(t**3 - t for t in ties)
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if var <= 0:  # every value equal: no evidence of any difference
        return u1, 1.0
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    return u1, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


@functools.lru_cache(maxsize=64)
def _signed_rank_counts(n: int) -> tuple[int, ...]:
    """Number of sign assignments giving each W+ = 0..n(n+1)/2 under the null (no ties, no zeros)."""
    counts = [1]
    for rank in range(1, n + 1):
        nxt = counts + [0] * rank
        for w, c in enumerate(counts):
            nxt[w + rank] += c
        counts = nxt
    return tuple(counts)


def wilcoxon_signed_rank(d: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of the differences d against 0: (W+, p-value).

    Zeros are dropped (Wilcox); exact null distribution up to EXACT_MAX_N differences
    without ties, normal approximation with tie and continuity corrections otherwise."""
    nonzero = [x for x in d if x != 0]
    n = len(nonzero)
    if n == 0:
        return 0.0, 1.0
    ranks, ties = _ranks([abs(x) for x in nonzero])
    w_plus = sum(r for r, x in zip(ranks, nonzero, strict=True) if x > 0)
    total = n * (n + 1) / 2
    if n <= EXACT_MAX_N and not ties:
        counts = _signed_rank_counts(n)
        w = round(min(w_plus, total - w_plus))
        p = 2 * sum(counts[: w + 1]) / 2**n
        return w_plus, min(1.0, p)
    mu = total / 2
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    if var <= 0:
        return w_plus, 1.0
    z = (abs(w_plus - mu) - 0.5) / math.sqrt(var)
    return w_plus, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def hodges_lehmann(d: Sequence[float]) -> float:
    """The one-sample Hodges–Lehmann estimate: the median of the Walsh averages (d_i + d_j) / 2, i ≤ j."""
    return statistics.median((d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d)))


def welch_t_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Two-sided Welch t-test of mean(y) against mean(x): (t, degrees of freedom, p)."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Welch's t-test needs two values on each side")
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    diff = statistics.fmean(y) - statistics.fmean(x)
    if vx + vy == 0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), math.inf, 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return t, df, t_two_sided_p(t, df)


def one_sample_t_test(d: Sequence[float]) -> tuple[float, float, float]:
    """Two-sided t-test of mean(d) against 0: (t, degrees of freedom, p)."""
    if len(d) < 2:
        raise ValueError("a t-test needs two values")
    mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))
    df = len(d) - 1
    if se == 0:
        return (0.0 if mean == 0 else math.copysign(math.inf, mean)), df, 1.0 if mean == 0 else 0.0
    t = mean / se
    return t, df, t_two_sided_p(t, df)


def hodges_lehmann_ci(d: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The distribution-free CI of the Hodges–Lehmann estimate: the Walsh averages ranked k
    and N - k + 1, k from the signed-rank statistic's normal approximation."""
    n = len(d)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    k = max(1, math.floor(n * (n + 1) / 4 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    return walsh[min(k, len(walsh)) - 1], walsh[max(len(walsh) - k, 0)]


def seed_of(text: str) -> int:
    """A fixed bootstrap seed for a name (a case_id), so a comparison repeats exactly."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def bootstrap_median_ratios(base: Sequence[float], cur: Sequence[float], n_boot: int, seed: int) -> np.ndarray:
    """n_boot bootstrap replicates of median(cur) / median(base), each side resampled alone."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=float)
    c = np.asarray(cur, dtype=float)
    mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
    mc = np.median(c[rng.integers(0, c.size, (n_boot, c.size))], axis=1)
    return mc / mb


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the replicates."""
    import numpy as np

    tail = (1 - confidence) / 2
    lo, hi = np.quantile(replicates, [tail, 1 - tail])
    return float(lo), float(hi)


def p_text(p: float | None) -> str:
    """A p-value as notes and tables write it: three decimals, or two digits in scientific notation below 0.001."""
    return "-" if p is None else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")
