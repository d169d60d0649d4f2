"""The measurement loop, written once for every backend: warm-up, then adaptive sampling."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from attnbench.backends.base import Step, Timer
from attnbench.core.machine_check import HOST_SPREAD_LIMIT, host_spread
from attnbench.core.settings import SLOW_CASE_BUDGET_CAP_S, SamplingPolicy
from attnbench.core.stats import TimeStats, converged, is_stable, summarize
from attnbench.engine.turns import BLOCK_S, BlockTurns, NoTurns


@dataclass
class Warmup:
    first_call_s: float
    calls: int
    seconds: float
    last_call_s: float

    @property
    def call_s(self) -> float:
        """t1 of the slow-case rule: the first call, which is the whole warm-up of a slow case;
        where warm-up went on and its calls got faster (a first call that compiled or
        initialised), the last of them."""
        return min(self.first_call_s, self.last_call_s)


@dataclass
class Measurement:
    stats: TimeStats
    calls_per_sample: int
    converged: bool
    stable: bool
    sampling_s: float
    stop_reason: str
    notes: list[str] = field(default_factory=list)
    pair_readings_s: list[float] | None = None  # n + 1 reference readings around the n samples
    block_samples: list[int] | None = None  # bench ab: samples per block turn, in order (sum: n)

    def record_fields(self) -> dict[str, Any]:
        """What the record keeps of the sampling as it is, by the record's field names
        (attnbench.core.record.Measurement)."""
        names = ("calls_per_sample", "block_samples", "converged", "stable", "stop_reason", "notes")
        return {name: getattr(self, name) for name in names}


def warm_up(
    step: Step,
    timer: Timer,
    policy: SamplingPolicy,
    min_calls: int = 1,
    first_call: Callable[[float | None], None] | None = None,
) -> Warmup:
    """Run until warm-up time has passed and at least `min_calls` calls were made (a compiling
    backend may build a second graph on the second call); the first call is kept apart.

    first_call: told None just before the first call and its seconds just after (the worker
    passes them on to the parent, whose deadline scales with that call)."""
    if first_call is not None:
        first_call(None)
    first = timer.time(step, 1)
    if first_call is not None:
        first_call(first)
    total, calls, last = first, 1, first
    while (total < policy.warmup_s or calls < min_calls) and calls < 1000:
        # Grow the block so fast steps do not pay clock overhead per call.
        block = max(1, min(64, int((policy.warmup_s - total) / max(last, 1e-9))))
        seconds = timer.time(step, block)
        total += seconds
        calls += block
        last = seconds / block
    return Warmup(first_call_s=first, calls=calls, seconds=total, last_call_s=last)


def slow_case_policy(policy: SamplingPolicy, call_s: float, passes: int = 1) -> tuple[SamplingPolicy, str | None]:
    """The sampling budget of the slow-case rule (docs/measurement.md), and a note when it changed it.

    policy: the budget of one pass (passes share the case's budget); call_s: t1 (Warmup.call_s).
    Where min_samples calls outlast the case's budget but fit in SLOW_CASE_BUDGET_CAP_S, the
    budget becomes min_samples × t1, shared by the passes like the budget it replaces, and each
    pass takes at least its share of the min_samples samples (never fewer than floor_samples),
    so that however the calls vary the case gets the samples a 95% CI of the median needs.
    Beyond the cap the policy stays: floor_samples are taken, and sample() notes the CI is none."""
    need = policy.min_samples * call_s
    total = policy.budget_s * passes
    if need > SLOW_CASE_BUDGET_CAP_S:
        note = (
            f"calls of {call_s:.3g} s: {policy.min_samples} of them would outlast the "
            f"{SLOW_CASE_BUDGET_CAP_S:g} s slow-case cap, so the {total:g} s sampling budget stays"
        )
        return policy, note if need > total else None
    if need <= total:
        return policy, None
    floor = max(policy.floor_samples, math.ceil(policy.min_samples / passes))
    stretched = replace(policy, budget_s=need / passes, floor_samples=floor)
    # Worded without "CI" and "samples": passes.merge keeps such notes of each pass.
    each = f", {need / passes:.3g} s in each of {passes} passes" if passes > 1 else ""
    note = (
        f"sampling budget stretched from {total:g} s to {need:.3g} s{each}: {policy.min_samples} calls of "
        f"{call_s:.3g} s, the fewest for a 95% interval of the median"
    )
    return stretched, note


def _stop_reason(samples: list[float], policy: SamplingPolicy, elapsed: float) -> str | None:
    """Why sampling stops now, or None to go on. elapsed: sampling time so far, turns not counted."""
    if len(samples) >= policy.max_samples:
        return "max samples reached"
    if len(samples) >= policy.min_samples and converged(summarize(samples), policy.target_rel_ci):
        return f"95% CI of the median within ±{policy.target_rel_ci:.0%}"
    if elapsed >= policy.budget_s and len(samples) >= policy.floor_samples:
        return f"time budget of {policy.budget_s:.3g} s spent before the CI target"
    return None


def sample(
    step: Step,
    timer: Timer,
    policy: SamplingPolicy,
    per_call_estimate_s: float,
    reference: Callable[[], float] | None = None,
    turns: BlockTurns | NoTurns | None = None,
) -> Measurement:
    """Adaptive sampling: stop when the CI target is met or the budget is spent.

    reference: a reading of the host's reference kernel (attnbench.engine.reference_kernel), taken
    before the first sample and after every sample, outside the timed blocks, so each
    sample has the host's speed just before and just after it.
    turns: in a bench ab, samples are taken in blocks of about BLOCK_S, each on a turn
    (attnbench.engine.turns); the time spent waiting for turns does not count against the budget,
    and block_samples records how many samples each block gave, so a comparison can pair
    block k of one side with block k of the other."""
    turns = turns or NoTurns()
    calls = max(1, math.ceil(policy.min_sample_s / max(per_call_estimate_s, 1e-9)))
    samples: list[float] = []
    readings: list[float] | None = None if reference is None else []
    blocks: list[int] = []
    start, waited = time.perf_counter(), turns.waited_s
    stop: str | None = None
    while stop is None:
        with turns.block():
            began = time.perf_counter()
            if reference is not None and readings == []:
                readings.append(reference())
            blocks.append(0)
            while stop is None and (blocks[-1] == 0 or time.perf_counter() - began < BLOCK_S):
                samples.append(timer.time(step, calls) / calls)
                blocks[-1] += 1
                if reference is not None and readings is not None:
                    readings.append(reference())
                stop = _stop_reason(samples, policy, time.perf_counter() - start - (turns.waited_s - waited))
    stats = summarize(samples)
    ok = converged(stats, policy.target_rel_ci)
    notes = []
    if not ok:
        notes.append(
            f"median CI ±{stats.ci_half_width_rel:.1%} did not reach ±{policy.target_rel_ci:.0%}"
            if stats.n >= policy.min_samples
            else f"only {stats.n} samples: too few for a 95% CI of the median"
        )
    if stats.iqr_rel > 0.10:
        notes.append(f"IQR/median {stats.iqr_rel:.1%} over 10%")
    spread = host_spread({"pair_readings_s": [readings]}) if readings else None
    if notes and spread is not None and spread > HOST_SPREAD_LIMIT:
        notes.append(f"the host's own speed varied meanwhile: its reference kernel's IQR/median was {spread:.0%}")
    return Measurement(
        stats=stats,
        calls_per_sample=calls,
        converged=ok,
        stable=is_stable(stats, ok),
        sampling_s=time.perf_counter() - start - (turns.waited_s - waited),
        stop_reason=stop,
        notes=notes,
        pair_readings_s=readings,
        block_samples=None if isinstance(turns, NoTurns) else blocks,
    )
