"""Slow cases: a sampling budget and a timeout that scale with the case's first call
(the slow-case rule: docs/measurement.md, "Slow cases")."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from attnbench.backends.base import Timer
from attnbench.core.cases import Case
from attnbench.core.settings import SLOW_CASE_BUDGET_CAP_S, RunSettings, SamplingPolicy
from attnbench.engine import timing
from attnbench.engine.executors.local import LocalExecutor, _Deadline
from attnbench.engine.timing import sample, slow_case_policy, warm_up

SLOW_CALLS = "tests.plugins.slow_calls"

# ----------------------------------------------------------------------------- the budget


class ClockTimer(Timer):
    """Calls that 'take' scripted seconds (cycled) on a fake clock that sampling reads too."""

    clock = "fake"
    sync = "none"

    def __init__(self, per_call: list[float]) -> None:
        self.per_call = per_call
        self.now = 0.0
        self.blocks = 0

    def perf_counter(self) -> float:
        return self.now

    def time(self, step: object, calls: int) -> float:
        seconds = self.per_call[self.blocks % len(self.per_call)] * calls
        self.blocks += 1
        self.now += seconds
        return seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """Install a ClockTimer's clock as the one sampling reads; returns a factory of timers."""

    def make(per_call: list[float]) -> ClockTimer:
        timer = ClockTimer(per_call)
        monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=timer.perf_counter))
        return timer

    return make


def measure(timer: ClockTimer, policy: SamplingPolicy, passes: int = 1) -> tuple[timing.Measurement, str | None]:
    """Warm-up, the slow-case rule, then sampling: what the timing worker does."""
    warm = warm_up(lambda: None, timer, policy)
    stretched, note = slow_case_policy(policy, warm.call_s, passes)
    return sample(lambda: None, timer, stretched, warm.last_call_s), note


def test_fast_calls_keep_the_budget() -> None:
    policy = SamplingPolicy(budget_s=2.0)
    assert slow_case_policy(policy, 0.3) == (policy, None)  # 6 × 0.3 s fits in 2 s
    big = SamplingPolicy(budget_s=100.0)
    assert slow_case_policy(big, 12.3) == (big, None)  # 6 × 12.3 s fits in 100 s


def test_slow_calls_stretch_the_budget_to_min_samples_calls() -> None:
    stretched, note = slow_case_policy(SamplingPolicy(budget_s=2.0), 12.3)
    assert stretched.budget_s == pytest.approx(6 * 12.3)
    assert stretched.floor_samples == stretched.min_samples == 6
    assert note == (
        "sampling budget stretched from 2 s to 73.8 s: 6 calls of 12.3 s, the fewest for a 95% interval of the median"
    )
    # Worded so that passes.merge keeps it (it drops a pass's CI and sample-count notes).
    assert "CI" not in note and "samples" not in note


def test_passes_share_the_stretched_budget() -> None:
    stretched, note = slow_case_policy(SamplingPolicy(budget_s=1.0), 12.3, passes=2)
    assert stretched.budget_s == pytest.approx(6 * 12.3 / 2)
    assert stretched.floor_samples == 3  # 3 in each of 2 passes: 6 in all
    assert note is not None and "36.9 s in each of 2 passes" in note
    four = slow_case_policy(SamplingPolicy(budget_s=0.5), 12.3, passes=4)[0]
    assert four.floor_samples == 3  # never below floor_samples


def test_beyond_the_cap_the_budget_stays() -> None:
    policy = SamplingPolicy(budget_s=2.0)
    t1 = SLOW_CASE_BUDGET_CAP_S / 6 + 1
    kept, note = slow_case_policy(policy, t1)
    assert kept == policy
    assert note is not None and "300 s slow-case cap" in note
    at_cap = slow_case_policy(policy, SLOW_CASE_BUDGET_CAP_S / 6)[0]
    assert at_cap.budget_s == pytest.approx(SLOW_CASE_BUDGET_CAP_S)


def test_a_slow_case_gets_six_samples_and_a_real_ci(clock) -> None:
    timer = clock([12.3, 12.4, 12.2])
    m, note = measure(timer, SamplingPolicy(budget_s=2.0))
    assert m.stats.n == 6
    assert m.converged  # a 95% CI exists at 6 and these are within ±2%
    assert note is not None and "73.8 s" in note
    assert not any("too few" in n for n in m.notes)


def test_calls_slower_than_the_first_still_give_six_samples(clock) -> None:
    # The budget is spent after 5 samples of 15 s, but the stretched floor asks for 6.
    timer = clock([12.3, 16.0, 16.5, 15.5])
    m, _ = measure(timer, SamplingPolicy(budget_s=2.0, target_rel_ci=0.001))
    assert m.stats.n == 6
    assert "budget of 73.8 s spent" in m.stop_reason
    assert any("did not reach" in n for n in m.notes)  # a real CI, just wider than the target


def test_without_the_rule_a_slow_case_gets_three_samples(clock) -> None:
    timer = clock([12.3])
    m = sample(lambda: None, timer, SamplingPolicy(budget_s=2.0), 12.3)
    assert m.stats.n == 3
    assert "only 3 samples: too few for a 95% CI of the median" in m.notes


def test_beyond_the_cap_floor_samples_are_taken(clock) -> None:
    timer = clock([60.0])
    m, note = measure(timer, SamplingPolicy(budget_s=2.0))
    assert m.stats.n == 3
    assert "only 3 samples: too few for a 95% CI of the median" in m.notes
    assert note is not None and "cap" in note


def test_warm_up_reports_the_first_call_and_t1_ignores_a_slow_first_call() -> None:
    told: list[float | None] = []
    warm = warm_up(lambda: None, ClockTimer([12.3]), SamplingPolicy(), first_call=told.append)
    assert told == [None, 12.3]
    assert warm.calls == 1 and warm.call_s == 12.3  # a slow case's warm-up is its first call
    compiled = warm_up(lambda: None, ClockTimer([30.0, 0.01]), SamplingPolicy(), min_calls=2)
    assert compiled.first_call_s == 30.0 and compiled.call_s == pytest.approx(0.01)


# ----------------------------------------------------------------------------- the timeout


def test_limit_after_the_first_call() -> None:
    s = RunSettings()
    assert s.case_timeout() == 120.0 and s.scales_timeout
    assert s.calls_after_first("time", 12.3) == 6
    assert s.calls_after_first("time", 51.0) == 3  # 6 × 51 s is past the 300 s cap
    assert s.calls_after_first("memory", 12.3) == 1
    assert s.limit_after_first_call(12.3, 6) == pytest.approx(2 * 8 * 12.3 + 60)
    assert s.limit_after_first_call(0.5, 6) == 120.0  # never below the base
    assert not RunSettings(timeout_s=30.0).scales_timeout


def test_ceiling_is_the_largest_limit_the_rule_gives() -> None:
    # time: base + a first call of up to the base + the most after it (t1 = 120 s: 3 samples,
    # 2 × 5 × 120 + 60 = 1260, above t1 = 50 s: 6 samples, 2 × 8 × 50 + 60 = 860);
    # memory: 120 + 120 + 2 × 3 × 120 + 60.
    assert RunSettings().case_timeout_ceiling() == pytest.approx((240 + 1260) + (240 + 780))
    assert RunSettings(timeout_s=30.0).case_timeout_ceiling() == 60.0  # time + memory, hard
    assert RunSettings(timeout_s=30.0, profile=True).case_timeout_ceiling() == 90.0
    small = RunSettings(base_timeout_s=10.0)  # t1 ≤ 10 s: always 6 samples
    assert small.case_timeout_ceiling() == pytest.approx((20 + 2 * 8 * 10 + 60) + (20 + 2 * 3 * 10 + 60))


def test_run_json_says_the_rule_and_old_files_still_load() -> None:
    d = RunSettings().to_json()
    rule = d["timeout_rule"]
    assert rule["kind"] == "slow-case" and rule["slow_case_budget_cap_s"] == SLOW_CASE_BUDGET_CAP_S
    assert rule["min_samples"] == 6 and rule["floor_samples"] == 3 and rule["base_s"] == 120.0
    assert "2 × (calls + 2) × t1 + 60 s" in rule["text"]
    assert RunSettings.from_json(d) == RunSettings()
    assert RunSettings(timeout_s=900.0).to_json()["timeout_rule"]["kind"] == "hard"
    old = {"max_time_per_case": 1.0, "timeout_s": None, "case_timeout_s": 120.0, "seed": 0}
    assert RunSettings.from_json(old) == RunSettings(max_time_per_case=1.0)


def test_deadline_follows_the_first_call() -> None:
    d = _Deadline(RunSettings(), "time", started=0.0, turns=False)
    assert d.at == 120.0
    assert d.reason() == "no result within 120 s, before its first timed call (base 120 s); worker stopped"
    d.first_call(100.0, None)
    assert d.at == 220.0  # the call gets the base again, from its start
    assert "first timed call ran past the base 120 s from its start" in d.reason()
    d.first_call(112.3, 12.3)
    assert d.at == pytest.approx(112.3 + 2 * 8 * 12.3 + 60)
    assert d.reason() == (
        "no result within 369 s (first call 12.3 s; limit 2 × 8 × 12.3 s + 60 s after it); worker stopped"
    )


def test_deadline_after_a_fast_first_call_is_the_base() -> None:
    d = _Deadline(RunSettings(), "memory", started=0.0, turns=False)
    d.first_call(1.0, None)
    d.first_call(1.5, 0.5)
    assert d.at == 121.5
    assert "(first call 0.5 s; limit the base 120 s, over 2 × 3 × 0.5 s + 60 s after it)" in d.reason()


def test_deadline_doubles_for_turns_and_ignores_reports_under_timeout() -> None:
    d = _Deadline(RunSettings(), "time", started=0.0, turns=True)
    d.first_call(10.0, None)
    d.first_call(22.3, 12.3)
    assert d.at == pytest.approx(22.3 + 2 * (2 * 8 * 12.3 + 60))
    assert d.reason().endswith("worker stopped (limits doubled: it took turns)")
    hard = _Deadline(RunSettings(timeout_s=30.0), "time", started=0.0, turns=False)
    hard.first_call(10.0, None)
    hard.first_call(22.3, 12.3)
    assert hard.at == 30.0 and hard.reason() == "no result within 30 s; worker stopped"


def test_profile_deadline_uses_the_time_phases_first_call() -> None:
    d = _Deadline(RunSettings(), "profile", started=0.0, turns=False, first_call_s=12.3)
    assert d.at == pytest.approx(120 + 2 * (2 + 3 + 2) * 12.3 + 60)  # 2 warm-up + 3 profiled calls
    assert "then 2 × 7 × 12.3 s + 60 s for a first call of 12.3 s" in d.reason()
    assert _Deadline(RunSettings(), "profile", started=0.0, turns=False).at == 120.0


# ----------------------------------------------------------------------------- with a real worker

BASE_S = 1.0  # the rule's base limit in these tests
# A first call well inside the base, then calls slow enough that the time phase's 6 samples
# take over twice the base: the fixed limit (the base from the worker's start) would stop it.
SLOW = {"first": 0.5, "then": 0.4}


@pytest.fixture
def slow_calls(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ATTNBENCH_PLUGINS", SLOW_CALLS)
    from attnbench.core.registry import load_plugins

    load_plugins()
    return SLOW_CALLS


def slow_case(**params: object) -> Case:
    # One thread: on a busy machine, the host reference read before warm-up takes seconds with more.
    params = dict(sorted(params.items()))
    return Case("test.slow_calls", tuple(params.items()), "core", "cpu", "float32", "forward", 1, 2, 16, 32, threads=1)


def executor(plugins: str, **settings: object) -> LocalExecutor:
    # Verification would make the process's first call: these cases leave it to warm-up.
    ex = LocalExecutor(RunSettings(max_time_per_case=0.1, target_rel_ci=0.5, verify=False, plugins=plugins, **settings))
    ex.warm()  # the fork server's torch import is no case's
    return ex


def test_a_slow_case_outlasts_its_base_limit(slow_calls: str) -> None:
    out = executor(slow_calls, base_timeout_s=BASE_S).run_pass(slow_case(**SLOW))  # the time worker alone
    assert out.status == "ok", out.reason
    r = out.result
    assert r.time_s.n >= 6
    assert r.notes[0].startswith("sampling budget stretched from 0.1 s to 3")  # 6 calls of 0.5 s
    assert out.worker["wall_s"] > 2 * BASE_S


@pytest.mark.slow  # a memory worker past a 5 s base: about 6 s; CI runs it (-m slow)
def test_the_memory_worker_outlasts_its_base_limit(slow_calls: str) -> None:
    # Its first call records the attention kernels, which on a busy machine took up to 2.5 s.
    base = 5.0
    out = executor(slow_calls, base_timeout_s=base)._run_phase(slow_case(then=base), "memory")
    assert out.status == "ok", out.reason
    assert out.result.peak_memory_bytes is not None
    assert out.worker["wall_s"] > base


def test_a_hanging_first_call_is_stopped_after_twice_the_base(slow_calls: str) -> None:
    ex = executor(slow_calls, base_timeout_s=BASE_S)
    t0 = time.perf_counter()
    out = ex.run(slow_case(hang=True))
    took = time.perf_counter() - t0
    assert out.status == "timeout"
    assert "its first timed call ran past the base 1 s from its start; worker stopped" in out.reason
    assert BASE_S <= took < 2 * BASE_S + 1.5


def test_an_explicit_timeout_stays_a_hard_limit(slow_calls: str) -> None:
    out = executor(slow_calls, timeout_s=BASE_S).run_pass(slow_case(**SLOW))
    assert out.status == "timeout"
    assert out.reason == "no result within 1 s; worker stopped"
    assert out.worker["wall_s"] < BASE_S + 1.0


# ----------------------------------------------------------------------------- the first call's own limit


def _calibrated(monkeypatch: pytest.MonkeyPatch, tmp_path, flops_per_s: float, busy: bool = False) -> None:
    from attnbench.backends.peaks import CACHE_ENV, save_calibration

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    entry = {"matmul_flops_per_s": {"float32": flops_per_s}, "memory_bytes_per_s": 1e10, "busy": busy}
    save_calibration("cpu", entry)


def _dense_case(n: int, backend: str = "cpu") -> Case:
    return Case("full.sdpa", (("causal", False),), "core", backend, "float32", "forward", 1, 8, 64, n)


def test_a_first_call_gets_ten_times_its_flops_at_the_calibrated_ceiling(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from attnbench.engine.first_call import first_call_limit, least_first_call_s

    _calibrated(monkeypatch, tmp_path, 1e11)
    big = _dense_case(65536)
    least = least_first_call_s(big)
    assert least == pytest.approx(4 * 65536**2 * 64 * 8 / 1e11)  # QKᵀ and PV, 2 FLOPs a multiply-add
    assert first_call_limit(120.0, big) == pytest.approx(10 * least)  # about 1,100 s
    assert first_call_limit(120.0, _dense_case(1024)) == 120.0  # small: the base
    assert first_call_limit(120.0, _dense_case(65536, "cuda")) == 120.0  # off the host CPU: the base
    d = _Deadline(RunSettings(), "time", started=0.0, turns=False, first_limit_s=first_call_limit(120.0, big))
    d.first_call(50.0, None)
    assert d.at == pytest.approx(50.0 + 10 * least)
    assert f"its first timed call ran past {10 * least:.0f} s (10 × its FLOPs at the host's calibrated ceiling)" in (
        d.reason()
    )
    assert RunSettings().case_timeout_ceiling(10 * least) > RunSettings().case_timeout_ceiling() + 10 * least


def test_no_quiet_calibration_no_longer_first_call(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from attnbench.engine.first_call import first_call_limit

    _calibrated(monkeypatch, tmp_path, 1e11, busy=True)
    assert first_call_limit(120.0, _dense_case(65536)) == 120.0
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "empty"))
    assert first_call_limit(120.0, _dense_case(65536)) == 120.0
