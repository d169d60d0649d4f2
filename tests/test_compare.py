"""bench compare: the statistics, the verdicts, thresholds, environments, and the CLI.

Statistics are checked on seeded synthetic samples (deterministic, so they cannot flake);
the real-timing A/A and injected-slowdown check is tests/test_compare_slow.py.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import scipy.stats

from attnbench.analysis.compare import compare_runs, suite_compare_config
from attnbench.analysis.significance import (
    hodges_lehmann,
    hodges_lehmann_ci,
    mann_whitney_u,
    one_sample_t_test,
    welch_t_test,
    wilcoxon_signed_rank,
)
from attnbench.analysis.time_judgements import (
    PairedBlocks,
    PassMedians,
    PassPairs,
    PooledBlocks,
    PooledSamples,
    choose_judgement,
    interleaved,
)
from attnbench.core.errors import UserError
from attnbench.core.results import load_run
from attnbench.core.thresholds import CompareConfig, Thresholds, parse_compare_config
from attnbench.report.compare_tables import render_markdown
from tests.conftest import BENCH, cli_env
from tests.synthetic_runs import Case, noisy, write_run

# ----------------------------------------------------------------------------- Mann–Whitney U


@pytest.mark.parametrize("n1,n2", [(3, 3), (5, 8), (10, 12), (24, 26), (30, 40), (200, 150)])
def test_mann_whitney_matches_scipy(n1: int, n2: int) -> None:
    rng = random.Random(n1 * 1000 + n2)
    for shift in (0.0, 0.1, 0.5):
        x = [rng.gauss(0, 1) for _ in range(n1)]
        y = [rng.gauss(shift, 1) for _ in range(n2)]
        u, p = mann_whitney_u(x, y)
        method = "exact" if n1 + n2 <= 50 else "asymptotic"
        ref = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method=method)
        assert u == pytest.approx(ref.statistic)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


def test_mann_whitney_with_ties_uses_tie_corrected_normal_approximation() -> None:
    x = [1, 1, 2, 2, 3, 3, 3, 4, 5, 5]
    y = [2, 3, 3, 4, 4, 5, 5, 5, 6, 6]
    u, p = mann_whitney_u(x, y)
    ref = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert (u, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert mann_whitney_u([1.0, 1.0, 1.0], [1.0, 1.0]) == (3.0, 1.0)  # no information at all


# ----------------------------------------------------------------------------- verdicts


def _pair(tmp_path: Path, base_cases: list[Case], cur_cases: list[Case], **cur_run: object) -> tuple:
    base = write_run(tmp_path / "base", "run-base", base_cases)
    cur = write_run(tmp_path / "cur", "run-cur", cur_cases, started_at="2026-11-02T00:00:00+00:00", **cur_run)
    return load_run(base), load_run(cur)


def _compare(tmp_path: Path, base_cases: list[Case], cur_cases: list[Case], **kw: object):
    base, cur = _pair(tmp_path, base_cases, cur_cases)
    return compare_runs(base, cur, kw.pop("config", CompareConfig()), **kw)  # type: ignore[arg-type]


def _verdicts(cmp) -> dict[str, str]:
    return {c.case_id: c.verdict for c in cmp.cases}


def test_aa_on_synthetic_noise_flags_nothing_and_injected_slowdowns_are_told_apart(tmp_path: Path) -> None:
    """200 A/A pairs at 4% noise: no regression. +10%: flagged, except where the fastest of
    30 samples happened not to move beyond 5% (the guard against host speed switches costs
    a little power on noise that is not interference): those are unstable, never "no change".
    +1%: none flagged."""
    n_cases, n = 200, 30
    base = [Case(f"c{i}", noisy(0.010, n, 0.04, seed=i)) for i in range(n_cases)]
    same = [Case(f"c{i}", noisy(0.010, n, 0.04, seed=10_000 + i)) for i in range(n_cases)]
    slow10 = [Case(f"c{i}", noisy(0.011, n, 0.04, seed=20_000 + i)) for i in range(n_cases)]
    slow1 = [Case(f"c{i}", noisy(0.0101, n, 0.04, seed=30_000 + i)) for i in range(n_cases)]
    aa = _compare(tmp_path / "aa", base, same)
    assert aa.summary.counts["regression"] == 0
    assert aa.summary.counts["improvement"] == 0
    assert aa.summary.time_geomean == pytest.approx(1.0, abs=0.01)
    ten = _compare(tmp_path / "ten", base, slow10)
    assert ten.summary.counts["regression"] >= 0.95 * n_cases
    assert ten.summary.counts["regression"] + ten.summary.counts["unstable"] == n_cases
    assert ten.summary.time_ci_low is not None and ten.summary.time_ci_low > 1.08
    one = _compare(tmp_path / "one", base, slow1)
    assert one.summary.counts["regression"] == 0


def test_regression_needs_both_threshold_and_significance(tmp_path: Path) -> None:
    base = [
        Case("small-but-real", noisy(0.010, 60, 0.005, seed=1)),
        Case("big-but-noisy", noisy(0.010, 4, 0.5, seed=2)),
        Case("big-and-real", noisy(0.010, 30, 0.02, seed=3)),
        Case("faster", noisy(0.010, 30, 0.02, seed=4)),
    ]
    cur = [
        Case("small-but-real", noisy(0.0103, 60, 0.005, seed=11)),  # +3%: significant, under the 5% threshold
        Case("big-but-noisy", noisy(0.013, 4, 0.5, seed=12)),  # +30% by the medians, four noisy samples
        Case("big-and-real", noisy(0.012, 30, 0.02, seed=13)),
        Case("faster", noisy(0.008, 30, 0.02, seed=14)),
    ]
    cmp = _compare(tmp_path, base, cur)
    v = _verdicts(cmp)
    assert v == {
        "small-but-real": "no change",
        "big-but-noisy": "unstable",
        "big-and-real": "regression",
        "faster": "improvement",
    }
    real = next(c for c in cmp.cases if c.case_id == "big-and-real")
    assert real.time is not None and real.time.p_value is not None and real.time.p_value < 0.01
    assert real.time.ci_low is not None and real.time.ci_high is not None
    assert real.time.ci_low < real.time.ratio < real.time.ci_high  # type: ignore[operator]
    assert cmp.failing == [real]


def test_a_change_measured_on_a_busy_machine_is_not_trusted(tmp_path: Path) -> None:
    busy = {"worker": {"other_cpu_share": 0.6}}
    base = [Case("quiet", noisy(0.01, 30, 0.01, seed=1)), Case("busy", noisy(0.01, 30, 0.01, seed=2))]
    cur = [Case("quiet", noisy(0.012, 30, 0.01, seed=3)), Case("busy", noisy(0.012, 30, 0.01, seed=4), extra=busy)]
    cmp = _compare(tmp_path / "default", base, cur)
    assert _verdicts(cmp) == {"quiet": "regression", "busy": "unstable"}
    assert "60% of the CPU" in next(c.reason for c in cmp.cases if c.case_id == "busy")
    lenient = parse_compare_config({"busy_share": 1.0}, "t.toml")
    assert _verdicts(_compare(tmp_path / "lenient", base, cur, config=lenient))["busy"] == "regression"


def _two_state(fast: float, slow_share: float, n: int, seed: int) -> list[float]:
    """A VM's host switching between two speeds 33% apart, each with 2% noise."""
    rng = random.Random(seed)
    return [fast * (1.33 if rng.random() < slow_share else 1.0) * rng.lognormvariate(0.0, 0.02) for _ in range(n)]


def test_a_host_speed_switch_moves_the_median_not_the_fastest_sample(tmp_path: Path) -> None:
    """Same code, mostly-fast host then mostly-slow host: the median jumps ~30% and is
    significant, but the fastest sample stays, so it is unstable, not a regression; a real
    10% slowdown moves both and is flagged even though the host's mix changed too."""

    def check(*readings: float) -> dict:
        return {"machine_check": {"kernel": "test", "readings_s": list(readings)}}

    base = [Case("same", _two_state(0.010, 0.3, 80, seed=1), extra=check(1e-3, 1.33e-3))]
    base.append(Case("slower", _two_state(0.010, 0.3, 80, seed=2)))
    cur = [Case("same", _two_state(0.010, 0.7, 80, seed=3), extra=check(1.3e-3, 1.02e-3))]
    cur.append(Case("slower", _two_state(0.011, 0.35, 80, seed=4)))
    cmp = _compare(tmp_path, base, cur)
    assert _verdicts(cmp) == {"same": "unstable", "slower": "regression"}
    same = next(c for c in cmp.cases if c.case_id == "same")
    assert same.time is not None and same.time.ratio > 1.2 and same.time.p_value < 0.01  # type: ignore[operator]
    assert same.time.fastest_ratio == pytest.approx(1.0, abs=0.05)
    assert same.time.machine_drift == pytest.approx(0.33)
    assert "fastest sample" in (same.reason or "") and "reference kernel ran 33% apart" in (same.reason or "")


def test_a_case_timed_while_the_host_never_reached_its_fast_speed_is_not_judged(tmp_path: Path) -> None:
    """Every sample of one run's case came from a slow stretch of the host (all its reference
    readings 40% above the host's fastest): even its fastest sample moved, yet that is the
    host; a case whose runs both saw the fast host is judged."""

    def check(*readings: float) -> dict:
        return {"machine_check": {"kernel": "test", "threads": 1, "readings_s": list(readings)}}

    base = [Case("slow-host", noisy(0.010, 40, 0.01, seed=1), extra=check(1e-3, 1.01e-3))]
    base.append(Case("fast-host", noisy(0.010, 40, 0.01, seed=2), extra=check(1e-3, 1.02e-3)))
    cur = [Case("slow-host", noisy(0.013, 40, 0.01, seed=3), extra=check(1.4e-3, 1.42e-3))]
    cur.append(Case("fast-host", noisy(0.013, 40, 0.01, seed=4), extra=check(1.01e-3, 1.38e-3)))
    cmp = _compare(tmp_path, base, cur)
    assert _verdicts(cmp) == {"slow-host": "unstable", "fast-host": "regression"}
    slow = next(c for c in cmp.cases if c.case_id == "slow-host")
    assert "never came within 15% of its fastest (1.40 ms at best against 1.00 ms)" in (slow.reason or "")


def test_earlier_runs_set_a_run_to_run_noise_floor(tmp_path: Path) -> None:
    """Five earlier runs of unchanged code whose speed wandered ±3% from run to run: a +7%
    change is within that (unstable, with the floor given); +25% is beyond it. Judged on the
    two runs alone, the +7% is called; with a history too short for a floor, nothing is."""
    speeds = [1.0, 1.03, 0.97, 1.04, 0.98]
    history = []
    for i, speed in enumerate(speeds):
        cases = [Case(c, noisy(0.010 * speed, 40, 0.005, seed=100 * i + k)) for k, c in enumerate(("small", "big"))]
        history.append(load_run(write_run(tmp_path / f"h{i}", f"h{i}", cases)))
    base = [Case("small", noisy(0.010, 40, 0.005, seed=1)), Case("big", noisy(0.010, 40, 0.005, seed=2))]
    cur = [Case("small", noisy(0.0107, 40, 0.005, seed=3)), Case("big", noisy(0.0125, 40, 0.005, seed=4))]
    alone = _compare(tmp_path / "alone", base, cur)  # noise_runs=None: the two runs alone (--noise-runs 0)
    assert _verdicts(alone) == {"small": "regression", "big": "regression"}
    young = _compare(tmp_path / "young", base, cur, noise_runs=history[:1])  # a history too short to use
    assert _verdicts(young) == {"small": "unstable", "big": "unstable"}
    assert any("no run-to-run noise floor: 2 run(s)" in n for n in young.environment_notes)
    assert all("no run-to-run noise estimate yet" in (c.reason or "") for c in young.cases)
    floored = _compare(tmp_path / "floored", base, cur, noise_runs=history)
    assert _verdicts(floored) == {"small": "unstable", "big": "regression"}
    small = next(c for c in floored.cases if c.case_id == "small")
    assert small.time is not None and small.time.noise_runs == 6  # five earlier runs and the baseline
    assert small.time.noise_floor is not None and 0.07 < small.time.noise_floor < 0.25
    assert "within this case's run-to-run noise" in (small.reason or "")
    assert any("noise floor from 6 other run(s)" in n for n in floored.environment_notes)


def _host_paired(code_s: float, slow_share: float, n: int, seed: int) -> tuple[list[float], dict]:
    """A case on a host switching between two speeds 33% apart, each sample paired with
    reference readings that saw the same speed (attnbench.core.machine_check), 2% noise each."""
    rng = random.Random(seed)
    speeds = [1.33 if rng.random() < slow_share else 1.0 for _ in range(n)]
    samples = [code_s * s * rng.lognormvariate(0.0, 0.02) for s in speeds]
    # n + 1 readings around n samples; the speed holds across each sample and its neighbours.
    readings = [1e-3 * s * rng.lognormvariate(0.0, 0.02) for s in [speeds[0], *speeds]]
    check = {"kernel": "test", "threads": 1, "readings_s": [min(readings), max(readings)]}
    check["pair_readings_s"] = [readings]
    return samples, {"machine_check": check}


def test_host_relative_samples_see_through_the_host_and_catch_a_real_slowdown(tmp_path: Path) -> None:
    """Asked for (time_basis), on a workload the reference kernel tracks exactly: same code
    on a mostly-fast then mostly-slow host: raw medians move ~30%, the host-relative ratio
    does not (no change). A real 10% slowdown whose raw median barely
    moved, because the host turned faster at the same time, is a regression on the
    host-relative basis. A case without pair readings in one run falls back to raw."""
    same_b, same_bx = _host_paired(0.010, 0.2, 80, seed=1)
    same_c, same_cx = _host_paired(0.010, 0.8, 80, seed=2)
    ten_b, ten_bx = _host_paired(0.010, 0.6, 80, seed=3)
    ten_c, ten_cx = _host_paired(0.011, 0.2, 80, seed=4)
    raw_b, raw_bx = _host_paired(0.010, 0.2, 80, seed=5)
    raw_c, _ = _host_paired(0.010, 0.8, 80, seed=6)
    base = [Case("same", same_b, extra=same_bx), Case("ten", ten_b, extra=ten_bx), Case("raw", raw_b, extra=raw_bx)]
    cur = [Case("same", same_c, extra=same_cx), Case("ten", ten_c, extra=ten_cx), Case("raw", raw_c)]
    default = _compare(tmp_path / "default", base, cur)  # raw unless asked: host-relative is reported only
    assert all(c.time is not None and c.time.basis == "raw" for c in default.cases)
    assert next(c for c in default.cases if c.case_id == "same").time.host_relative_ratio == pytest.approx(
        1.0, abs=0.02
    )
    cmp = _compare(tmp_path, base, cur, time_basis="host-relative")
    assert _verdicts(cmp) == {"same": "no change", "ten": "regression", "raw": "unstable"}
    by = {c.case_id: c.time for c in cmp.cases}
    same, ten, raw = by["same"], by["ten"], by["raw"]
    assert same is not None and same.basis == "host-relative"
    assert same.raw_ratio is not None and same.raw_ratio > 1.2 and same.ratio == pytest.approx(1.0, abs=0.02)
    assert ten is not None and ten.basis == "host-relative" and ten.ratio == pytest.approx(1.10, abs=0.02)
    assert ten.raw_ratio is not None and ten.raw_ratio < 1.0 and ten.p_value is not None and ten.p_value < 1e-4
    assert ten.ci_low is not None and ten.ci_low > 1.05
    assert raw is not None and raw.basis == "raw" and "fastest sample" in (raw.note or "")
    assert any("host-relative" in n for n in cmp.environment_notes)


def test_the_noise_floor_of_a_host_relative_case_comes_from_its_host_relative_medians(tmp_path: Path) -> None:
    """Earlier runs whose host-relative medians wandered ±1%: +10% is beyond the floor, +4%
    (beyond a threshold of 2%) within it."""
    history = []
    for i, wobble in enumerate([1.0, 1.01, 0.99, 1.012, 0.99, 1.0]):
        cases = []
        for k, name in enumerate(("small", "big")):
            samples, extra = _host_paired(0.010 * wobble, 0.5, 60, seed=100 * i + k)
            cases.append(Case(name, samples, extra=extra))
        history.append(load_run(write_run(tmp_path / f"h{i}", f"h{i}", cases)))
    b1, b1x = _host_paired(0.010, 0.5, 300, seed=1)
    b2, b2x = _host_paired(0.010, 0.5, 300, seed=2)
    c1, c1x = _host_paired(0.0104, 0.5, 300, seed=3)
    c2, c2x = _host_paired(0.011, 0.5, 300, seed=4)
    base = [Case("small", b1, extra=b1x), Case("big", b2, extra=b2x)]
    cur = [Case("small", c1, extra=c1x), Case("big", c2, extra=c2x)]
    strict = CompareConfig(default=Thresholds(time=0.02))
    cmp = _compare(tmp_path / "cmp", base, cur, config=strict, noise_runs=history, time_basis="host-relative")
    assert _verdicts(cmp) == {"small": "unstable", "big": "regression"}
    small = next(c for c in cmp.cases if c.case_id == "small")
    assert small.time is not None and small.time.basis == "host-relative"
    assert small.time.noise_floor is not None and 0.03 < small.time.noise_floor < 0.09
    assert "host-relative: within this case's run-to-run noise" in (small.reason or "")


def _in_passes(code_s: float, offsets: list[float], n: int, seed: int) -> tuple[list[float], dict]:
    """Samples from len(offsets) passes, each a process with its own speed (offset), 1% noise."""
    rng = random.Random(seed)
    samples = [code_s * (1 + off) * rng.lognormvariate(0.0, 0.01) for off in offsets for _ in range(n)]
    return samples, {"passes": [{"pass": i + 1, "n": n} for i in range(len(offsets))]}


def test_a_change_must_hold_across_the_passes_not_only_across_samples(tmp_path: Path) -> None:
    """Each pass a process with its own speed, up to ±6% apart: a +6% change of the pooled median
    is significant over 240 samples, yet the passes say it could be which processes ran;
    +15% holds across them. With fewer than MIN_PASSES passes no pass test is made."""
    spread = [-0.06, 0.05, 0.0, 0.06, -0.05, 0.01]
    b1, bx1 = _in_passes(0.010, spread, 40, seed=1)
    c1, cx1 = _in_passes(0.0106, spread[::-1], 40, seed=2)
    b2, bx2 = _in_passes(0.010, spread, 40, seed=3)
    c2, cx2 = _in_passes(0.0115, spread[1:] + spread[:1], 40, seed=4)
    b3, bx3 = _in_passes(0.010, [-0.04, 0.04], 40, seed=5)
    c3, cx3 = _in_passes(0.0106, [0.04, -0.04], 40, seed=6)
    base = [Case("six", b1, extra=bx1), Case("fifteen", b2, extra=bx2), Case("two-passes", b3, extra=bx3)]
    cur = [Case("six", c1, extra=cx1), Case("fifteen", c2, extra=cx2), Case("two-passes", c3, extra=cx3)]
    cmp = _compare(tmp_path, base, cur)
    by = {c.case_id: c for c in cmp.cases}
    assert by["six"].verdict == "unstable" and by["fifteen"].verdict == "regression"
    six, fifteen = by["six"].time, by["fifteen"].time
    assert six is not None and six.p_value is not None and six.p_value < 1e-6
    assert six.pass_p is not None and six.pass_p > 0.01
    assert "not across the runs' passes" in (by["six"].reason or "")
    assert fifteen is not None and fifteen.pass_p is not None and fifteen.pass_p < 0.01
    assert by["two-passes"].time is not None and by["two-passes"].time.pass_p is None


@pytest.mark.parametrize("n1,n2", [(2, 2), (3, 3), (3, 6), (6, 6), (10, 4), (30, 30)])
def test_welch_t_test_matches_scipy(n1: int, n2: int) -> None:
    rng = random.Random(n1 * 100 + n2)
    for shift in (0.0, 0.5, 2.0, 5.0):
        x = [rng.gauss(0, 1) for _ in range(n1)]
        y = [rng.gauss(shift, rng.choice([0.5, 1.0, 3.0])) for _ in range(n2)]
        t, df, p = welch_t_test(x, y)
        ref = scipy.stats.ttest_ind(y, x, equal_var=False)
        assert df == pytest.approx(ref.df, rel=1e-9)
        assert t == pytest.approx(ref.statistic, rel=1e-9)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("n", [1, 3, 8, 20, 60])
def test_wilcoxon_signed_rank_matches_scipy(n: int) -> None:
    rng = random.Random(n)
    for shift in (0.0, 0.3, 1.0):
        d = [rng.gauss(shift, 1) for _ in range(n)]
        _, p = wilcoxon_signed_rank(d)
        ref = scipy.stats.wilcoxon(d, method="exact" if n <= 50 else "approx", correction=True)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
    tied = [0.1, -0.1, 0.2, 0.2, 0.3, 0.0, 0.4, 0.4, 0.5]  # ties and a zero: the normal approximation
    ref = scipy.stats.wilcoxon(tied, method="approx", correction=True, zero_method="wilcox")
    assert wilcoxon_signed_rank(tied)[1] == pytest.approx(ref.pvalue, rel=1e-9)
    assert wilcoxon_signed_rank([0.0, 0.0]) == (0.0, 1.0)


def test_hodges_lehmann_is_the_median_of_walsh_averages() -> None:
    assert hodges_lehmann([1.0]) == 1.0
    assert hodges_lehmann([0.0, 1.0, 10.0]) == pytest.approx(3.0)  # averages 0, .5, 1, 5, 5.5, 10
    rng = random.Random(3)
    d = [rng.gauss(0.1, 0.3) for _ in range(15)] + [50.0]  # an outlier barely moves it
    assert abs(hodges_lehmann(d) - 0.1) < 0.2


def _interleaved_pair(tmp_path: Path, base_cases: list[Case], cur_cases: list[Case], group: str = "g1") -> tuple:
    side = lambda name: {"interleaved": {"group": group, "side": name}}  # noqa: E731
    base = write_run(tmp_path / "base", "run-base", base_cases, run_extra=side("baseline"))
    cur = write_run(
        tmp_path / "cur", "run-cur", cur_cases, started_at="2026-11-01T00:00:01+00:00", run_extra=side("candidate")
    )
    return load_run(base), load_run(cur)


def test_the_sides_of_one_bench_ab_are_judged_pass_by_pass(tmp_path: Path) -> None:
    """The host's speed moves up to ±20% from pass to pass, but each pass of the candidate was
    timed right beside the baseline's (bench ab), at the same speed. Unpaired, the passes
    cannot confirm a +10% change (Welch); paired, every pass says +10% (Hodges–Lehmann,
    Wilcoxon signed-rank), and it is a regression, even where one pass pair straddled a
    switch of the host's speed. A/A under the same drift is no change; a change the passes
    do not agree on stays unstable; with 6 pass pairs nothing can be called at alpha 0.01."""
    host = [-0.20, 0.15, 0.0, 0.20, -0.10, 0.05, 0.18, -0.15, 0.02, 0.10]
    b, bx = _in_passes(0.010, host, 40, seed=1)
    c, cx = _in_passes(0.011, [h + (0.4 if i == 3 else 0.0) for i, h in enumerate(host)], 40, seed=2)
    a, ax = _in_passes(0.010, host, 40, seed=3)
    swing = [0.0, -0.3, 0.3, 0.0, -0.3, 0.3, 0.0, -0.3, 0.3, 0.0]
    disagree, dx = _in_passes(0.011, [h + d for h, d in zip(host, swing, strict=True)], 40, 4)
    base = [Case("ten", b, extra=bx), Case("aa", b, extra=bx), Case("disagree", b, extra=bx)]
    cur = [Case("ten", c, extra=cx), Case("aa", a, extra=ax), Case("disagree", disagree, extra=dx)]
    unpaired = compare_runs(*_pair(tmp_path / "seq", base, cur), CompareConfig())
    ten = next(x for x in unpaired.cases if x.case_id == "ten")
    assert ten.verdict == "unstable" and ten.time is not None and ten.time.pass_test == "welch"
    history = [load_run(write_run(tmp_path / f"h{i}", f"h{i}", base)) for i in range(3)]
    paired = compare_runs(*_interleaved_pair(tmp_path / "ab", base, cur), CompareConfig(), noise_runs=history)
    by = {x.case_id: x for x in paired.cases}
    assert by["ten"].verdict == "regression", by["ten"].reason
    t = by["ten"].time
    assert t is not None and t.pass_test == "paired" and t.pass_p is not None and t.pass_p < 0.01
    assert t.paired_ratio == pytest.approx(1.10, abs=0.01)
    assert t.noise_floor is None  # the history's floor is not applied to a pair timed together
    assert by["aa"].verdict in ("no change", "unstable") and "regression" not in (by["aa"].reason or "")
    assert by["disagree"].verdict == "unstable" and "Wilcoxon" in (by["disagree"].reason or "")
    assert any("took turns" in n for n in paired.environment_notes)

    def six(cases: list[Case]) -> list[Case]:
        out = []
        for x in cases:
            n = sum(p["n"] for p in x.extra["passes"][:6])
            out.append(Case(x.case_id, x.samples[:n], extra={"passes": x.extra["passes"][:6]}))
        return out

    few = compare_runs(*_interleaved_pair(tmp_path / "six", six(base), six(cur)), CompareConfig())
    ten6 = next(x for x in few.cases if x.case_id == "ten")
    assert ten6.verdict == "unstable" and "needs 8 or more" in (ten6.reason or "")


def _in_blocks(code_s: float, states: list[list[float]], process: list[float], seed: int) -> tuple[list[float], dict]:
    """Samples of a side of bench ab timed in block turns: pass p, block k at the host's speed
    state states[p][k] (shared with the other side's block k), in a process of its own speed
    process[p], 1% noise; block sizes 1 or 2 samples."""
    rng = random.Random(seed)
    samples: list[float] = []
    passes = []
    for number, (blocks, off) in enumerate(zip(states, process, strict=True), start=1):
        sizes = [1 + (k % 3 == 0) for k in range(len(blocks))]
        for state, size in zip(blocks, sizes, strict=True):
            samples += [code_s * (1 + state) * (1 + off) * rng.lognormvariate(0.0, 0.01) for _ in range(size)]
        passes.append({"pass": number, "n": sum(sizes), "blocks": sizes})
    return samples, {"passes": passes}


def test_the_sides_of_one_bench_ab_timed_in_block_turns_are_judged_block_by_block(tmp_path: Path) -> None:
    """The host switches between two speeds 1.5x apart from block to block (as the 2-core VM
    does within a pass), and each process has its own speed (±2%). Block k of one side was
    timed right after block k of the other, in the same state: each pass's change over its
    block pairs is close to the code's, and the t-test across the passes calls +10% a
    regression at 6 passes, where pass-level pairing cannot (its p has a floor of 0.031).
    Unchanged code and +1% are not flagged. With one pass per side the blocks are tested
    alone, and the note says process-to-process differences were not."""
    rng = random.Random(11)
    states = [[rng.choice([0.0, 0.5]) for _ in range(30)] for _ in range(6)]
    procs = [[rng.uniform(-0.02, 0.02) for _ in range(6)] for _ in range(4)]
    b, bx = _in_blocks(0.010, states, procs[0], seed=1)
    ten, tx = _in_blocks(0.011, states, procs[1], seed=2)
    aa, ax = _in_blocks(0.010, states, procs[2], seed=3)
    one, ox = _in_blocks(0.0101, states, procs[3], seed=4)
    base = [Case("ten", b, extra=bx), Case("aa", b, extra=bx), Case("one", b, extra=bx)]
    cur = [Case("ten", ten, extra=tx), Case("aa", aa, extra=ax), Case("one", one, extra=ox)]
    paired = compare_runs(*_interleaved_pair(tmp_path / "ab", base, cur), CompareConfig())
    by = {x.case_id: x for x in paired.cases}
    t = by["ten"].time
    assert by["ten"].verdict == "regression", by["ten"].reason
    assert t is not None and t.pass_test == "paired blocks" and t.pass_p is not None and t.pass_p < 0.01
    assert t.paired_ratio == pytest.approx(1.10, abs=0.02)
    assert by["aa"].verdict == "no change" and by["one"].verdict == "no change"  # their paired CIs within ±5%
    aa_t = by["aa"].time
    assert aa_t is not None and aa_t.paired_ratio == pytest.approx(1.0, abs=0.02)
    assert aa_t.paired_ci_low is not None and aa_t.paired_ci_high is not None
    assert 1 / 1.05 < aa_t.paired_ci_low < 1 < aa_t.paired_ci_high < 1.05

    def first_pass(cases: list[Case]) -> list[Case]:
        return [
            Case(x.case_id, x.samples[: x.extra["passes"][0]["n"]], extra={"passes": x.extra["passes"][:1]})
            for x in cases
        ]

    single = compare_runs(*_interleaved_pair(tmp_path / "one-pass", first_pass(base), first_pass(cur)), CompareConfig())
    ten1 = next(x for x in single.cases if x.case_id == "ten")
    assert ten1.time is not None and ten1.time.pass_test == "blocks" and ten1.verdict == "regression"
    assert "process-to-process differences not tested" in (ten1.time.note or "")

    torn = [Case(x.case_id, x.samples[:-1], extra=x.extra) for x in cur]  # blocks no longer add up: pass level
    fallback = compare_runs(*_interleaved_pair(tmp_path / "torn", base, torn), CompareConfig())
    assert {x.time.pass_test for x in fallback.cases if x.time is not None} <= {"paired", None}


def test_each_case_is_judged_one_way_chosen_from_its_records(tmp_path: Path) -> None:
    """Unpaired runs: the pooled samples, or Welch on the passes' medians from MIN_PASSES passes
    each. The sides of one bench ab: their block turns (a t-test across 3+ passes, else all
    block pairs pooled), or their pass pairs. A basis asked for that a record lacks is raw."""
    rng = random.Random(3)
    states = [[rng.choice([0.0, 0.5]) for _ in range(8)] for _ in range(3)]
    six, six_x = _in_passes(0.010, [0.0] * 6, 10, seed=1)
    two, two_x = _in_passes(0.010, [0.0] * 2, 10, seed=2)
    blocks, blocks_x = _in_blocks(0.010, states, [0.0] * 3, seed=4)
    one, one_x = _in_blocks(0.010, states[:1], [0.0], seed=5)
    cases = [
        Case("plain", noisy(0.010, 20, 0.01, seed=6)),
        Case("six", six, extra=six_x),
        Case("two", two, extra=two_x),
        Case("blocks", blocks, extra=blocks_x),
        Case("one-pass-blocks", one, extra=one_x),
    ]

    def ways(base, cur, paired: bool) -> dict[str, type]:
        by_id = {r.case_id: r for r in base.cases}
        return {c.case_id: type(choose_judgement(by_id[c.case_id], c, "raw", paired)) for c in cur.cases}

    assert ways(*_pair(tmp_path / "seq", cases, cases), paired=False) == {
        "plain": PooledSamples,
        "six": PassMedians,
        "two": PooledSamples,
        "blocks": PassMedians,
        "one-pass-blocks": PooledSamples,
    }
    assert ways(*_interleaved_pair(tmp_path / "ab", cases, cases), paired=True) == {
        "plain": PooledSamples,
        "six": PassPairs,
        "two": PassPairs,
        "blocks": PairedBlocks,
        "one-pass-blocks": PooledBlocks,
    }
    base, cur = _pair(tmp_path / "rel", cases[:1], cases[:1])
    assert choose_judgement(base.cases[0], cur.cases[0], "host-relative").basis == "raw"


def test_one_sample_t_test_matches_scipy() -> None:
    rng = random.Random(5)
    for n in (2, 3, 6, 20):
        for shift in (0.0, 0.5, 2.0):
            d = [rng.gauss(shift, 1) for _ in range(n)]
            t, df, p = one_sample_t_test(d)
            ref = scipy.stats.ttest_1samp(d, 0.0)
            assert df == n - 1 and t == pytest.approx(ref.statistic, rel=1e-9)
            assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


def test_the_hodges_lehmann_ci_covers_the_centre_as_often_as_it_says() -> None:
    rng = random.Random(8)
    hits = 0
    for _ in range(400):
        lo, hi = hodges_lehmann_ci([rng.gauss(0.3, 1) for _ in range(25)])
        hits += lo <= 0.3 <= hi
    assert 0.92 <= hits / 400 <= 0.98


def test_runs_of_different_bench_ab_jobs_are_not_paired(tmp_path: Path) -> None:
    base, cur = _interleaved_pair(tmp_path / "one", [Case("a", [1.0])], [Case("a", [1.0])])
    assert interleaved(base.run, cur.run)
    assert not interleaved(base.run, base.run)  # the same side twice
    other = load_run(
        write_run(
            tmp_path / "two", "x", [Case("a", [1.0])], run_extra={"interleaved": {"group": "g2", "side": "candidate"}}
        )
    )
    assert not interleaved(base.run, other.run)
    assert not interleaved(base.run, load_run(write_run(tmp_path / "plain", "y", [Case("a", [1.0])])).run)


def test_a_run_still_being_measured_is_named_in_the_notes(tmp_path: Path) -> None:
    s = noisy(0.01, 20, 0.01, seed=7)
    base, cur = _pair(tmp_path, [Case("a", s)], [Case("a", s)], status="running")
    cmp = compare_runs(base, cur, CompareConfig())
    assert any("has status 'running'" in n for n in cmp.environment_notes)


def test_identity_verdicts_new_missing_changed_failed(tmp_path: Path) -> None:
    s = noisy(0.01, 20, 0.01, seed=5)
    base = [
        Case("gone", s),
        Case("edited", s, workload_hash="old"),
        Case("crashes-now", s),
        Case("unknown-hash", s, workload_hash=None),
        Case("was-broken", None, status="error"),
        Case("skipped-now", s),
    ]
    cur = [
        Case("fresh", s),
        Case("edited", s, workload_hash="new"),
        Case("crashes-now", None, status="timeout"),
        Case("unknown-hash", s),
        Case("was-broken", s),
        Case("skipped-now", None, status="skipped"),
    ]
    cmp = _compare(tmp_path, base, cur)
    v = _verdicts(cmp)
    assert v == {
        "gone": "missing",
        "fresh": "new",
        "edited": "changed",
        "crashes-now": "failed",
        "unknown-hash": "no change",
        "was-broken": "new",
        "skipped-now": "missing",
    }
    unknown = next(c for c in cmp.cases if c.case_id == "unknown-hash")
    assert "workload_hash not recorded" in (unknown.reason or "")
    assert [c.case_id for c in cmp.failing] == ["crashes-now"]
    assert cmp.cases[0].verdict == "failed"  # the worst first


def test_memory_is_compared_by_threshold_with_a_byte_floor(tmp_path: Path) -> None:
    s = noisy(0.01, 20, 0.01, seed=6)
    mib = 2**20
    base = [
        Case("grew", s, peak_memory_bytes=100 * mib),
        Case("jitter", s, peak_memory_bytes=2 * mib),
        Case("shrank", s, peak_memory_bytes=100 * mib),
    ]
    cur = [
        Case("grew", s, peak_memory_bytes=120 * mib),  # +20% > 10%
        Case("jitter", s, peak_memory_bytes=2 * mib + 700 * 1024),  # +34% but under the 1 MiB floor
        Case("shrank", s, peak_memory_bytes=80 * mib),
    ]
    cmp = _compare(tmp_path, base, cur)
    by_id = {c.case_id: c for c in cmp.cases}
    assert by_id["grew"].verdict == "regression" and by_id["grew"].memory.verdict == "regression"  # type: ignore[union-attr]
    assert by_id["jitter"].memory.verdict == "no change"  # type: ignore[union-attr]
    assert by_id["shrank"].verdict == "improvement"
    # The summary leaves out the 2 MiB case: at its size the byte floor, not the 10%, decides.
    assert cmp.summary.memory_cases == 2
    assert cmp.summary.memory_geomean == pytest.approx((1.2 * 0.8) ** 0.5)


def test_energy_is_compared_when_both_runs_measured_it(tmp_path: Path) -> None:
    s = noisy(0.01, 20, 0.01, seed=7)
    cmp = _compare(tmp_path, [Case("e", s, energy_j=1.0)], [Case("e", s, energy_j=1.3)])
    (case,) = cmp.cases
    assert case.energy is not None and case.energy.verdict == "regression"
    assert case.verdict == "regression"


# ----------------------------------------------------------------------------- thresholds


def test_thresholds_from_suite_table_with_case_overrides_and_flags() -> None:
    config = parse_compare_config(
        {"threshold": 0.07, "alpha": 0.05, "memory_threshold": 0.2, "cases": {"sparse.*": {"threshold": 0.15}}},
        "suite.toml",
    )
    assert config.for_case("full.sdpa-cpu-n512-x", "full.sdpa") == Thresholds(time=0.07, alpha=0.05, memory=0.2)
    assert config.for_case("sparse.lsh-cpu-n512-x", "sparse.lsh").time == 0.15
    flagged = config.with_overrides(time=0.03, alpha=None)
    assert flagged.for_case("a", "full.sdpa").time == 0.03
    assert flagged.for_case("a", "sparse.lsh").time == 0.15  # the per-case override still wins
    with pytest.raises(UserError, match="unknown key 'treshold'"):
        parse_compare_config({"treshold": 0.1}, "suite.toml")
    with pytest.raises(UserError, match="fraction"):
        parse_compare_config({"threshold": -1}, "suite.toml")


def test_per_case_threshold_changes_the_verdict(tmp_path: Path) -> None:
    base = [Case("a", noisy(0.010, 30, 0.01, seed=1)), Case("b", noisy(0.010, 30, 0.01, seed=2), variant="sparse.lsh")]
    cur = [Case("a", noisy(0.011, 30, 0.01, seed=3)), Case("b", noisy(0.011, 30, 0.01, seed=4), variant="sparse.lsh")]
    config = parse_compare_config({"cases": {"sparse.lsh": {"threshold": 0.2}}}, "t.toml")
    assert _verdicts(_compare(tmp_path, base, cur, config=config)) == {"a": "regression", "b": "no change"}


def test_builtin_nightly_suite_carries_compare_thresholds(tmp_path: Path) -> None:
    base, _ = _pair(tmp_path, [Case("a", [0.01] * 6)], [Case("a", [0.01] * 6)])
    from dataclasses import replace

    nightly = replace(base.run, suite="nightly", argv=["bench", "run", "--suite", "nightly"])
    config = suite_compare_config(nightly)
    assert config.source == "built-in suite nightly"
    assert config.default.time == 0.05 and config.default.alpha == 0.01


# ----------------------------------------------------------------------------- environments


def test_different_environments_are_refused_unless_allowed(tmp_path: Path) -> None:
    s = noisy(0.01, 10, 0.01, seed=8)
    base, cur = _pair(tmp_path, [Case("a", s)], [Case("a", s)], packages={"torch": "2.7.0"}, host={"cpu": "Other"})
    with pytest.raises(UserError, match=r"different environments .*host cpu: Test CPU 9000 → Other.*torch: 2.6.0"):
        compare_runs(base, cur)
    cmp = compare_runs(base, cur, allow_env_mismatch=True)
    assert any("torch" in r for r in cmp.environment_refusals)
    assert "environment differs (allowed)" in render_markdown(cmp)


def test_a_new_hostname_alone_is_not_a_different_machine(tmp_path: Path) -> None:
    s = noisy(0.01, 10, 0.01, seed=9)
    base, cur = _pair(tmp_path, [Case("a", s)], [Case("a", s)], host={"hostname": "ci-runner-77"})
    cmp = compare_runs(base, cur)
    assert any("hostname" in n for n in cmp.environment_notes)


# ----------------------------------------------------------------------------- the command


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=120, env=cli_env(**env))


def test_cli_compare_folders_outputs_and_fail_on_regression(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base", "run-base", [Case("a", noisy(0.01, 30, 0.01, seed=1))])
    cur = write_run(
        tmp_path / "cur", "run-cur", [Case("a", noisy(0.012, 30, 0.01, seed=2))], started_at="2026-11-02T00:00:00+00:00"
    )
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    out_json, out_md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    # No history here: by default nothing is called until one holds 3 runs of the suite.
    empty = str(tmp_path / "none.sqlite")
    r = _bench("compare", str(base), str(cur), "--json", "-", "--fail-on-regression", "--history", empty)
    assert r.returncode == 0, r.stderr
    young = json.loads(r.stdout)
    assert young["cases"][0]["verdict"] == "unstable"
    assert "no run-to-run noise estimate yet" in young["cases"][0]["reason"]
    assert any("no run-to-run noise floor: 1 run(s)" in n for n in young["environment_notes"])  # the baseline
    r = _bench(
        "compare",
        str(base),
        str(cur),
        "--noise-runs",
        "0",  # the two runs alone
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
        GITHUB_STEP_SUMMARY=str(summary),
    )
    assert r.returncode == 0, r.stderr
    assert "regression" in r.stdout
    data = json.loads(out_json.read_text())
    assert data["schema"] == "attnbench.compare/1"
    assert data["cases"][0]["verdict"] == "regression"
    assert data["cases"][0]["time"]["p_value"] < 0.01
    assert data["summary"]["counts"]["regression"] == 1
    assert "| case |" in out_md.read_text()
    assert summary.read_text().startswith("earlier step\n## attnbench comparison")  # appended, not replaced
    r = _bench("compare", str(base), str(cur), "--noise-runs", "0", "--fail-on-regression", GITHUB_STEP_SUMMARY="")
    assert r.returncode == 1
    assert "a" in r.stderr and "regressed" in r.stderr
    r = _bench("compare", str(base), str(base), "--fail-on-regression")
    assert r.returncode == 2 and "both references name run run-base" in r.stderr


def test_cli_compare_history_references_and_env_refusal(tmp_path: Path) -> None:
    history = tmp_path / "h.sqlite"
    s = noisy(0.01, 20, 0.01, seed=3)
    write_run(tmp_path / "runs" / "r1", "run-1", [Case("a", s)], started_at="2026-11-01T00:00:00+00:00")
    write_run(tmp_path / "runs" / "r2", "run-2", [Case("a", s)], started_at="2026-11-02T00:00:00+00:00")
    write_run(
        tmp_path / "runs" / "r3",
        "run-3",
        [Case("a", s)],
        started_at="2026-11-03T00:00:00+00:00",
        packages={"torch": "9"},
    )
    assert _bench("history", "ingest", str(tmp_path / "runs"), "--history", str(history)).returncode == 0
    r = _bench("compare", "latest~2", "latest~1", "--history", str(history), "--json", "-")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["baseline"]["run_id"], data["current"]["run_id"]) == ("run-1", "run-2")
    r = _bench("compare", "latest~1", "latest", "--history", str(history))
    assert r.returncode == 2
    assert "different environments" in r.stderr and "--allow-env-mismatch" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _bench("compare", "latest~1", "latest", "--history", str(history), "--allow-env-mismatch")
    assert r.returncode == 0, r.stderr
    r = _bench("compare", "latest~5", "latest", "--history", str(history))
    assert r.returncode == 2 and "needs 6 complete run(s)" in r.stderr
