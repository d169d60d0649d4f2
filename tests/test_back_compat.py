"""Results written by attnbench 0.1.0 (tests/fixtures/v0.1.0, frozen: see its README) load,
keep their case_ids, and compare as they did then, from run folders and from the history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from attnbench.analysis.history import History
from attnbench.cli.main import main
from attnbench.core.cases import Case, Sweep
from attnbench.core.results import load_run
from attnbench.engine.expand import expand

V010 = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"


@pytest.mark.parametrize(
    ("folder", "status", "cases"),
    [("smoke", "complete", 20), ("interrupted", "interrupted", 4), ("resumed", "complete", 20)],
)
def test_every_folder_loads(folder: str, status: str, cases: int) -> None:
    result = load_run(V010 / folder)
    assert result.run.status == status and len(result.cases) == cases
    assert result.run.settings is not None and result.run.sweep is not None
    assert all(c.status == "ok" and c.time_s is not None and c.time_s.n == len(c.samples) for c in result.cases)


@pytest.mark.parametrize("folder", ["smoke", "interrupted", "resumed"])
def test_every_case_id_is_recomputed_from_its_record(folder: str) -> None:
    for rec in load_run(V010 / folder).cases:
        params = tuple(sorted(rec.params.items()))
        case = Case(
            rec.variant, params, rec.scope, rec.backend, rec.dtype, rec.mode,
            rec.batch, rec.heads, rec.head_dim, rec.seq_len, rec.threads, rec.transform,
        )  # fmt: skip
        assert case.case_id == rec.case_id == rec.case().case_id


# The variants whose definition changed for the fixture's (default) parameters since 0.1.0, so
# their case_ids changed with it (CHANGELOG 0.2.0): the old numbers measured something else.
REDEFINED = {"sparse.lsh"}


def test_expanding_the_same_sweep_today_keeps_every_unchanged_case_id() -> None:
    # Parameters added since (at their neutral value) and new Case fields must not move the id
    # of a case whose definition is unchanged; a redefined variant must get new ids.
    run = load_run(V010 / "smoke")
    assert run.run.sweep is not None
    today = {c.case_id: c for c in expand(Sweep.from_json(run.run.sweep))}
    for rec in run.cases:
        if rec.variant in REDEFINED:
            assert rec.case_id not in today, rec.case_id
        else:
            assert rec.case_id in today, f"{rec.variant} n={rec.seq_len}: case_id moved"
    # Since 0.2.0 the baseline also runs in the scope of variants that have only a layer form.
    added = [c for c in today.values() if c.case_id not in {r.case_id for r in run.cases}]
    assert {(c.variant, c.scope) for c in added if c.variant not in REDEFINED} == {("full.sdpa", "layer")}
    assert len(today) == len(run.cases) + sum(c.variant == "full.sdpa" for c in added)


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {c["case_id"]: c["verdict"] for c in report["cases"]}


def bench_json(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()) if out.suffix == ".json" else json.loads(captured.out)


def test_folders_compare_as_they_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare.json"
    args = ["compare", str(V010 / "smoke"), str(V010 / "resumed"), "--noise-runs", "0", "--json", str(out)]
    now, then = bench_json(args, out, capsys), json.loads((V010 / "compare-smoke-resumed.json").read_text())
    assert verdicts(now) == verdicts(then) and len(verdicts(now)) == 20
    assert now["summary"] == then["summary"]
    assert [c["time"] for c in now["cases"]] == [c["time"] for c in then["cases"]]


def test_history_opens_lists_and_compares_as_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "history.sqlite"  # a copy: opening it switches on WAL, and the fixture stays frozen
    shutil.copyfile(V010 / "history.sqlite", db)
    listed = bench_json(["history", "list", "--json", "--history", str(db)], tmp_path / "stdout", capsys)
    then_listed = json.loads((V010 / "history-list.json").read_text())
    # Every key 0.1.0 listed, as it listed it; the branch and commit time it did not record are unknown.
    assert [{k: run[k] for k in then_listed[0]} for run in listed] == then_listed
    assert {(run["branch"], run["commit_time"]) for run in listed} == {(None, None)}

    out = tmp_path / "compare.json"
    args = ["compare", "latest~1", "latest", "--noise-runs", "0", "--json", str(out), "--history", str(db)]
    now, then = bench_json(args, out, capsys), json.loads((V010 / "compare-history.json").read_text())
    assert verdicts(now) == verdicts(then) and len(verdicts(now)) == 20
    assert now["summary"] == then["summary"]
    assert (now["baseline"]["run_id"], now["current"]["run_id"]) == (
        then["baseline"]["run_id"],
        then["current"]["run_id"],
    )

    with History.open(db, create=False) as h:  # the stored records read back as the folders' do
        stored = h.load(then["current"]["run_id"])
    folder = load_run(V010 / "resumed")
    assert stored.run == folder.run
    assert stored.cases == folder.cases
