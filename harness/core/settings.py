"""Run settings: how cases are measured, not what they are (so not part of case_id)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# The slow-case rule (docs/measurement.md, "Slow cases"). A case whose calls are slow gets
# a sampling budget of min_samples calls, so its median still has a 95% CI, as long as those
# calls fit in this many seconds; beyond it, floor_samples calls are taken.
SLOW_CASE_BUDGET_CAP_S = 300.0
# Without --timeout, a worker's base limit: max(TIMEOUT_FLOOR_S, 10 × budget + 60 s).
TIMEOUT_FLOOR_S = 120.0
# After the first timed call ends in t1 seconds, a worker has max(base, FACTOR × (calls + 2) × t1 + MARGIN)
# left, calls being what its phase still makes: the samples (the slow-case rule's), or one metered call.
AFTER_FIRST_CALL_FACTOR = 2.0
AFTER_FIRST_CALL_MARGIN_S = 60.0
MEMORY_PHASE_CALLS = 1  # the memory worker's calls after its first: the metered one
PROFILE_WARMUP_CALLS = 2  # the profile worker warms up with two calls (attnbench.engine.profiling)


@dataclass(frozen=True)
class SamplingPolicy:
    budget_s: float = 2.0  # time for sampling after warm-up, per case
    target_rel_ci: float = 0.02  # stop when the median's 95% CI is within ±2%
    min_sample_s: float = 0.02  # each sample times enough calls to last this long
    warmup_s: float = 0.25  # warm-up continues until this long has passed (one call at least)
    min_samples: int = 6  # fewest samples for a 95% median CI, so the fewest to call converged
    floor_samples: int = 3  # fewest samples taken even when calls are slower than the budget allows
    max_samples: int = 500

    def slow_case_samples(self, call_s: float) -> int:
        """Samples the slow-case rule guarantees a case whose calls take call_s: min_samples
        while they fit in SLOW_CASE_BUDGET_CAP_S, else floor_samples."""
        return self.min_samples if self.min_samples * call_s <= SLOW_CASE_BUDGET_CAP_S else self.floor_samples


@dataclass(frozen=True)
class RunSettings:
    max_time_per_case: float = 2.0  # seconds of sampling after warm-up
    target_rel_ci: float = 0.02
    # --timeout: each worker's hard limit, start to result. None: the slow-case rule (limit_after_first_call).
    timeout_s: float | None = None
    # The slow-case rule's base limit where timeout_s is None; None derives it (case_timeout).
    # Not a flag or suite setting: tests set a small one to see the rule scale it.
    base_timeout_s: float | None = None
    memory_limit_bytes: int | None = None  # a worker above this resident size is stopped: oom
    seed: int = 0
    verify: bool = True  # check the output against the float64 reference before timing
    verify_max_len: int = 1031  # verification length cap (odd, so not a multiple of any block)
    plugins: str = ""  # ATTNBENCH_PLUGINS of the parent, re-applied in each worker
    # (backend, key, value) from [backend_options.NAME] and --backend-option NAME.KEY=VALUE
    backend_options: tuple[tuple[str, str, Any], ...] = ()
    # After timing and memory, profile each case in a third worker (bench run --profile);
    # its files go to <profile_dir>/<case_id>/ (a run's is <run folder>/profiles).
    profile: bool = False
    profile_dir: str | None = None
    profile_calls: int = 3  # calls under the profiler, after warm-up
    # Each case is timed in this many fresh workers, one per pass over the whole sweep, so
    # its samples span the run's length instead of one stretch of the host's speed; the
    # sampling budget is shared among the passes. Verification and memory run in pass 1.
    passes: int = 1
    # bench quality: the training steps and evaluation batches a job's worker runs after its first
    # step (the slow-case rule's `calls` for the quality phase); set per job by the executor.
    quality_calls: int = 0
    # --quality approx: each case's output against exact full attention on structured inputs,
    # in its memory worker after the reading (never in the timed region); None: off
    quality: str | None = None

    def options_for(self, backend: str) -> dict[str, Any]:
        return {k: v for b, k, v in self.backend_options if b == backend}

    def policy(self) -> SamplingPolicy:
        return SamplingPolicy(budget_s=self.max_time_per_case / self.passes, target_rel_ci=self.target_rel_ci)

    def case_timeout(self) -> float:
        """The base limit of a worker: --timeout when given (a hard limit, start to result), else
        max(120 s, 10 × budget + 60 s), which the slow-case rule scales once the first call has run."""
        if self.timeout_s is not None:
            return self.timeout_s
        if self.base_timeout_s is not None:
            return self.base_timeout_s
        # Generous: warm-up, verification and a slow first call can exceed the budget.
        return max(TIMEOUT_FLOOR_S, 10 * self.max_time_per_case + 60.0)

    @property
    def scales_timeout(self) -> bool:
        """Whether the slow-case rule applies (no --timeout: that one stays a hard limit)."""
        return self.timeout_s is None

    def calls_after_first(self, phase: str, call_s: float) -> int:
        """The `calls` of the rule: what a phase's worker still times after a first call of call_s
        (samples in the time phase: SamplingPolicy.slow_case_samples)."""
        if phase == "memory":
            return MEMORY_PHASE_CALLS
        if phase == "profile":  # its warm-up calls, then the profiled ones
            return PROFILE_WARMUP_CALLS + self.profile_calls
        if phase == "quality":
            # Each step also generates its batch (outside its timed region), and a later step can
            # be slower than the first (the optimizer's state, a busy host): twice the calls.
            return 2 * self.quality_calls
        if phase == "quality_memory":  # the measured training step
            return 1
        return SamplingPolicy().slow_case_samples(call_s)

    def limit_after_first_call(self, call_s: float, calls: int) -> float:
        """Seconds a worker has left once its first timed call ended after call_s:
        max(base, 2 × (calls + 2) × call_s + 60 s)."""
        scaled = AFTER_FIRST_CALL_FACTOR * (calls + 2) * call_s + AFTER_FIRST_CALL_MARGIN_S
        return max(self.case_timeout(), scaled)

    def profile_timeout(self, first_call_s: float | None) -> float:
        """The profile worker's limit, start to result. It reports no calls of its own: without
        --timeout, the base for its setup, then the rule's limit after a first call of the time
        phase's first_call_s, for its warm-up and profiled calls (the base alone where that is unknown)."""
        base = self.case_timeout()
        if not self.scales_timeout or first_call_s is None:
            return base
        return base + self.limit_after_first_call(first_call_s, self.calls_after_first("profile", first_call_s))

    def _phase_ceiling(self, phase: str, first_limit: float) -> float:
        base = self.case_timeout()
        if not self.scales_timeout:
            return base
        # The first call takes at most its limit (or the worker is stopped). The limit after it
        # grows with the call's time except where the samples drop from min_samples to
        # floor_samples: its largest value is at the end of one of those two pieces.
        policy = SamplingPolicy()
        ends = {first_limit, min(first_limit, SLOW_CASE_BUDGET_CAP_S / policy.min_samples)}
        if phase == "profile":
            return max(self.profile_timeout(t) for t in ends)
        # Up to the base before the first call, the first call up to its limit, then the rest.
        after = max(self.limit_after_first_call(t, self.calls_after_first(phase, t)) for t in ends)
        return base + first_limit + after

    def case_timeout_ceiling(self, first_limit: float | None = None) -> float:
        """The longest a case's workers (time, memory, profile) can legitimately take under the
        timeout rule, one after another: what a driver that cannot see them (Ray) waits at most.
        first_limit: the case's first-call limit where it exceeds the base (attnbench.engine.first_call)."""
        phases = ("time", "memory", "profile") if self.profile else ("time", "memory")
        first = max(self.case_timeout(), first_limit or 0.0)
        return sum(self._phase_ceiling(p, first) for p in phases)

    def timeout_rule(self) -> dict[str, Any]:
        """What run.json keeps so a reader can tell each worker's limit (docs/measurement.md)."""
        if not self.scales_timeout:
            return {"kind": "hard", "text": f"--timeout {self.timeout_s:g} s: each worker, start to result"}
        policy = SamplingPolicy()
        return {
            "kind": "slow-case",
            "text": (
                "base limit from worker start to the first timed call's start; the first call gets the base "
                "again (on the host CPU with a quiet calibration, at least 10 × its executed FLOPs at the "
                "matmul ceiling); once it ends after t1 s, max(base, 2 × (calls + 2) × t1 + 60 s) more, calls being "
                f"{policy.min_samples} samples if {policy.min_samples} × t1 ≤ {SLOW_CASE_BUDGET_CAP_S:g} s, else "
                f"{policy.floor_samples} (time phase), {MEMORY_PHASE_CALLS} (memory phase); the profile worker gets "
                f"the base, then the same with the time phase's t1 and calls = {PROFILE_WARMUP_CALLS} + "
                "profile_calls; limits double for a worker taking bench ab's turns"
            ),
            "base_s": self.case_timeout(),
            "slow_case_budget_cap_s": SLOW_CASE_BUDGET_CAP_S,
            "min_samples": policy.min_samples,
            "floor_samples": policy.floor_samples,
            "after_first_call_factor": AFTER_FIRST_CALL_FACTOR,
            "after_first_call_margin_s": AFTER_FIRST_CALL_MARGIN_S,
            "memory_phase_calls": MEMORY_PHASE_CALLS,
            "profile_warmup_calls": PROFILE_WARMUP_CALLS,
            "ceiling_s": self.case_timeout_ceiling(),
        }

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["case_timeout_s"] = self.case_timeout()  # the base limit (the hard one with --timeout)
        d["timeout_rule"] = self.timeout_rule()  # not a field: from_json ignores it
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSettings:
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known}
        if "backend_options" in kwargs:  # JSON turned the tuples into lists
            kwargs["backend_options"] = tuple(
                (b, k, tuple(v) if isinstance(v, list) else v) for b, k, v in kwargs["backend_options"]
            )
        return cls(**kwargs)
