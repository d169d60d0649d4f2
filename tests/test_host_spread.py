"""The host's own speed while a case was sampled: its reference readings' spread, which
attributes an unstable case to the machine rather than to the code (attnbench.core.machine_check)."""

from __future__ import annotations

import io
from pathlib import Path

from attnbench.core.machine_check import HOST_SPREAD_LIMIT, host_spread
from attnbench.core.settings import SamplingPolicy
from attnbench.engine.timing import sample


def test_host_spread_is_the_iqr_over_median_of_the_readings_after_samples() -> None:
    # The first reading (before any sample, another cache state) is left out.
    check = {"pair_readings_s": [[9.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]]}
    assert host_spread(check) == (2.0 - 1.0) / 1.5  # quartiles 1 and 2, median 1.5
    steady = {"pair_readings_s": [[5.0, 1.0, 1.01, 0.99, 1.0, 1.0]]}
    assert host_spread(steady) < HOST_SPREAD_LIMIT
    assert host_spread({"readings_s": [1.0, 2.0]}) is None
    assert host_spread(None) is None
    assert host_spread({"pair_readings_s": [[1.0, 1.0, 1.0]]}) is None  # too few to say


class _Clock:
    """A timer whose samples follow the fake host's speed: slow for every other block of four."""

    def __init__(self) -> None:
        self.calls = 0

    def speed(self) -> float:
        return 2.0 if (self.calls // 4) % 2 else 1.0

    def time(self, step: object, calls: int) -> float:
        self.calls += 1
        return 0.02 * calls * self.speed()


def test_an_unstable_case_on_a_varying_host_says_so() -> None:
    clock = _Clock()
    policy = SamplingPolicy(budget_s=0.0, min_samples=6, max_samples=24, floor_samples=24, target_rel_ci=0.02)
    m = sample(lambda: None, clock, policy, 0.02, reference=lambda: 0.001 * clock.speed())  # type: ignore[arg-type]
    assert not m.stable
    assert any("host's own speed varied" in n for n in m.notes), m.notes


def test_run_summary_counts_unstable_cases_on_a_varying_host(tmp_path: Path) -> None:
    from rich.console import Console

    from attnbench.core.results import load_run
    from attnbench.report.console import print_summary
    from tests.synthetic_runs import Case, write_run

    varying = {"pair_readings_s": [[1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]]}
    steady = {"pair_readings_s": [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]}
    cases = [
        Case("a", [0.01] * 6, seq_len=256, extra={"stable": False, "machine_check": varying}),
        Case("b", [0.01] * 6, seq_len=512, extra={"stable": False, "machine_check": steady}),
        Case("c", [0.01] * 6, seq_len=1024, extra={"machine_check": varying}),
    ]
    run = load_run(write_run(tmp_path / "r", "20261201-000000-synthetic-host", cases))
    console = Console(width=120, record=True, file=io.StringIO(), emoji=False)
    print_summary(console, run)
    text = console.export_text()
    assert "2 of them unstable" in text
    assert "in 1 of the 2 unstable cases the host's own speed varied by over 10%" in text
