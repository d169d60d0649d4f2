"""History that knows its branches: git branch and commit time in run.json, `latest~N` per
branch, migrating a history written before, and `bench history bisect`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from attnbench.analysis.history import SCHEMA_VERSION, History, branch_filter, ingest_paths
from attnbench.cli.main import main
from attnbench.core.environment import git_branch, git_info
from attnbench.core.errors import UserError
from attnbench.core.results import load_run
from tests.synthetic_runs import Case, noisy, write_run

CI_VARIABLES = ("GITHUB_REF_NAME", "GITHUB_REF_TYPE", "GITHUB_SHA", "CI_COMMIT_BRANCH", "CI_COMMIT_SHA")
CASE = "full.sdpa-cpu-n512-0123456789"
OTHER_CASE = "full.sdpa-cpu-n1024-abcdef0123"

# The runs table as schema 1 (attnbench 0.1.0) created it; the cases table is unchanged since.
OLD_RUNS_TABLE = """
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    suite       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,
    hostname    TEXT,
    cpu         TEXT,
    git_commit  TEXT,
    git_dirty   INTEGER,
    origin      TEXT NOT NULL,
    source      TEXT,
    ingested_at TEXT NOT NULL,
    run_json    TEXT NOT NULL
)
"""


@pytest.fixture(autouse=True)
def no_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run in CI too: its branch variables must not leak into the checkouts made here."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _git(run_id: str, branch: str | None, hour: int | None) -> dict[str, Any]:
    return {
        "commit": f"{run_id}-commit".ljust(40, "0"),
        "dirty": False,
        "branch": branch,
        "commit_time": None if hour is None else f"2026-11-01T{hour:02d}:00:00+00:00",
    }


def _run(
    root: Path,
    run_id: str,
    branch: str | None,
    hour: int | None,
    day: int,
    median: float = 0.010,
    memory: int = 10 * 2**20,
    seed: int = 0,
    workload_hash: str = "h0",
) -> Path:
    """One synthetic run of two cases: CASE at `median` seconds and `memory` bytes, OTHER_CASE steady."""
    cases = [
        Case(CASE, noisy(median, 30, 0.02, seed=seed), peak_memory_bytes=memory, workload_hash=workload_hash),
        Case(OTHER_CASE, noisy(0.02, 30, 0.02, seed=seed + 1000)),
    ]
    started = f"2026-11-{day:02d}T00:00:00+00:00"
    return write_run(root / run_id, run_id, cases, started_at=started, run_extra={"git": _git(run_id, branch, hour)})


def _history(tmp_path: Path, folders: list[Path]) -> Path:
    db = tmp_path / "h.sqlite"
    with History.open(db) as h:
        report = ingest_paths(h, folders)
    assert not report.skipped
    return db


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- run.json's git


def test_git_info_records_the_branch_and_the_commit_time_in_utc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_COMMITTER_DATE": "2026-11-01T12:30:00+02:00",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    subprocess.run(["git", "init", "-q", "-b", "topic", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    info = git_info(repo)
    assert (info["branch"], info["commit_time"], info["dirty"]) == ("topic", "2026-11-01T10:30:00+00:00", False)

    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--detach"], check=True)
    assert git_info(repo)["branch"] is None  # detached, and no CI names a branch
    monkeypatch.setenv("GITHUB_REF_NAME", "42/merge")
    monkeypatch.setenv("GITHUB_SHA", info["commit"])
    assert git_branch(repo) == "42/merge"  # the CI's commit is the one checked out
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)
    assert git_branch(repo) is None  # another commit of the same job (bench ab's baseline): not on it
    monkeypatch.delenv("GITHUB_REF_NAME")
    monkeypatch.setenv("CI_COMMIT_BRANCH", "gitlab-branch")
    assert git_branch(repo) == "gitlab-branch"

    outside = git_info(tmp_path)
    assert (outside["commit"], outside["branch"], outside["commit_time"]) == (None, None, None)


# ----------------------------------------------------------------------------- latest~N per branch


def test_latest_counts_one_branch_and_unknown_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    folders = [
        _run(runs, "legacy", None, None, day=1),  # recorded before branches were kept
        _run(runs, "main-0", "main", 1, day=2),
        _run(runs, "pr-0", "feature", 2, day=3),
        _run(runs, "main-1", "main", 3, day=4),
        _run(runs, "pr-1", "feature", 4, day=5),
    ]
    db = _history(tmp_path, folders)
    with History.open(db, create=False) as h:
        assert h.resolve("latest") == "pr-1"  # every branch: by start time, as before
        assert h.resolve("latest~1", branch="main") == "main-0"  # never the pull request's run
        assert h.resolve("latest", branch="main") == "main-1"
        assert h.resolve("latest~2", branch="main") == "legacy"
        assert h.resolve("latest~1", branch="feature") == "pr-0"
        with pytest.raises(UserError) as err:
            h.resolve("latest~3", branch="main")
        message = str(err.value)
        assert "needs 4 complete run(s) on branch 'main'" in message and "which holds 3" in message
        assert "2 more on other branches: --branch any" in message and "\n" not in message
        assert [r.branch for r in h.runs(branch="feature")] == ["feature", "feature", None]

    code, out, err = bench(capsys, "compare", "latest~1", "latest", "--branch", "main", "--history", str(db))
    assert code == 0, err
    code, out, err = bench(
        capsys,
        "compare",
        "latest~1",
        "latest",
        "--branch",
        "main",
        "--noise-runs",
        "0",
        "--json",
        "-",
        "--history",
        str(db),
    )
    assert code == 0, err
    data = json.loads(out)
    assert (data["baseline"]["run_id"], data["current"]["run_id"]) == ("main-0", "main-1")
    code, out, err = bench(capsys, "compare", "latest~5", "latest", "--branch", "main", "--history", str(db))
    assert code == 2 and "on branch 'main'" in err and len(err.strip().splitlines()) == 1

    code, out, _ = bench(capsys, "history", "list", "--branch", "feature", "--json", "--history", str(db))
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == ["pr-1", "pr-0", "legacy"]
    code, out, _ = bench(capsys, "history", "list", "--branch", "any", "--json", "--history", str(db))
    assert [r["run_id"] for r in json.loads(out)] == ["pr-1", "main-1", "pr-0", "main-0", "legacy"]
    assert json.loads(out)[0]["commit_time"] == "2026-11-01T04:00:00+00:00"
    code, out, _ = bench(capsys, "history", "list", "--branch", "main", "--history", str(db))
    assert code == 0 and "latest~2" in out and "pr-" not in out.split("runs of branch")[0]
    # No --branch: the branch of the checkout attnbench runs from (every run where it has none).
    here = git_branch()
    code, out, _ = bench(capsys, "history", "list", "--json", "--history", str(db))
    with History.open(db, create=False) as h:
        assert {r["run_id"] for r in json.loads(out)} == {r.run_id for r in h.runs(branch=branch_filter(None))}
    assert branch_filter(None) == here and branch_filter("any") is None and branch_filter("main") == "main"

    exported = tmp_path / "exported"
    code, _, err = bench(
        capsys, "history", "export", "latest~1", str(exported), "--branch", "feature", "--history", str(db)
    )
    assert code == 0, err
    assert load_run(exported).run.run_id == "pr-0"


# ----------------------------------------------------------------------------- migrating schema 1


def test_a_history_written_before_branches_opens_and_migrates(tmp_path: Path) -> None:
    """A schema-1 file, made with 0.1.0's CREATE TABLE: the columns are added, filled from the
    stored run.json where it holds them, and the runs read back as before."""
    runs = tmp_path / "runs"
    old, new = _run(runs, "old", None, None, day=1), _run(runs, "new", "main", 5, day=2)
    db = tmp_path / "old.sqlite"
    with History.open(tmp_path / "scratch.sqlite") as scratch:  # the case rows, as the current code makes them
        ingest_paths(scratch, [old, new])
        case_rows = scratch.conn.execute("SELECT * FROM cases").fetchall()
    conn = sqlite3.connect(db)
    conn.execute(OLD_RUNS_TABLE)
    conn.execute(
        "CREATE TABLE cases (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, case_id TEXT NOT NULL, "
        "variant TEXT NOT NULL, backend TEXT, dtype TEXT, mode TEXT, scope TEXT, seq_len INTEGER, "
        "status TEXT NOT NULL, "
        "median_s REAL, ci95_low REAL, ci95_high REAL, n_samples INTEGER, tokens_per_s REAL, flops_per_s REAL, "
        "peak_memory_bytes INTEGER, energy_j REAL, stable INTEGER, workload_hash TEXT, record_json TEXT NOT NULL, "
        "PRIMARY KEY (run_id, case_id))"
    )
    for folder in (old, new):
        run = load_run(folder).run
        run_json = (folder / "run.json").read_text()
        row = [run.run_id, run.suite, run.started_at, run.finished_at, run.status, "vm", "cpu", run.git["commit"], 0]
        row += ["attnbench", str(folder), "2026-11-03T00:00:00+00:00", run_json]
        conn.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
    conn.executemany(f"INSERT INTO cases VALUES ({','.join('?' * 20)})", case_rows)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    for _ in range(2):  # migrating once; opening again finds nothing left to do
        with History.open(db, create=False) as h:
            assert h.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
            rows = h.conn.execute("SELECT run_id, branch, commit_time FROM runs ORDER BY run_id").fetchall()
            assert rows == [("new", "main", "2026-11-01T05:00:00+00:00"), ("old", None, None)]
            assert h.resolve("latest", branch="main") == "new" and h.resolve("latest~1", branch="main") == "old"
            assert h.load("old").cases == load_run(old).cases
            indexes = {r[1] for r in h.conn.execute("PRAGMA index_list(runs)")}
            assert "runs_by_branch" in indexes
    with History.open(db) as h:  # and it takes new runs
        assert ingest_paths(h, [_run(runs, "newer", "main", 6, day=3)]).added == ["newer"]
        assert [r.run_id for r in h.runs(branch="main")] == ["newer", "new", "old"]


# ----------------------------------------------------------------------------- bisect


def _stepped_history(tmp_path: Path) -> Path:
    """Eight runs of main, one per commit, with CASE's time up 30% from main-5 on and its memory
    up 50% from main-3 on; main-4 ran after main-5 (a rerun of an older commit), so start-time
    order would put the step elsewhere. A feature branch, slower still, runs in between."""
    runs = tmp_path / "runs"
    days = [1, 2, 3, 4, 9, 5, 6, 7]
    folders = [
        _run(
            runs,
            f"main-{i}",
            "main",
            hour=i,
            day=days[i],
            median=0.010 if i < 5 else 0.013,
            memory=(10 if i < 3 else 15) * 2**20,
            seed=i,
        )
        for i in range(8)
    ]
    folders.append(_run(runs, "pr-0", "feature", hour=2, day=8, median=0.030, seed=50))
    return _history(tmp_path, folders)


def test_bisect_finds_the_commit_of_an_injected_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _stepped_history(tmp_path)
    code, out, err = bench(capsys, "history", "bisect", "time", CASE, "--branch", "main", "--history", str(db))
    assert code == 0, err
    assert "first step: regression" in out and "8 runs on branch main" in out
    rows = [line for line in out.splitlines() if "main-" in line and "run before" not in line]
    before, after = (next(line for line in rows if f" {side} " in line) for side in ("before", "after"))
    assert "main-4" in before and "main-4-commit"[:10] in before and "2026-11-01T04:00:00" in before
    assert "main-5" in after and "main-5-commit"[:10] in after and "2026-11-01T05:00:00" in after
    assert "main" in after and "10" in before and "13" in after  # medians in ms
    assert "pr-0" not in out

    prefix = CASE[:-4]  # a unique prefix names the case
    code, out, err = bench(
        capsys, "history", "bisect", "time", prefix, "--branch", "main", "--json", "--history", str(db)
    )
    assert code == 0, err
    found = json.loads(out)
    assert found["found"] and found["case_id"] == CASE and found["verdict"] == "regression"
    assert (found["before"]["run_id"], found["after"]["run_id"]) == ("main-4", "main-5")
    assert found["before"]["ci95_low"] < found["before"]["value"] < found["before"]["ci95_high"]
    assert found["threshold"] == 0.05 and 1.25 < found["change"] < 1.35 and found["first"]["run_id"] == "main-0"

    code, out, err = bench(
        capsys, "history", "bisect", "memory", CASE, "--branch", "main", "--json", "--history", str(db)
    )
    assert code == 0, err
    found = json.loads(out)
    assert (found["before"]["run_id"], found["after"]["run_id"]) == ("main-2", "main-3")
    assert (found["before"]["value"], found["after"]["value"]) == (10 * 2**20, 15 * 2**20)


def test_bisect_without_a_step_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _stepped_history(tmp_path)
    code, out, err = bench(capsys, "history", "bisect", "time", OTHER_CASE, "--branch", "main", "--history", str(db))
    assert code == 1, err
    assert out.startswith("no step in time of " + OTHER_CASE) and len(out.strip().splitlines()) == 1
    assert "±5%" in out
    code, out, _ = bench(
        capsys, "history", "bisect", "time", OTHER_CASE, "--branch", "main", "--json", "--history", str(db)
    )
    assert code == 1 and json.loads(out)["found"] is False and json.loads(out)["after"] is None
    # A threshold above the step: none either.
    code, out, _ = bench(
        capsys, "history", "bisect", "time", CASE, "--branch", "main", "--threshold", "0.5", "--history", str(db)
    )
    assert code == 1 and "±50%" in out


def test_bisect_starts_again_where_the_case_changed_its_workload(tmp_path: Path) -> None:
    """A step that comes with other code behind the case (workload_hash) is no step of the code
    measured: the runs from there on are judged against the first of them."""
    runs = tmp_path / "runs"
    folders = [
        _run(runs, f"main-{i}", "main", hour=i, day=i + 1, median=0.010 if i < 3 else 0.013, seed=i) for i in range(3)
    ]
    folders += [
        _run(runs, f"main-{i}", "main", hour=i, day=i + 1, median=0.013, seed=i, workload_hash="h1") for i in (3, 4)
    ]
    with History.open(_history(tmp_path, folders), create=False) as h:
        found = h.bisect("time", CASE, branch="main")
    assert not found.found and found.first.run_id == "main-3" and found.runs == 5
    assert len(found.notes) == 1 and "workload_hash differs" in found.notes[0] and "main-3" in found.notes[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["time", "no-such-case"], "no case 'no-such-case' in the history"),
        (["time", "full.sdpa-cpu-n"], "matches several cases"),
        (["tokens_per_s", CASE], "bisect measures time, memory, energy"),
        (["time", CASE, "--branch", "nowhere"], "bisect needs 2 or more runs"),
        (["time", CASE, "--branch", ""], "--branch needs a branch name"),
    ],
)
def test_bisect_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    db = _history(tmp_path, [_run(tmp_path / "runs", "main-0", "main", 1, day=1)])
    code, _, err = bench(capsys, "history", "bisect", *argv, "--history", str(db))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
