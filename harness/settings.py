"""Run settings: how cases are measured, not what they are (so not part of case_id)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from harness.timing import SamplingPolicy


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
