"""Numbers a report derives from stored measurements: log-log slopes, speedups, crossovers.

Pure Python so it is cheap to import and easy to test; figures and tables both use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from attnbench.core.stats import t_quantile


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit of log(y) = a + slope·log(n).

    `stderr` is the slope's standard error from the residuals (None with only two points,
    where the line passes through both and there is no residual to judge it by); `ci95`
    is its 95% half-width from Student's t with n-2 degrees of freedom.
    """

    slope: float
    intercept: float
    stderr: float | None
    points: int
    min_len: int
    max_len: int

    @property
    def ci95(self) -> float | None:
        return None if self.stderr is None else t_quantile(0.975, self.points - 2) * self.stderr

    def predict(self, n: float) -> float:
        return math.exp(self.intercept + self.slope * math.log(n))

    def text(self) -> str:
        if self.stderr is None:
            return f"{self.slope:.2f} (2 points)"
        return f"{self.slope:.2f} ± {self.ci95:.2f}"


def fit_loglog(lengths: Sequence[float], values: Sequence[float]) -> SlopeFit | None:
    """The log-log slope of values against lengths; None with fewer than two distinct lengths
    or any non-positive value (a log of it has no meaning)."""
    pairs = [(float(n), float(y)) for n, y in zip(lengths, values, strict=True)]
    if len({n for n, _ in pairs}) < 2 or any(n <= 0 or y <= 0 for n, y in pairs):
        return None
    lx = [math.log(n) for n, _ in pairs]
    ly = [math.log(y) for _, y in pairs]
    k = len(pairs)
    mx, my = sum(lx) / k, sum(ly) / k
    sxx = sum((x - mx) ** 2 for x in lx)
    slope = sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / sxx
    intercept = my - slope * mx
    stderr = None
    if k > 2:
        ssr = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(lx, ly, strict=True))
        stderr = math.sqrt(ssr / (k - 2) / sxx)
    return SlopeFit(slope, intercept, stderr, k, int(min(n for n, _ in pairs)), int(max(n for n, _ in pairs)))


@dataclass(frozen=True)
class SpeedupPoint:
    """Baseline time over variant time at one length, with a conservative 95% band built
    from both medians' confidence intervals. `outcome` is "measured" when both ran, or
    "baseline failed" / "variant failed" when only one did (a win or a loss with no ratio)."""

    seq_len: int
    speedup: float | None
    low: float | None
    high: float | None
    outcome: str

    @property
    def wins(self) -> bool:
        if self.outcome == "baseline failed":
            return True
        if self.outcome == "variant failed":
            return False
        return self.speedup is not None and self.speedup > 1.0

    @property
    def significant(self) -> bool:
        """True when the whole band lies on one side of 1 (or one side failed)."""
        if self.outcome != "measured":
            return True
        return self.low is not None and self.high is not None and (self.low > 1.0 or self.high < 1.0)


@dataclass(frozen=True)
class Crossover:
    """Where a variant starts to beat the baseline for good, over the measured lengths.

    kind: "always" (faster at every common length), "never" (not faster at the longest),
    "at" (faster from `length` on, slower just below it), or "none" (nothing to compare).
    `length` is the smallest measured length from which the variant wins at every longer
    one; `interpolated` is where the log speedup, linear in log n between the two bracketing
    measured lengths, crosses zero (only when both of them have measured times).
    memory_crossover answers the same question for peak memory, in the same terms.
    """

    kind: str
    length: int | None = None
    below: int | None = None
    interpolated: float | None = None
    certain: bool = True  # False when the speedup band at `length` or `below` straddles 1

    def text(self) -> str:
        if self.kind == "none":
            return "n/a"
        if self.kind == "always":
            return f"always (from {self.length:,})"
        if self.kind == "never":
            return f"never (to {self.below:,})"
        out = f"{self.length:,}"
        if self.interpolated is not None:
            out += f" (≈{self.interpolated:,.0f})"
        if not self.certain:
            out += " ?"
        return out


def _final_stretch(wins: Sequence[bool]) -> int:
    """Index of the first of the trailing run of True values (len(wins) when the last is False)."""
    k = len(wins)
    while k > 0 and wins[k - 1]:
        k -= 1
    return k


def _log_crossing(lo_len: int, lo_value: float, hi_len: int, hi_value: float) -> float | None:
    """Where log(value), linear in log n between two lengths, crosses 0 (None when it does not rise)."""
    a, b = math.log(lo_value), math.log(hi_value)
    if b <= a:
        return None
    frac = -a / (b - a)
    return math.exp(math.log(lo_len) + frac * (math.log(hi_len) - math.log(lo_len)))


def crossover(points: Sequence[SpeedupPoint]) -> Crossover:
    pts = sorted(points, key=lambda p: p.seq_len)
    if not pts:
        return Crossover("none")
    if not pts[-1].wins:
        return Crossover("never", below=pts[-1].seq_len, certain=pts[-1].significant)
    k = _final_stretch([p.wins for p in pts])
    if k == 0:
        return Crossover("always", length=pts[0].seq_len, certain=pts[0].significant)
    lo, hi = pts[k - 1], pts[k]
    interp = None
    if lo.speedup and hi.speedup and lo.outcome == hi.outcome == "measured":
        interp = _log_crossing(lo.seq_len, lo.speedup, hi.seq_len, hi.speedup)
    return Crossover("at", hi.seq_len, lo.seq_len, interp, certain=lo.significant and hi.significant)


@dataclass(frozen=True)
class MemoryPoint:
    """Variant peak memory over baseline peak memory at one length (below 1: the variant needs
    less). `outcome` as SpeedupPoint's: "measured" when both have a peak, "baseline failed"
    when only the variant ran because the baseline ran out of memory, "variant failed" the reverse."""

    seq_len: int
    ratio: float | None
    outcome: str = "measured"

    @property
    def less(self) -> bool:
        if self.outcome != "measured":
            return self.outcome == "baseline failed"
        return self.ratio is not None and self.ratio < 1.0


def memory_crossover(points: Sequence[MemoryPoint]) -> Crossover:
    """Where a variant starts to need less memory than the baseline for good.

    The smallest measured length from which the variant's peak is below the baseline's at every
    longer measured length, in the time crossover's terms (Crossover.text()): "always" when it is
    below at every length, "never" when it is not below at the longest, else "at" with the length
    just below; ≈ where log(ratio), linear in log n between those two lengths, crosses 0. A peak
    has no confidence band, so the answer is always `certain`.
    """
    pts = sorted(points, key=lambda p: p.seq_len)
    if not pts:
        return Crossover("none")
    if not pts[-1].less:
        return Crossover("never", below=pts[-1].seq_len)
    k = _final_stretch([p.less for p in pts])
    if k == 0:
        return Crossover("always", length=pts[0].seq_len)
    lo, hi = pts[k - 1], pts[k]
    interp = None
    if lo.ratio and hi.ratio and lo.outcome == hi.outcome == "measured":
        # baseline over variant rises through 1 where variant over baseline falls through it
        interp = _log_crossing(lo.seq_len, 1 / lo.ratio, hi.seq_len, 1 / hi.ratio)
    return Crossover("at", hi.seq_len, lo.seq_len, interp)
