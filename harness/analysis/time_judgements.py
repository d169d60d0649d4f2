"""The ways of judging a case's time change, one class each, chosen once per case from its
two records (choose_judgement).

Every way compares the pooled samples (ratio of medians, bootstrap CI, Mann–Whitney U) on
a basis: the raw samples, or, when asked for (time_basis="host-relative") and both records
pair their samples with the host's reference kernel (attnbench.core.machine_check), each
sample over the reading around it. The ways differ in what must also hold across the runs'
processes, since processes of unchanged code differ by a few percent however many samples
each takes (the process, not the sample, is the unit that is replicated):

- PooledSamples: the samples alone, where a run has fewer than MIN_PASSES passes or its
  record does not say which samples each pass gave.
- PassMedians: MIN_PASSES or more passes in each run: Welch's t-test on the two runs'
  per-pass log medians (each pass a fresh process).

Two runs that are the sides of one `bench ab` (attnbench.engine.turns: they took turns,
`interleaved`) are judged as a pair, on their own paired change (paired_ratio) rather
than on the pooled samples, which mix the host's speed states in proportions that differ
between the sides by chance:

- PairedBlocks: sides timed in block turns, MIN_PASSES or more passes. Block k of one side
  was timed right after block k of the other (~20 ms apart, inside one of the host's speed
  states), so each pass's change is the Hodges–Lehmann estimate of its block log ratios,
  and the change across passes is a one-sample t-test on those; the figure judged is exp
  of their mean, with its t interval.
- PooledBlocks: block turns with fewer passes: the Wilcoxon signed-rank test and the
  Hodges–Lehmann estimate and CI over all the block pairs, which cannot see process-to-process
  differences (the verdict's note says so).
- PassPairs: sides that took whole passes in turn: each pass pair's log ratio, the
  Hodges–Lehmann estimate of their centre and the Wilcoxon signed-rank test (those ratios
  are heavy-tailed: a pass pair split by one of the host's speed switches is off by
  30-90%; 8 or more pass pairs to reach p < 0.01).
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from attnbench.analysis.significance import (
    hodges_lehmann,
    hodges_lehmann_ci,
    one_sample_t_test,
    p_text,
    welch_t_test,
    wilcoxon_signed_rank,
)
from attnbench.core import machine_check
from attnbench.core.stats import t_quantile

if TYPE_CHECKING:
    from attnbench.core.record import CaseRecord, RunRecord

RELATIVE, RAW = "host-relative", "raw"
TIME_BASES = (RAW, RELATIVE)
MIN_PASSES = 3  # passes in each run for the pass-level test


# ----------------------------------------------------------------------------- what the records hold


def relative_samples(rec: CaseRecord) -> list[float] | None:
    """The case's samples over the host's reference kernel timed around each, if recorded."""
    return machine_check.relative_samples(rec.samples, rec.machine_check)


def judged_basis(base: CaseRecord, cur: CaseRecord, wanted: str = RAW) -> str:
    """host-relative when asked for and both records pair their samples with the host's
    reference kernel; raw otherwise."""
    if wanted != RELATIVE:
        return RAW
    return RELATIVE if all(relative_samples(r) for r in (base, cur)) else RAW


def pass_log_medians(rec: CaseRecord, basis: str) -> list[float] | None:
    """The log median of each pass of a case (its samples on the given basis), or None when
    the record does not say how many samples each pass gave."""
    passes = rec.passes
    samples = relative_samples(rec) if basis == RELATIVE else rec.samples
    if not isinstance(passes, list) or not samples:
        return None
    counts = [p.get("n") if isinstance(p, dict) else None for p in passes]
    if not all(isinstance(n, int) and n > 0 for n in counts):
        return None
    sizes = [int(n) for n in counts if n is not None]
    if sum(sizes) != len(samples):
        return None
    out, start = [], 0
    for n in sizes:
        out.append(math.log(statistics.median(samples[start : start + n])))
        start += n
    return out


def interleaved(baseline: RunRecord, current: RunRecord) -> bool:
    """Whether the two runs are the two sides of one bench ab (attnbench.engine.turns): their passes
    of each case were timed seconds apart, taking turns, and pair up."""
    b, c = baseline.interleaved, current.interleaved
    if not isinstance(b, dict) or not isinstance(c, dict):
        return False
    return b.get("group") is not None and b.get("group") == c.get("group") and b.get("side") != c.get("side")


def _block_sizes(blocks: Any) -> bool:
    """Whether a pass's record of samples per block turn is usable."""
    return isinstance(blocks, list) and bool(blocks) and all(isinstance(n, int) and n > 0 for n in blocks)


def pass_blocks(rec: CaseRecord) -> list[list[list[float]]] | None:
    """Each pass's raw samples cut into the blocks it timed on its turns in a bench ab
    (attnbench.engine.turns), or None when the record has no block turns."""
    samples = rec.samples
    passes = rec.passes
    if isinstance(passes, list) and passes:
        sizes = [p.get("blocks") if isinstance(p, dict) else None for p in passes]
    else:
        sizes = [rec.block_samples]
    if not samples or not all(_block_sizes(b) for b in sizes):
        return None
    if sum(sum(b) for b in sizes) != len(samples):  # type: ignore[arg-type]
        return None
    out, start = [], 0
    for blocks in sizes:
        cut = []
        for n in blocks:  # type: ignore[union-attr]
            cut.append(samples[start : start + n])
            start += n
        out.append(cut)
    return out


def block_log_ratios(base: CaseRecord, cur: CaseRecord) -> list[list[float]] | None:
    """Per pass, log(median of the current's block k / median of the baseline's block k):
    the two blocks were timed one right after the other. None without block turns on both
    sides or with different numbers of passes; blocks past the shorter side's are unpaired."""
    bp, cp = pass_blocks(base), pass_blocks(cur)
    if bp is None or cp is None or len(bp) != len(cp):
        return None
    ratios = [
        [math.log(statistics.median(c) / statistics.median(b)) for b, c in zip(bb, cb, strict=False)]
        for bb, cb in zip(bp, cp, strict=True)
    ]
    return ratios if all(ratios) else None


# ----------------------------------------------------------------------------- the ways of judging


@dataclass(frozen=True)
class PassTest:
    """What the test across the runs' processes found."""

    p: float | None = None
    paired_ratio: float | None = None  # the pair's change (bench ab sides only)
    pairs: int = 0  # how many units the test had: passes, or block pairs for PooledBlocks
    ci: tuple[float, float] | None = None  # 95% CI of paired_ratio (block turns only)


@dataclass(frozen=True)
class TimeJudgement(ABC):
    """One way of judging a case's time change."""

    basis: str  # RAW or RELATIVE: the samples the ratio, its CI and Mann–Whitney U rest on
    test: ClassVar[str | None] = None  # the name a comparison gives the test (MetricChange.pass_test)
    p_label: ClassVar[str] = "p"  # what a note calls the test's p
    # The verdict rests on the two sides of one bench ab timed together, on their paired
    # change and its test; then runs made at other times (the history's noise floor) and the
    # host's speed over the runs (fastest sample, host never fast) say nothing about it.
    paired: ClassVar[bool] = False

    @abstractmethod
    def across_processes(self) -> PassTest:
        """The test of the change across the runs' processes (and, for a pair, its estimate)."""

    def not_significant(self, tested: PassTest, alpha: float) -> str | None:
        """Why a paired change beyond the threshold is not called (paired ways only)."""
        return None

    def caveat(self, tested: PassTest) -> str | None:
        """What a verdict of this way cannot see, when it is called anyway."""
        return None


@dataclass(frozen=True)
class PooledSamples(TimeJudgement):
    """The pooled samples alone: no test across processes."""

    def across_processes(self) -> PassTest:
        return PassTest()


@dataclass(frozen=True)
class PassMedians(TimeJudgement):
    """Welch's t-test on the two runs' per-pass log medians (MIN_PASSES or more each)."""

    base: tuple[float, ...]
    cur: tuple[float, ...]
    test = "welch"

    def across_processes(self) -> PassTest:
        return PassTest(welch_t_test(self.base, self.cur)[2])


def _paired_change(tested: PassTest) -> str:
    return f"paired {tested.paired_ratio - 1:+.1%}"  # type: ignore[operator]


@dataclass(frozen=True)
class PairedBlocks(TimeJudgement):
    """bench ab sides in block turns, MIN_PASSES or more passes: a t-test on the passes'
    Hodges–Lehmann changes over their block pairs."""

    blocks: tuple[tuple[float, ...], ...]  # per pass, its block log ratios
    test = "paired blocks"
    p_label = "t-test p"
    paired = True

    def across_processes(self) -> PassTest:
        per_pass = [hodges_lehmann(r) for r in self.blocks]
        mean = statistics.fmean(per_pass)
        half = t_quantile(0.975, len(per_pass) - 1) * statistics.stdev(per_pass) / math.sqrt(len(per_pass))
        ci = (math.exp(mean - half), math.exp(mean + half))
        return PassTest(one_sample_t_test(per_pass)[2], math.exp(mean), len(per_pass), ci)

    def not_significant(self, tested: PassTest, alpha: float) -> str:
        return (
            f"{_paired_change(tested)} over {tested.pairs} passes, not significant "
            f"(t-test of the per-pass changes p={p_text(tested.p)})"
        )


@dataclass(frozen=True)
class PooledBlocks(TimeJudgement):
    """bench ab sides in block turns with fewer than MIN_PASSES passes: the Wilcoxon
    signed-rank test and Hodges–Lehmann estimate over all their block pairs."""

    blocks: tuple[tuple[float, ...], ...]  # per pass, its block log ratios
    test = "blocks"
    p_label = "Wilcoxon p, blocks"
    paired = True

    def across_processes(self) -> PassTest:
        pooled = [x for r in self.blocks for x in r]
        low, high = hodges_lehmann_ci(pooled)
        change = math.exp(hodges_lehmann(pooled))
        return PassTest(wilcoxon_signed_rank(pooled)[1], change, len(pooled), (math.exp(low), math.exp(high)))

    def not_significant(self, tested: PassTest, alpha: float) -> str:
        return (
            f"{_paired_change(tested)} over {tested.pairs} block pairs of one process each, "
            f"not significant (p={p_text(tested.p)})"
        )

    def caveat(self, tested: PassTest) -> str:
        return f"one process per side ({tested.pairs} block pairs): process-to-process differences not tested"


@dataclass(frozen=True)
class PassPairs(TimeJudgement):
    """bench ab sides that took whole passes in turn: Hodges–Lehmann and the Wilcoxon
    signed-rank test over the pass pairs' log ratios."""

    diffs: tuple[float, ...]  # per pass pair, log(current's median / baseline's)
    test = "paired"
    p_label = "Wilcoxon p"
    paired = True

    def across_processes(self) -> PassTest:
        d = list(self.diffs)
        return PassTest(wilcoxon_signed_rank(d)[1], math.exp(hodges_lehmann(d)), len(d))

    def not_significant(self, tested: PassTest, alpha: float) -> str:
        note = (
            f"{_paired_change(tested)} over {tested.pairs} pass pairs, not significant "
            f"(Wilcoxon signed-rank p={p_text(tested.p)})"
        )
        floor = 2 / 2**tested.pairs  # the exact test's smallest two-sided p: every sign alike
        if floor >= alpha:
            note += f"; with so few passes p cannot go below {p_text(floor)}: bench ab needs 8 or more"
        return note


def choose_judgement(base: CaseRecord, cur: CaseRecord, wanted: str = RAW, paired: bool = False) -> TimeJudgement:
    """The way to judge one case. wanted: the basis asked for (falls back to raw where a record
    lacks host-relative samples); paired: the runs are the two sides of one bench ab."""
    basis = judged_basis(base, cur, wanted)
    blocks = block_log_ratios(base, cur) if paired else None
    if blocks is not None:
        cut = tuple(tuple(r) for r in blocks)
        return PairedBlocks(basis, cut) if len(cut) >= MIN_PASSES else PooledBlocks(basis, cut)
    bp, cp = pass_log_medians(base, basis), pass_log_medians(cur, basis)
    if bp is None or cp is None:
        return PooledSamples(basis)
    if paired and len(bp) == len(cp) and len(bp) >= 2:
        return PassPairs(basis, tuple(y - x for x, y in zip(bp, cp, strict=True)))
    if min(len(bp), len(cp)) < MIN_PASSES:
        return PooledSamples(basis)
    return PassMedians(basis, tuple(bp), tuple(cp))
