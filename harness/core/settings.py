"""Run settings: how cases are measured, not what they are (so not part of case_id)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingPolicy:
    budget_s: float = 2.0  # time for sampling after warm-up, per case
    target_rel_ci: float = 0.02  # stop when the median's 95% CI is within ±2%
    min_sample_s: float = 0.02  # each sample times enough calls to last this long
    warmup_s: float = 0.25  # warm-up continues until this long has passed (one call at least)
    min_samples: int = 6  # fewest samples for a 95% median CI, so the fewest to call converged
    floor_samples: int = 3  # fewest samples taken even when calls are slower than the budget allows
    max_samples: int = 500


@dataclass(frozen=True)
class RunSettings:
    max_time_per_case: float = 2.0  # seconds of sampling after warm-up
    target_rel_ci: float = 0.02
    timeout_s: float | None = None  # per case, worker start to result; None derives it
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

    def options_for(self, backend: str) -> dict[str, Any]:
        return {k: v for b, k, v in self.backend_options if b == backend}

    def policy(self) -> SamplingPolicy:
        return SamplingPolicy(budget_s=self.max_time_per_case / self.passes, target_rel_ci=self.target_rel_ci)

    def case_timeout(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        # Generous: warm-up, a memory pass and slow single calls can exceed the budget.
        return max(120.0, 10 * self.max_time_per_case + 60.0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["case_timeout_s"] = self.case_timeout()
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
