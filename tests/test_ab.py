"""`bench ab`: two sides' real `bench run`s taking turns, then compared pass by pass."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from attnbench.analysis.history import History
from attnbench.cli.ab import side_flags
from attnbench.core.errors import UserError
from attnbench.core.results import load_run
from tests.conftest import BENCH, ROOT, cli_env

SLOWDOWN = "tests.plugins.slowdown"
FLAGS = ["--variants", "test.slowdown", "--backends", "cpu", "--seq-lens", "32", "--heads", "2", "--head-dim", "16"]
FLAGS += ["--threads", "1", "--max-time-per-case", "0.6", "--passes", "3", "--param", "test.slowdown.base_steps=20"]


def _ab(*args: str, history: Path | None = None) -> subprocess.CompletedProcess:
    env = cli_env(ATTNBENCH_PLUGINS=SLOWDOWN)
    if history is not None:
        env["ATTNBENCH_HISTORY"] = str(history)
    return subprocess.run([*BENCH, "ab", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # two real bench runs taking turns (~30 s): run by CI (-m slow); the protocol is in test_turns
def test_bench_ab_times_both_sides_in_turns_and_compares_them(tmp_path: Path) -> None:
    """The candidate runs 50% more filler: each side imports its own settings (env), both
    run folders say they are one pair, and the comparison pairs their passes."""
    out = tmp_path / "ab"
    history = tmp_path / "history.sqlite"
    r = _ab(
        "--baseline", str(ROOT), "--candidate-env", "ATTNBENCH_SLOWDOWN=0.5", *FLAGS, "--out", str(out), history=history
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "(3 and 3 worker phases)" in r.stdout  # pass 1 (time + memory in one turn), passes 2 and 3
    base, cand = load_run(out / "baseline"), load_run(out / "candidate")
    b, c = base.run.interleaved, cand.run.interleaved
    assert b is not None and c is not None
    assert b["group"] == c["group"] and (b["side"], c["side"]) == ("baseline", "candidate")
    assert [(x.workload_metrics or {})["filler_calls"] for x in (base.cases[0], cand.cases[0])] == [20, 30]
    assert len(base.cases[0].passes or []) == len(cand.cases[0].passes or []) == 3
    for case in (base.cases[0], cand.cases[0]):  # the samples were timed in block turns
        passes, turns = case.passes or [], case.turns or {}
        assert all(sum(p["blocks"]) == p["n"] for p in passes)
        assert turns["blocks"] >= sum(len(p["blocks"]) for p in passes)
        assert turns["other_cpu_share"] == case.other_cpu_share
    cmp = json.loads((out / "compare.json").read_text())
    time = cmp["cases"][0]["time"]
    assert time["pass_test"] == "paired blocks" and time["paired_ratio"] > 1.2
    assert any("took turns" in n for n in cmp["environment_notes"])
    assert (out / "compare.md").read_text().strip()
    with History.open(history, create=False) as h:  # only the candidate is recorded
        assert [row.run_id for row in h.runs()] == [cand.run.run_id]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baseline", "/"], "is not an attnbench checkout"),
        (["--baseline", str(ROOT), "--resume", "x"], "bench ab does not take --resume"),
        (["--baseline", str(ROOT), "--executor", "ray"], "bench ab does not take --executor"),
        (["--baseline", str(ROOT), "--baseline-env", "NOEQUALS"], "--baseline-env takes NAME=VALUE"),
        (["--baseline", str(ROOT), "--variants", "no.such"], "the baseline's bench run exited with 2"),
    ],
)
def test_bench_ab_refuses_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = _ab(*args, "--out", str(tmp_path / "ab"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_only_the_run_flags_reach_the_sides() -> None:
    argv = ["ab", "--baseline", "b", "--candidate-env=X=1", "--suite", "nightly", "--out", "o", "--turns", "passes"]
    assert side_flags([*argv, "--threshold", "0.1", "--passes", "6"]) == ["--suite", "nightly", "--passes", "6"]
    with pytest.raises(UserError, match="--profile"):
        side_flags(["ab", "--baseline", "b", "--profile"])
