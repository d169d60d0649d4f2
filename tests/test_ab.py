"""`bench ab`: two sides' real `bench run`s taking turns, then compared pass by pass."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from attnbench.analysis.history import History
from attnbench.cli import ab
from attnbench.cli.ab import side_flags
from attnbench.cli.main import main
from attnbench.core.errors import UserError
from attnbench.core.layout import CheckoutCommand
from attnbench.core.results import load_run
from tests.conftest import BENCH, ROOT, cli_env

SLOWDOWN = "tests.plugins.slowdown"
FLAGS = ["--variants", "test.slowdown", "--backends", "cpu", "--seq-lens", "32", "--heads", "2", "--head-dim", "16"]
FLAGS += ["--threads", "1", "--max-time-per-case", "0.6", "--passes", "3", "--param", "test.slowdown.base_steps=20"]


def _ab(*args: str, history: Path | None = None, cwd: Path = ROOT, **env_extra: str) -> subprocess.CompletedProcess:
    """The real CLI, run from cwd (whose checkout is the candidate unless --candidate names one)."""
    env = cli_env(ATTNBENCH_PLUGINS=SLOWDOWN, **env_extra)
    if history is not None:
        env["ATTNBENCH_HISTORY"] = str(history)
    return subprocess.run([*BENCH, "ab", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _copy_checkout(dest: Path) -> Path:
    """A second checkout of this code: its packages' folders copied, committed in a git
    repository of its own (so it has a commit, and this repository's worktrees stay as they are)."""
    for folder in ("harness", "workloads", "backends"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    return dest.resolve()


def _head(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout


@pytest.fixture
def stop_before_sides(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """bench ab in this process up to where the sides would start: what it would run them with."""
    seen: dict[str, Any] = {}

    def fake(_args: Any, _console: Any, _flags: Any, checkouts: dict, commands: dict, *_rest: Any) -> int:
        seen.update(checkouts=checkouts, commands=commands)
        return 0

    monkeypatch.setattr(ab, "_run_sides", fake)
    return seen


@pytest.mark.slow  # two real bench runs taking turns (~30 s): run by CI (-m slow); the protocol is in test_turns
def test_bench_ab_times_both_sides_in_turns_and_compares_them(tmp_path: Path) -> None:
    """The candidate runs 50% more filler: each side imports its own settings (env), both
    run folders say they are one pair, and the comparison pairs their passes."""
    out = tmp_path / "ab"
    history = tmp_path / "history.sqlite"
    r = _ab(
        "--baseline",
        str(ROOT),
        "--allow-same",
        "--candidate-env",
        "ATTNBENCH_SLOWDOWN=0.5",
        *FLAGS,
        "--out",
        str(out),
        history=history,
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
        (["--baseline", str(ROOT), "--allow-same", "--variants", "no.such"], "the baseline's bench run exited with 2"),
        (["--baseline", str(ROOT)], f"the same checkout, {ROOT} (the checkout holding the current folder {ROOT})"),
        (["--baseline", str(ROOT), "--candidate", str(ROOT / "harness" / "..")], "(named by --candidate)"),
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


@pytest.mark.slow  # two real bench runs (~20 s): run by CI (-m slow)
def test_each_side_runs_its_own_checkouts_code(tmp_path: Path) -> None:
    """Run from a copy of the checkout, the copy is the candidate, whatever attnbench this
    Python has installed: the copy's edited code (the run's first line, the fork server's
    preload) shows in the candidate's side only, and each run.json says where its code came from."""
    copy = _copy_checkout(tmp_path / "copy")
    run_py = copy / "harness" / "cli" / "run.py"
    run_py.write_text(run_py.read_text().replace('"attnbench: suite "', '"attnbench (the copy): suite "'))
    mark = tmp_path / "preloaded"
    with open(copy / "harness" / "engine" / "preload.py", "a") as f:  # where each fork server's preload came from
        f.write('\nimport os\n\nwith open(os.environ["AB_TEST_MARK"], "a") as f:\n    f.write(__file__ + "\\n")\n')
    out = tmp_path / "ab"
    r = _ab("--baseline", str(ROOT), *FLAGS, "--passes", "1", "--out", str(out), cwd=copy, AB_TEST_MARK=str(mark))
    assert r.returncode == 0, r.stderr + r.stdout
    first = r.stdout.splitlines()[0]
    assert (
        f"baseline {ROOT} (commit {_head(ROOT)[:12]}" in first
        and f"candidate {copy} (commit {_head(copy)[:12]}, dirty)" in first  # edited since
    )
    assert "attnbench (the copy): suite" in (out / "candidate.log").read_text()
    assert "attnbench (the copy): suite" not in (out / "baseline.log").read_text()
    preloaded = mark.read_text().splitlines()
    assert preloaded and all(p.endswith("/candidate/attnbench/engine/preload.py") for p in preloaded)
    for side, checkout in (("baseline", ROOT), ("candidate", copy)):
        imported = (load_run(out / side).run.interleaved or {})["imported"]
        assert imported == {
            "attnbench": str(checkout / "harness"),
            "attnbench.workloads": str(checkout / "workloads"),
            "attnbench.backends": str(checkout / "backends"),
        }
    # A side whose record names another checkout's code fails the check after the run, loudly.
    record = json.loads((out / "candidate" / "run.json").read_text())
    record["interleaved"]["imported"]["attnbench.workloads"] = str(ROOT / "workloads")
    (out / "candidate" / "run.json").write_text(json.dumps(record))
    commands = {side: CheckoutCommand("attnbench", tmp_path) for side in ab.SIDES}
    with pytest.raises(UserError, match=r"the candidate's bench run imported attnbench\.workloads from"):
        ab._check_sides_ran_their_own(out, {"baseline": ROOT, "candidate": copy}, commands)


def test_the_candidate_is_the_checkout_holding_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop_before_sides: dict
) -> None:
    copy = _copy_checkout(tmp_path / "copy")
    monkeypatch.chdir(copy / "workloads")  # anywhere inside it
    assert main(["ab", "--baseline", str(ROOT), "--out", str(tmp_path / "ab"), "--variants", "full.sdpa"]) == 0
    assert stop_before_sides["checkouts"] == {"baseline": ROOT.resolve(), "candidate": copy}
    # Each side's Python was asked where its code would come from: its own checkout, not the installed one.
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"bench ab: baseline {ROOT} (commit {_head(ROOT)[:12]}")
    assert f"candidate {copy} (commit {_head(copy)[:12]})," in line and "same" not in line


def test_outside_any_checkout_the_candidate_is_the_imported_code_and_the_line_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop_before_sides: dict
) -> None:
    copy = _copy_checkout(tmp_path / "copy")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["ab", "--baseline", str(copy), "--out", str(tmp_path / "ab"), "--variants", "full.sdpa"]) == 0
    assert stop_before_sides["checkouts"] == {"baseline": copy, "candidate": ab.ROOT}
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert f"candidate {ab.ROOT} (" in line
    assert f"; the current folder {tmp_path / 'elsewhere'} is in no checkout: the imported code's)" in line


def test_allow_same_times_a_checkout_against_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop_before_sides: dict
) -> None:
    copy = _copy_checkout(tmp_path / "copy")
    monkeypatch.chdir(copy)
    argv = ["ab", "--baseline", str(copy), "--out", str(tmp_path / "ab"), "--variants", "full.sdpa"]
    assert main(argv) == 2 and not stop_before_sides
    (refusal,) = capsys.readouterr().err.strip().splitlines()
    assert f"the same checkout, {copy}" in refusal and "--allow-same" in refusal
    assert main([*argv, "--allow-same"]) == 0
    assert stop_before_sides["checkouts"] == {"baseline": copy, "candidate": copy}
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert f"baseline {copy} (commit {_head(copy)[:12]}) and candidate {copy} (commit {_head(copy)[:12]})" in line
    assert ": the same checkout (--allow-same: an A/A test)" in line


def test_two_folders_at_one_commit_are_compared_and_the_line_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop_before_sides: dict
) -> None:
    copy = _copy_checkout(tmp_path / "copy")
    subprocess.run(["git", "clone", "-q", str(copy), str(tmp_path / "clone")], check=True, timeout=60)
    clone = (tmp_path / "clone").resolve()
    monkeypatch.chdir(clone)
    assert main(["ab", "--baseline", str(copy), "--out", str(tmp_path / "ab"), "--variants", "full.sdpa"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.endswith(
        f": the same commit, both clean, taking turns → {tmp_path / 'ab'} (logs: baseline.log, candidate.log)"
    )
    (clone / "workloads" / "new.py").write_text("")  # untracked: a change all the same
    assert main(["ab", "--baseline", str(copy), "--out", str(tmp_path / "ab2"), "--variants", "full.sdpa"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert f"candidate {clone} (commit {_head(copy)[:12]}, dirty): the same commit, taking turns" in line


def test_a_side_that_would_import_another_checkouts_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stop_before_sides: dict
) -> None:
    """Its own PYTHONPATH, given with --candidate-env, takes the side's import root away: the
    candidate would import whatever attnbench this Python has installed, not the copy's."""
    copy = _copy_checkout(tmp_path / "copy")
    monkeypatch.chdir(copy)
    argv = ["ab", "--baseline", str(ROOT), "--candidate-env", f"PYTHONPATH={tmp_path}", "--out", str(tmp_path / "ab")]
    assert main(argv) == 2 and not stop_before_sides
    (refusal,) = capsys.readouterr().err.strip().splitlines()
    assert "the candidate's bench run would import attnbench from " in refusal
    assert f"not from its checkout {copy} ({copy / 'harness'})" in refusal
    assert not (tmp_path / "ab").exists()  # refused before anything was made
