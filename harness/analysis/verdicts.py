"""Per-metric changes of one case, baseline against current, and the case's verdict.

- time: the ratio of medians (current / baseline) with a percentile-bootstrap 95% CI and a
  two-sided Mann–Whitney U test on the samples, on the basis and with the test across
  processes of the case's way of judging (attnbench.analysis.time_judgements). A change
  counts only when it beats the threshold (default 5%) *and* the test is significant
  (default p < 0.01; for the sides of one bench ab, their paired test); a change beyond
  the threshold that the test cannot confirm is `unstable`, and so is a small change whose
  CI cannot rule out one beyond the threshold. What the host can explain instead is
  attnbench.analysis.guards's part.
- memory: deterministic (one metered call), so a threshold alone, with a floor in bytes
  below which page-granular jitter is not a change.
- energy: joules per call from a counter, a single figure, so a threshold alone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from attnbench.analysis.significance import bootstrap_median_ratios, mann_whitney_u, percentile_ci, seed_of
from attnbench.analysis.time_judgements import RELATIVE, TimeJudgement, relative_samples

if TYPE_CHECKING:
    import numpy as np

    from attnbench.core.record import CaseRecord
    from attnbench.core.thresholds import Thresholds

N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class MetricChange:
    """One metric of one case, baseline against current."""

    metric: str  # time | memory | energy
    baseline: float | None
    current: float | None
    ratio: float | None  # current / baseline
    ci_low: float | None = None  # bootstrap 95% CI of the ratio (time only)
    ci_high: float | None = None
    p_value: float | None = None  # Mann–Whitney (time only)
    # What time ratio, CI and p rest on: "raw" samples, or "host-relative" ones (each sample over
    # the host's reference kernel timed around it, attnbench.core.machine_check) when asked for and both
    # runs have them.
    basis: str | None = None
    raw_ratio: float | None = None  # ratio of the raw medians (time only; equals ratio when raw)
    host_relative_ratio: float | None = None  # ratio of the host-relative medians, when both runs paired
    # The two sides of one bench ab: their paired change (attnbench.analysis.time_judgements), what
    # their verdict rests on (with pass_p).
    paired_ratio: float | None = None
    paired_ci_low: float | None = None  # its 95% CI, where the sides timed in block turns
    paired_ci_high: float | None = None
    fastest_ratio: float | None = None  # ratio of the fastest raw samples (time only)
    # Whether the change holds across processes, not only across samples (time, MIN_PASSES+ passes
    # each): Welch's t-test on the two runs' per-pass log medians (each pass a fresh process), or,
    # for the two sides of one bench ab, their paired test (pass_test names it).
    pass_p: float | None = None
    pass_test: str | None = None  # "welch" | "paired" | "paired blocks" | "blocks"
    machine_drift: float | None = None  # spread of the host's reference-kernel times over both runs
    noise_floor: float | None = None  # smallest change beyond run-to-run noise (of ratio when host-relative,
    # of fastest_ratio when raw)
    noise_runs: int | None = None  # earlier runs holding this case that the floor rests on
    threshold: float | None = None
    verdict: str | None = None  # regression | improvement | no change | unstable; None: not measured
    note: str | None = None

    @property
    def change(self) -> float | None:
        return None if self.ratio is None else self.ratio - 1


def change_text(ratio: float | None) -> str:
    """A ratio as the signed percentage change notes and tables write."""
    return "-" if ratio is None else f"{ratio - 1:+.1%}"


def time_change(
    base: CaseRecord, cur: CaseRecord, th: Thresholds, judgement: TimeJudgement
) -> tuple[MetricChange, np.ndarray | None]:
    """The time comparison and its bootstrap replicates (for the geometric-mean CI).

    On the host-relative basis the ratio, its CI and the test are those of the samples in
    units of the reference kernel; baseline and current stay the raw medians in seconds."""
    bmed, cmed = base.median_s, cur.median_s
    assert bmed is not None and cmed is not None
    raw_ratio = cmed / bmed
    rel_b, rel_c = relative_samples(base), relative_samples(cur)
    host_relative = statistics.median(rel_c) / statistics.median(rel_b) if rel_b and rel_c else None
    if rel_b and rel_c and judgement.basis == RELATIVE:
        bs, cs, ratio = rel_b, rel_c, host_relative
    else:
        bs, cs = base.samples, cur.samples
        ratio = raw_ratio
    assert ratio is not None
    tested = judgement.across_processes()
    # A pair timed in turn is judged on its own paired change: pooled samples mix the
    # host's speed states in proportions that differ between the sides by chance.
    judged = tested.paired_ratio if judgement.paired else ratio
    assert judged is not None
    up, down = judged > 1 + th.time, judged < 1 / (1 + th.time)
    common = {
        "basis": judgement.basis,
        "raw_ratio": raw_ratio,
        "host_relative_ratio": host_relative,
        "paired_ratio": tested.paired_ratio,
        "paired_ci_low": tested.ci[0] if tested.ci else None,
        "paired_ci_high": tested.ci[1] if tested.ci else None,
        "threshold": th.time,
    }
    if not bs or not cs:
        # Without raw samples (e.g. imported summaries) significance cannot be tested.
        verdict = "unstable" if up or down else "no change"
        note = "no raw samples: significance not tested"
        return MetricChange("time", bmed, cmed, ratio, **common, verdict=verdict, note=note), None
    reps = bootstrap_median_ratios(bs, cs, N_BOOTSTRAP, seed_of(base.case_id))
    lo, hi = percentile_ci(reps)
    # Whether a change beyond the threshold can be ruled out: on a pair timed in block turns,
    # by the paired change's own CI (the pooled one mixes the host's states).
    reach_lo, reach_hi = tested.ci or (lo, hi)
    _, p = mann_whitney_u(bs, cs)
    raw_b = base.samples or [bmed]
    raw_c = cur.samples or [cmed]
    fastest = min(raw_c) / min(raw_b)
    significant = p < th.alpha
    note = None
    if judgement.paired:
        assert tested.p is not None
        significant = tested.p < th.alpha
        if (up or down) and not significant:
            note = judgement.not_significant(tested, th.alpha)
        else:
            note = judgement.caveat(tested)
    if (up or down) and significant:
        verdict = "regression" if up else "improvement"
    elif up or down:
        verdict = "unstable"
        note = note or f"{ratio - 1:+.1%} but not significant (p={p:.2g}, n={len(bs)}/{len(cs)})"
    elif reach_hi > 1 + th.time or reach_lo < 1 / (1 + th.time):
        # Inside the threshold, but the data cannot rule out a change beyond it.
        verdict = "unstable" if not significant else "no change"
        if verdict == "unstable":
            which = "paired 95% CI" if tested.ci else "95% CI"
            note = f"{which} [{reach_lo:.3f}, {reach_hi:.3f}] reaches beyond ±{th.time:.0%}"
    else:
        verdict = "no change"
    change = MetricChange(
        "time",
        bmed,
        cmed,
        ratio,
        lo,
        hi,
        p,
        **common,
        fastest_ratio=fastest,
        pass_p=tested.p,
        pass_test=judgement.test,
        verdict=verdict,
        note=note,
    )
    return change, reps


def memory_change(base: CaseRecord, cur: CaseRecord, th: Thresholds) -> MetricChange:
    b, c = base.peak_memory_bytes, cur.peak_memory_bytes
    if b is None or c is None:
        return MetricChange("memory", b, c, None, threshold=th.memory, note="not measured in both runs")
    delta = c - b
    allowed = max(th.memory * b, th.memory_floor_bytes)
    ratio = c / b if b > 0 else None
    if delta > allowed:
        verdict = "regression"
    elif -delta > allowed:
        verdict = "improvement"
    else:
        verdict = "no change"
    return MetricChange("memory", b, c, ratio, threshold=th.memory, verdict=verdict)


def energy_change(base: CaseRecord, cur: CaseRecord, th: Thresholds) -> MetricChange | None:
    b, c = base.energy_j, cur.energy_j
    if b is None and c is None:
        return None
    if b is None or c is None or b <= 0:
        return MetricChange("energy", b, c, None, threshold=th.energy, note="not measured in both runs")
    ratio = c / b
    verdict = "regression" if ratio > 1 + th.energy else "improvement" if ratio < 1 / (1 + th.energy) else "no change"
    return MetricChange("energy", b, c, ratio, threshold=th.energy, verdict=verdict)


def case_verdict(time: MetricChange, memory: MetricChange, energy: MetricChange | None) -> tuple[str, list[str]]:
    """The verdict of a case measured in both runs, and why: any metric's regression; else
    an unstable time; else any improvement; else no change."""
    metrics = (time, memory, energy)
    verdicts = [m.verdict for m in metrics if m is not None and m.verdict]
    if "regression" in verdicts:
        verdict = "regression"
    elif time.verdict == "unstable":
        verdict = "unstable"
    elif "improvement" in verdicts:
        verdict = "improvement"
    else:
        verdict = "no change"
    reasons = [f"{m.metric} {m.verdict}" for m in metrics if m and m.verdict in ("regression",)]
    if time.note:
        reasons.append(time.note)
    return verdict, reasons
