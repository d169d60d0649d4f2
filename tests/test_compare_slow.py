"""Real timing: an A/A comparison flags nothing, an injected 10% slowdown is flagged, 1% is not.

Marked slow (four short real runs, about a minute). It needs a machine that is not busy
with other work: a change measured while other processes held the CPU is reported as
`unstable` by design, and the test says so instead of passing or failing on noise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.compare import compare_runs
from harness.results import load_run
from tests.conftest import BENCH, cli_env

pytestmark = pytest.mark.slow

RUN = ["run", "--variants", "test.slowdown", "--backends", "cpu", "--seq-lens", "64,128", "--heads", "4"]
RUN += ["--head-dim", "32", "--threads", "1", "--max-time-per-case", "1.5", "--target-ci", "0.002"]


def _run(folder: Path, extra: float) -> Path:
    r = subprocess.run(
        [*BENCH, *RUN, "--out", str(folder), "--history", "off"],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(ATTNBENCH_PLUGINS="tests.plugins.slowdown", ATTNBENCH_SLOWDOWN=str(extra)),
    )
    assert r.returncode == 0, r.stderr
    return folder


@pytest.mark.xfail(
    strict=False,
    reason=(
        "issue 7 is open on this: on a quiet machine (other processes <= 1% of the CPU) the run-to-run spread "
        "of test.slowdown's medians reached 2x (n=128: 5.1, 6.0, 4.7, 3.1 ms in four consecutive runs), so the "
        "A/A pair was called an improvement; the filler workload is dispatcher-bound and every case is unstable"
    ),
)
def test_aa_quiet_and_injected_slowdown_detected(tmp_path: Path) -> None:
    # Interleaved, so a drift in the machine's load is shared by the comparisons.
    a1 = load_run(_run(tmp_path / "a1", 0.0))
    ten = load_run(_run(tmp_path / "ten", 0.10))
    a2 = load_run(_run(tmp_path / "a2", 0.0))
    one = load_run(_run(tmp_path / "one", 0.01))
    busy = max((c.extra.get("worker") or {}).get("other_cpu_share") or 0 for r in (a1, ten, a2, one) for c in r.cases)
    if busy > 0.25:
        pytest.skip(f"other processes used up to {busy:.0%} of the CPU: timings from this machine cannot decide")
    aa = compare_runs(a1, a2)
    assert aa.summary.counts["regression"] == 0 and aa.summary.counts["improvement"] == 0, aa.cases
    detected = compare_runs(a1, ten)
    assert detected.summary.counts["regression"] == len(detected.cases), detected.cases
    small = compare_runs(a1, one)
    assert small.summary.counts["regression"] == 0, small.cases
