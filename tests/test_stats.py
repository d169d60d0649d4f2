"""attnbench.core.stats (median CI, summaries, stability, Student's t) and attnbench.engine.timing.sample with a
scripted timer."""

import math

import pytest
import scipy.special
import scipy.stats

from attnbench.backends.base import Timer
from attnbench.core.settings import SamplingPolicy
from attnbench.core.stats import (
    UNSTABLE_IQR_RATIO,
    betainc,
    converged,
    is_stable,
    median_ci_ranks,
    summarize,
    t_quantile,
    t_two_sided_p,
)
from attnbench.engine.timing import sample


def binom_cdf_half(n, k):
    """P(Binomial(n, 1/2) <= k), exact."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def coverage(n, lo):
    """Probability that [x_(lo), x_(n+1-lo)] covers the true median (continuous distribution)."""
    return 1.0 - 2.0 * binom_cdf_half(n, lo - 1)


# ----------------------------------------------------------------------------- Student's t


@pytest.mark.parametrize("df", [0.5, 1, 1.5, 2, 3, 4, 5, 9, 22, 30, 61, 200, 1e4])
def test_t_quantile_matches_scipy(df):
    for p in (1e-6, 0.005, 0.025, 0.3, 0.49, 0.5001, 0.6, 0.9, 0.975, 0.995, 0.9995, 1 - 1e-9):
        assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-9)


def test_t_quantile_is_exact_where_the_noise_floor_uses_it():
    # df=3, p=0.995: the noise floor of a history of four runs (attnbench.analysis.noise).
    assert t_quantile(0.995, 3) == pytest.approx(5.840909309733, abs=1e-9)
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.1, 4) == -t_quantile(0.9, 4)


@pytest.mark.parametrize(("p", "df"), [(0.0, 3), (1.0, 3), (-0.1, 3), (0.975, 0), (0.975, -1)])
def test_t_quantile_rejects_impossible_arguments(p, df):
    with pytest.raises(ValueError):
        t_quantile(p, df)


@pytest.mark.parametrize("df", [1, 2.5, 7, 40, 1000])
def test_t_two_sided_p_and_betainc_match_scipy(df):
    for t in (0.0, 0.1, -1.3, 2.0, 6.5, 40.0):
        assert t_two_sided_p(t, df) == pytest.approx(2 * scipy.stats.t.sf(abs(t), df), rel=1e-9, abs=1e-300)
    for a, b, x in ((0.5, df / 2, 0.3), (df / 2, 0.5, 0.9), (df, 2.0, 0.01), (3.0, df, 0.5)):
        assert betainc(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-9, abs=1e-300)


# ----------------------------------------------------------------------------- median_ci_ranks


@pytest.mark.parametrize(("n", "expected"), [(6, (1, 6)), (10, (2, 9)), (20, (6, 15))])
def test_median_ci_ranks_known_values(n, expected):
    assert median_ci_ranks(n) == expected


@pytest.mark.parametrize("n", range(6))
def test_median_ci_ranks_none_below_six(n):
    assert median_ci_ranks(n) is None


@pytest.mark.parametrize("n", range(6, 81))
def test_median_ci_ranks_is_tightest_pair_with_95_coverage(n):
    lo, hi = median_ci_ranks(n)
    assert 1 <= lo <= hi <= n
    assert hi == n + 1 - lo  # symmetric
    assert coverage(n, lo) >= 0.95
    # One rank narrower on each side would miss the 95% level.
    assert coverage(n, lo + 1) < 0.95


@pytest.mark.parametrize("confidence", [0.90, 0.99])
def test_median_ci_ranks_other_confidence_levels(confidence):
    for n in range(1, 60):
        ranks = median_ci_ranks(n, confidence)
        if coverage(n, 1) < confidence:
            # Even the full range cannot reach the level.
            assert ranks is None, n
            continue
        lo, hi = ranks
        assert hi == n + 1 - lo
        assert coverage(n, lo) >= confidence
        assert coverage(n, lo + 1) < confidence


def test_median_ci_ranks_99_needs_more_samples():
    # P(all 7 on one side) = 2/128 > 1%, P(all 8) = 2/256 < 1%.
    assert median_ci_ranks(7, 0.99) is None
    assert median_ci_ranks(8, 0.99) == (1, 8)


# ----------------------------------------------------------------------------- summarize


def test_summarize_ten_samples():
    samples = [7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]
    s = summarize(samples)
    assert s.n == 10
    assert s.median == pytest.approx(5.5)
    assert s.mean == pytest.approx(5.5)
    assert s.min == 1.0
    assert s.max == 10.0
    # 'inclusive' quartiles of 1..10: 3.25 and 7.75 (the 'exclusive' method would give 2.75, 8.25).
    assert s.iqr == pytest.approx(4.5)
    # n=10 -> ranks (2, 9) of the sorted samples.
    assert (s.ci95_low, s.ci95_high) == (2.0, 9.0)
    assert s.samples == tuple(samples)  # original order kept
    assert s.stdev == pytest.approx(math.sqrt(sum((x - 5.5) ** 2 for x in samples) / 9))


def test_summarize_odd_count_uses_whole_range_without_ci():
    s = summarize([3.0, 1.0, 2.0, 5.0, 4.0])
    assert s.median == 3.0
    assert s.iqr == pytest.approx(2.0)  # inclusive quartiles 2 and 4
    # Too few samples for a 95% CI: the full range stands in for it.
    assert (s.ci95_low, s.ci95_high) == (1.0, 5.0)
    assert s.samples == (3.0, 1.0, 2.0, 5.0, 4.0)


def test_summarize_single_sample():
    s = summarize([0.25])
    assert (s.median, s.min, s.max, s.iqr, s.stdev, s.n) == (0.25, 0.25, 0.25, 0.0, 0.0, 1)
    assert (s.ci95_low, s.ci95_high) == (0.25, 0.25)


def test_summarize_rejects_empty():
    with pytest.raises(ValueError):
        summarize([])


def test_summary_relative_measures():
    s = summarize([10.0, 10.0, 10.0, 10.0, 10.0, 12.0, 8.0])
    assert s.median == 10.0
    assert s.ci_half_width_rel == pytest.approx(0.2)  # n=7 -> ranks (1, 7): 8 and 12
    assert s.iqr_rel == pytest.approx(s.iqr / 10.0)


def test_summary_relative_measures_with_zero_median():
    s = summarize([0.0] * 6)
    assert s.ci_half_width_rel == math.inf
    assert s.iqr_rel == math.inf
    assert not converged(s, 0.5)


def test_to_json_lists_samples():
    d = summarize([2.0, 1.0, 3.0]).to_json()
    assert d["samples"] == [2.0, 1.0, 3.0]
    assert d["median"] == 2.0
    assert d["n"] == 3


# ----------------------------------------------------------------------------- converged / is_stable


def test_converged_needs_enough_samples():
    # Identical samples: a zero-width interval, but five cannot give a 95% CI.
    assert not converged(summarize([1.0] * 5), 0.02)
    assert converged(summarize([1.0] * 6), 0.02)


def test_converged_compares_ci_to_target():
    s = summarize([float(x) for x in range(1, 11)])  # median 5.5, CI [2, 9]
    half = max(5.5 - 2.0, 9.0 - 5.5) / 5.5
    assert converged(s, half + 1e-9)
    assert not converged(s, half - 1e-3)


def test_is_stable_flags_wide_iqr():
    tight = summarize([1.00, 1.01, 0.99, 1.00, 1.02, 0.98])
    assert tight.iqr_rel <= UNSTABLE_IQR_RATIO
    assert is_stable(tight, True)
    assert not is_stable(tight, False)  # never stable without reaching the target

    wide = summarize([1.0, 1.3, 0.7, 1.0, 1.25, 0.75])
    assert wide.iqr_rel > UNSTABLE_IQR_RATIO
    assert not is_stable(wide, True)


def test_is_stable_threshold_is_ten_percent():
    # Inclusive quartiles of [4, 4.75, 5, 5.25, 6] are 4.75 and 5.25: IQR/median = 0.5/5, exactly 10%.
    at = summarize([4.0, 4.75, 5.0, 5.25, 6.0])
    assert at.iqr_rel == 0.10
    assert is_stable(at, True)
    above = summarize([0.8, 0.94, 1.0, 1.06, 1.2])
    assert above.iqr_rel == pytest.approx(0.12)
    assert not is_stable(above, True)


# ----------------------------------------------------------------------------- timing.sample


class ScriptedTimer(Timer):
    """Returns scripted per-call durations (cycled), times `calls`; never looks at a clock."""

    clock = "scripted"
    sync = "none"

    def __init__(self, per_call):
        self.per_call = list(per_call)
        self.calls_seen = []

    def time(self, step, calls):
        d = self.per_call[len(self.calls_seen) % len(self.per_call)]
        self.calls_seen.append(calls)
        return d * calls


def never_called():
    raise AssertionError("the scripted timer must not call the step")


def test_sample_stops_once_ci_target_met():
    timer = ScriptedTimer([0.001])
    policy = SamplingPolicy(budget_s=60.0, min_sample_s=0.0, target_rel_ci=0.02)
    m = sample(never_called, timer, policy, per_call_estimate_s=0.001)
    assert m.stats.n == policy.min_samples == 6  # the first point at which a 95% CI exists
    assert len(timer.calls_seen) == 6
    assert m.converged
    assert m.stable
    assert m.stats.median == pytest.approx(0.001)
    assert "CI" in m.stop_reason and "budget" not in m.stop_reason
    assert m.notes == []


def test_sample_keeps_going_until_converged():
    # A spread-out first block, then tight values: stops at the first n whose CI fits ±2%.
    script = [1.0, 2.0, 3.0] + [1.0] * 50
    timer = ScriptedTimer(script)
    policy = SamplingPolicy(budget_s=60.0, min_sample_s=0.0, target_rel_ci=0.02)
    m = sample(never_called, timer, policy, per_call_estimate_s=1.0)
    assert m.converged
    n = m.stats.n
    assert converged(summarize(script[:n]), 0.02)
    assert not any(converged(summarize(script[:k]), 0.02) for k in range(6, n))
    assert m.stats.samples == tuple(script[:n])


def test_sample_budget_stops_at_floor_samples_when_noisy():
    timer = ScriptedTimer([1.0, 2.0, 3.0, 4.0])
    policy = SamplingPolicy(budget_s=1e-12, min_sample_s=0.0, floor_samples=3)
    m = sample(never_called, timer, policy, per_call_estimate_s=1.0)
    assert m.stats.n == 3
    assert not m.converged
    assert not m.stable
    assert "budget" in m.stop_reason
    assert any("too few" in note for note in m.notes)


def test_sample_budget_respects_larger_floor():
    timer = ScriptedTimer([1.0, 1.5])
    policy = SamplingPolicy(budget_s=1e-12, min_sample_s=0.0, floor_samples=8, target_rel_ci=0.01)
    m = sample(never_called, timer, policy, per_call_estimate_s=1.0)
    assert m.stats.n == 8
    assert not m.converged
    assert "budget" in m.stop_reason
    assert any("did not reach" in note for note in m.notes)


def test_sample_budget_wins_over_convergence_below_min_samples():
    # Identical samples would converge at 6, but the budget is already spent at the floor of 3.
    timer = ScriptedTimer([0.5])
    policy = SamplingPolicy(budget_s=1e-12, min_sample_s=0.0, floor_samples=3)
    m = sample(never_called, timer, policy, per_call_estimate_s=0.5)
    assert m.stats.n == 3
    assert not m.converged


def test_sample_max_samples():
    timer = ScriptedTimer([1.0, 2.0])
    policy = SamplingPolicy(budget_s=3600.0, min_sample_s=0.0, max_samples=12, target_rel_ci=0.01)
    m = sample(never_called, timer, policy, per_call_estimate_s=1.0)
    assert m.stats.n == 12
    assert m.stop_reason == "max samples reached"
    assert not m.converged
    assert any("IQR/median" in note for note in m.notes)


@pytest.mark.parametrize(
    ("min_sample_s", "estimate", "expected"),
    [
        (0.02, 0.003, 7),  # ceil(6.67)
        (0.02, 0.005, 4),
        (0.02, 0.5, 1),  # slow calls: one per sample
        (0.0, 0.001, 1),
        (1.0, 0.0, 1_000_000_000),  # estimate floored at 1 ns
    ],
)
def test_sample_calls_per_sample(min_sample_s, estimate, expected):
    timer = ScriptedTimer([0.004])
    policy = SamplingPolicy(budget_s=60.0, min_sample_s=min_sample_s)
    m = sample(never_called, timer, policy, per_call_estimate_s=estimate)
    assert m.calls_per_sample == expected
    assert set(timer.calls_seen) == {expected}
    # Each sample is the per-call time: the block's seconds divided by its calls.
    assert m.stats.median == pytest.approx(0.004)


def test_sample_reads_the_reference_before_the_first_sample_and_after_each():
    timer = ScriptedTimer([0.001])
    events: list[str] = []

    def reference() -> float:
        events.append(f"ref after {len(timer.calls_seen)} samples")
        return 2e-4

    policy = SamplingPolicy(budget_s=60.0, min_sample_s=0.0, target_rel_ci=0.02)
    m = sample(never_called, timer, policy, per_call_estimate_s=0.001, reference=reference)
    assert m.stats.n == 6
    assert events == [f"ref after {i} samples" for i in range(7)]  # outside every timed block
    assert m.pair_readings_s == [2e-4] * 7
    assert sample(never_called, ScriptedTimer([0.001]), policy, 0.001).pair_readings_s is None


def test_median_ci_ranks_are_exact_for_many_samples() -> None:
    """2^n overflowed a float from 1,024 samples (reachable by ingesting a pytest-benchmark file
    with many rounds); the ranks are now computed in whole numbers."""
    from scipy.stats import binom

    from attnbench.core.stats import median_ci_ranks

    for n in (6, 7, 40, 100, 1023, 1024, 5000):
        lo, hi = median_ci_ranks(n)
        assert hi == n + 1 - lo
        assert binom.cdf(lo - 1, n, 0.5) <= 0.025 < binom.cdf(lo, n, 0.5)  # the widest rank within alpha/2
    assert median_ci_ranks(5) is None
    stats = summarize([1.0 + i * 1e-4 for i in range(1500)])
    assert stats.ci95_low < stats.median < stats.ci95_high
