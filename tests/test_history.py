"""The SQLite history: ingest, references, round trips, concurrent writers, and `bench run` recording."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import subprocess
from pathlib import Path

import pytest

from attnbench.analysis.history import History, history_path, ingest_paths
from attnbench.core.errors import UserError
from attnbench.core.results import load_run
from tests.conftest import BENCH, cli_env
from tests.synthetic_runs import Case, noisy, write_run


def _runs(root: Path, count: int, prefix: str = "run", cases: int = 3) -> list[Path]:
    return [
        write_run(
            root / f"{prefix}-{i}",
            f"{prefix}-{i}",
            [Case(f"case-{j}", noisy(0.01, 8, 0.02, seed=i * 100 + j)) for j in range(cases)],
            started_at=f"2026-11-{i + 1:02d}T00:00:00+00:00",
        )
        for i in range(count)
    ]


def test_history_path_flag_env_default_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_HISTORY", "/tmp/from-env.sqlite")
    assert history_path("/x/h.sqlite") == Path("/x/h.sqlite")
    assert history_path(None) == Path("/tmp/from-env.sqlite")
    monkeypatch.setenv("ATTNBENCH_HISTORY", "off")
    assert history_path(None) is None
    monkeypatch.delenv("ATTNBENCH_HISTORY")
    assert history_path(None) == Path("results/history.sqlite")


def test_ingest_resolve_and_read_back_equal_the_folder(tmp_path: Path) -> None:
    folders = _runs(tmp_path / "runs", 3)
    with History.open(tmp_path / "h.sqlite") as h:
        report = ingest_paths(h, [tmp_path / "runs"])
        assert sorted(report.added) == ["run-0", "run-1", "run-2"] and not report.skipped
        assert h.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert h.resolve("latest") == "run-2"
        assert h.resolve("latest~2") == "run-0"
        assert h.resolve("run-1") == "run-1"
        with pytest.raises(UserError, match="matches 3 runs"):
            h.resolve("run-")
        with pytest.raises(UserError, match="needs 4 complete run"):
            h.resolve("latest~3")
        back = h.load("run-1")
        original = load_run(folders[1])
        assert back.run == original.run
        assert back.cases == original.cases
        # Ingesting again replaces, never duplicates.
        again = ingest_paths(h, [folders[1]])
        assert again.replaced == ["run-1"] and not again.added
        assert h.conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0] == 9
        assert [r.run_id for r in h.runs()] == ["run-2", "run-1", "run-0"]
        assert all(r.ok == r.cases == 3 for r in h.runs())


def test_incomplete_runs_and_junk_are_skipped_with_a_reason(tmp_path: Path) -> None:
    write_run(tmp_path / "in" / "half", "half", [Case("a", [0.01] * 6)], status="interrupted")
    (tmp_path / "in" / "junk.json").write_text('{"not": "a benchmark file"}')
    with History.open(tmp_path / "h.sqlite") as h:
        report = ingest_paths(h, [tmp_path / "in" / "half", tmp_path / "in" / "junk.json"])
        assert not report.added
        reasons = dict(report.skipped)
        assert "interrupted" in reasons[str(tmp_path / "in" / "half")]
        assert "not a pytest-benchmark JSON" in reasons[str(tmp_path / "in" / "junk.json")]
        report = ingest_paths(h, [tmp_path / "in" / "half"], include_incomplete=True)
        assert report.added == ["half"]
        with pytest.raises(UserError, match="needs 1 complete run"):
            h.resolve("latest")  # an interrupted run is never a baseline


def _ingest_worker(db: str, folders: list[str]) -> None:
    with History.open(Path(db)) as h:
        for f in folders:
            h.ingest(load_run(f))


def test_several_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    """Six real processes, each adding five runs to one fresh file at the same time."""
    folders = _runs(tmp_path / "runs", 30, cases=20)
    db = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ingest_worker, args=(db, [str(f) for f in folders[i::6]])) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 30
    assert conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0] == 30 * 20
    conn.close()


def test_history_commands_list_show_plot_export(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite"
    _runs(tmp_path / "runs", 3)
    env = cli_env(ATTNBENCH_HISTORY=str(db))

    def bench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=120, env=env)

    r = bench("history", "ingest", str(tmp_path / "runs"))
    assert r.returncode == 0 and "3 run(s) added" in r.stdout
    r = bench("history", "list")
    assert r.returncode == 0 and "latest~2" in r.stdout and "run-0" in r.stdout
    plot = tmp_path / "trend.png"
    r = bench("history", "show", "--case", "case-1", "--plot", str(plot))
    assert r.returncode == 0, r.stderr
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert r.stdout.count("case-1") >= 3
    r = bench("history", "show", "--variant", "full.sdpa", "--metric", "memory", "--no-plot")
    assert r.returncode == 0 and "MiB" in r.stdout
    r = bench("history", "show", "--variant", "nope.none")
    assert r.returncode == 2 and "no measured time" in r.stderr
    r = bench("history", "export", "latest~1", str(tmp_path / "pinned"))
    assert r.returncode == 0, r.stderr
    pinned, original = load_run(tmp_path / "pinned"), load_run(tmp_path / "runs" / "run-1")
    assert pinned.run == original.run and pinned.cases == original.cases
    r = bench("history", "list", "--history", str(tmp_path / "absent.sqlite"))
    assert r.returncode == 2 and "no history at" in r.stderr


@pytest.mark.slow  # a `bench run` recorded in the history: about 11 s; CI runs it (-m slow)
def test_bench_run_records_the_run_with_its_workload_hash(tmp_path: Path) -> None:
    """A real (tiny) run lands in the history; a history that cannot be written only warns."""
    db = tmp_path / "h.sqlite"
    args = ["run", "--variants", "full.sdpa", "--backends", "cpu", "--seq-lens", "32", "--heads", "1"]
    args += ["--head-dim", "8", "--max-time-per-case", "0.05", "--threads", "1"]
    r = subprocess.run(
        [*BENCH, *args, "--out", str(tmp_path / "r1")],
        capture_output=True,
        text=True,
        timeout=240,
        env=cli_env(ATTNBENCH_HISTORY=str(db)),
    )
    assert r.returncode == 0, r.stderr
    assert "history: recorded in" in r.stdout
    with History.open(db, create=False) as h:
        run = h.load(h.resolve("latest"))
    (rec,) = run.cases
    assert rec.workload_hash is not None and len(rec.workload_hash) == 16
    line = json.loads((tmp_path / "r1" / "cases.jsonl").read_text())
    assert line["workload_hash"] == rec.workload_hash
    assert line == rec.to_json()  # the history keeps the record as cases.jsonl has it
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    r = subprocess.run(
        [*BENCH, *args, "--out", str(tmp_path / "r2"), "--history", str(blocker / "h.sqlite")],
        capture_output=True,
        text=True,
        timeout=240,
        env=cli_env(),
    )
    assert r.returncode == 0, r.stderr
    assert "was not added to the history" in r.stdout and "bench history ingest" in r.stdout
    assert load_run(tmp_path / "r2").run.status == "complete"


def test_workload_hash_follows_source_and_parameters() -> None:
    from attnbench.core.registry import get_workload
    from attnbench.engine.identity import workload_hash

    chunked = get_workload("full.chunked")
    a = workload_hash(chunked, {"chunk": 256, "causal": True})
    assert a == workload_hash(chunked, {"causal": True, "chunk": 256})  # order does not matter
    assert a != workload_hash(chunked, {"chunk": 512, "causal": True})
    assert a != workload_hash(get_workload("full.naive"), {"chunk": 256, "causal": True})
