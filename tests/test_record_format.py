"""The result format (attnbench.core.record): JSON Schemas, round trips, what is kept and how.

`assert_valid_run_folder` is also what the end-to-end tests in tests/test_run.py call on the
run folders they make (a complete run, an interrupted one, a resumed one).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from attnbench.core.errors import UserError
from attnbench.core.record import (
    CASE_SCHEMA,
    CASE_STATUSES,
    RUN_SCHEMA,
    RUN_STATUSES,
    CaseRecord,
    Measurement,
    RunRecord,
)
from attnbench.core.results import CASES_FILE, RUN_FILE, load_run

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "docs" / "schema"
V010 = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"
FOLDERS = ("smoke", "interrupted", "resumed")


@cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"attnbench.{name}-1.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid_run_folder(folder: Path) -> None:
    """run.json and every line of cases.jsonl: valid against the published schemas, read into
    records and written back to the same text (key order included), and the same records again."""
    text = (folder / RUN_FILE).read_text()
    data = json.loads(text)
    validator("run").validate(data)
    run = RunRecord.from_json(data)
    assert json.dumps(run.to_json(), indent=2) + "\n" == text
    assert RunRecord.from_json(run.to_json()) == run
    lines = (folder / CASES_FILE).read_text().splitlines(keepends=True) if (folder / CASES_FILE).exists() else []
    for line in lines:
        data = json.loads(line)
        validator("case").validate(data)
        rec = CaseRecord.from_json(data)
        assert json.dumps(rec.to_json()) + "\n" == line, rec.case_id
        assert CaseRecord.from_json(rec.to_json()) == rec
        assert rec.unknown == {}, rec.unknown  # everything this project writes is in the model
    assert len(load_run(folder).cases) == len(lines)


def json_fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.metadata["written"]]


def fixture_lines(folder: str) -> list[str]:
    return (V010 / folder / CASES_FILE).read_text().splitlines(keepends=True)


# ----------------------------------------------------------------------------- the schemas


@pytest.mark.parametrize(
    ("name", "cls", "version"), [("run", RunRecord, RUN_SCHEMA), ("case", CaseRecord, CASE_SCHEMA)]
)
def test_schema_lists_every_field_of_the_model_in_order(name: str, cls: type, version: str) -> None:
    schema = validator(name).schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema"] == {"const": version, "description": "The schema version of this record."}
    assert list(schema["properties"]) == json_fields(cls)
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    assert schema["required"] == ["schema", *required]
    assert all(p.get("description") for p in schema["properties"].values())
    statuses = RUN_STATUSES if cls is RunRecord else CASE_STATUSES
    assert schema["properties"]["status"]["enum"] == list(statuses)  # the model's statuses, in order


@pytest.mark.parametrize("folder", FOLDERS)
def test_frozen_run_folders_are_valid_and_written_back_byte_for_byte(folder: str) -> None:
    assert_valid_run_folder(V010 / folder)


def test_schema_refuses_what_the_project_never_writes() -> None:
    (line, *_) = fixture_lines("smoke")
    good = json.loads(line)
    case = validator("case")
    assert case.is_valid(good)
    assert not case.is_valid({**good, "status": "finished"})
    assert not case.is_valid({**good, "time_s": None})  # ok without a time
    assert not case.is_valid({**good, "status": "error", "reason": "boom"})  # failed, yet timed
    assert not case.is_valid({k: v for k, v in good.items() if k != "seq_len"})
    assert case.is_valid({**good, "from_another_tool": [1, 2]})


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_fixture_record_round_trips(folder: str) -> None:
    run_json = json.loads((V010 / folder / RUN_FILE).read_text())
    assert RunRecord.from_json(run_json).to_json() == run_json
    for line in fixture_lines(folder):
        d = json.loads(line)
        rec = CaseRecord.from_json(d)
        assert rec.to_json() == d and list(rec.to_json()) == list(d)
        assert CaseRecord.from_json(rec.to_json()) == rec


def test_keys_of_other_tools_are_kept_and_written_back_last() -> None:
    (line, *_) = fixture_lines("smoke")
    d = {**json.loads(line), "other_tool": {"score": 3}}
    rec = CaseRecord.from_json(d)
    assert rec.unknown == {"other_tool": {"score": 3}}
    assert rec.to_json() == d and list(rec.to_json())[-1] == "other_tool"
    run_json = {**json.loads((V010 / "smoke" / RUN_FILE).read_text()), "ci_job": "nightly-7"}
    run = RunRecord.from_json(run_json)
    assert run.unknown == {"ci_job": "nightly-7"} and run.to_json() == run_json


def test_a_field_added_later_defaults_and_an_old_record_stays_as_it_was() -> None:
    # 0.1.0 wrote no pattern: the record says so, and is written back without one.
    rec = CaseRecord.from_json(json.loads(fixture_lines("smoke")[0]))
    assert rec.pattern is None and not rec.recorded("pattern") and rec.recorded("time_s")
    assert "pattern" not in rec.to_json()
    # Older still: no workload_hash, scope, threads or transform (the identity's defaults).
    d = json.loads(fixture_lines("smoke")[0])
    for key in ("workload_hash", "scope", "threads", "transform", "derived_params", "energy_per_token_j"):
        del d[key]
    old = CaseRecord.from_json(d)
    assert (old.workload_hash, old.scope, old.threads, old.transform, old.derived_params) == (
        None,
        "core",
        None,
        "none",
        [],
    )
    assert not old.recorded("workload_hash") and old.to_json() == d
    # A value set on such a field is written (e.g. the resume list of an old run.json).
    run_json = json.loads((V010 / "smoke" / RUN_FILE).read_text())
    del run_json["resumed_at"]
    run = RunRecord.from_json(run_json)
    assert run.resumed_at == [] and "resumed_at" not in run.to_json()
    assert replace(run, resumed_at=["bench run --resume x"]).to_json()["resumed_at"] == ["bench run --resume x"]


def test_new_records_have_every_key_of_their_status_in_the_old_order() -> None:
    from attnbench.core.cases import Case
    from attnbench.engine.executors.base import Outcome
    from attnbench.engine.runner import finish_record, refused_record

    old_ok = json.loads(fixture_lines("smoke")[-1])  # sparse.sliding_window: no analytic_flops
    run = load_run(V010 / "smoke")
    stored = CaseRecord.from_json(old_ok)
    case = stored.case()
    m = Measurement(
        device=run.run.devices[0],
        transform=stored.transform,
        pattern={"n": stored.seq_len},
        **{
            f.name: getattr(stored, f.name)
            for f in fields(Measurement)
            if f.name not in ("device", "transform", "pattern")
        },
    )
    rebuilt = finish_record(stored.run_id, case, Outcome("ok", None, m, worker=stored.worker or {}))
    rebuilt = replace(rebuilt, node=stored.node, wall_s=stored.wall_s, finished_at=stored.finished_at)
    new = rebuilt.to_json()
    before_node = list(old_ok)[: list(old_ok).index("node")]
    assert list(new) == [
        *before_node, "pattern", "revision", "neutral_params", "definition_hash", "implementation_hash",
        "impl", "node", "wall_s", "finished_at",
    ]  # fmt: skip
    # The same measurement gives the same record: every figure the runner derives included,
    # except the analytic minimum bytes, which follow the kernel: the sliding window's now
    # holds one group of blocks (issue 23), and the bytes per second derived from them; and
    # the executed FLOPs, since its look-around windows are narrower (blocks of 64, issue 20).
    new_only = ("pattern", "revision", "neutral_params", "definition_hash", "implementation_hash", "impl")
    kernel_dependent = ("workload_hash", "analytic_min_bytes", "bytes_per_s", "flops_executed")
    assert {k: v for k, v in new.items() if k not in (*new_only, *kernel_dependent)} == {
        k: v for k, v in old_ok.items() if k not in kernel_dependent
    }
    validator("case").validate(new)

    refused = refused_record(
        "r", Case("full.sdpa", (("causal", False),), "core", "cpu", "float32", "forward", 1, 2, 8, 64), "skipped", "no"
    )
    keys = list(refused.to_json())
    assert keys[-1] == "wall_s" and "worker" not in keys and "node" not in keys and "time_s" in keys
    failed = finish_record("r", case, Outcome("error", "boom", traceback="Traceback ...", worker={"pid": 1}))
    assert list(failed.to_json())[-8:] == [
        "worker", "traceback", "revision", "neutral_params", "definition_hash", "implementation_hash", "impl", "node",
    ]  # fmt: skip
    for rec in (refused, failed):
        validator("case").validate(rec.to_json())
        assert CaseRecord.from_json(rec.to_json()) == rec


def test_a_pass_survives_passes_jsonl(tmp_path: Path) -> None:
    from attnbench.engine.executors.base import Outcome
    from attnbench.engine.passes import save_pass, saved_passes

    stored = CaseRecord.from_json(json.loads(fixture_lines("smoke")[0]))
    m = Measurement(
        device={"name": stored.device},
        transform=stored.transform,
        **{f.name: getattr(stored, f.name) for f in fields(Measurement) if f.name not in ("device", "transform")},
    )
    outcome = Outcome("ok", None, m, worker={"pid": 7, "wall_s": 0.5})
    save_pass(tmp_path, stored.case_id, 1, outcome, 0.6)
    ((outcomes, wall),) = saved_passes(tmp_path).values()
    assert outcomes == [outcome] and wall == 0.6


# ----------------------------------------------------------------------------- refusals


def refusal(data: Any) -> str:
    with pytest.raises(UserError) as e:
        CaseRecord.from_json(data, "cases.jsonl:3")
    return str(e.value)


def test_damaged_or_newer_records_are_refused_in_one_line() -> None:
    good = json.loads(fixture_lines("smoke")[0])
    assert "schema 'attnbench.case/2'" in refusal({**good, "schema": "attnbench.case/2"})
    assert "lacks required field(s) stable" in refusal({k: v for k, v in good.items() if k != "stable"})
    assert "time_s lacks ci95_low" in refusal(
        {**good, "time_s": {k: v for k, v in good["time_s"].items() if k != "ci95_low"}}
    )
    assert "not a result object" in refusal([good])
    assert all("\n" not in m for m in (refusal(None), refusal({**good, "time_s": 3})))
