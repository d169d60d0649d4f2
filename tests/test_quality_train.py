"""bench quality: training a small model in a worker, its record, determinism and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.quality_record import QualityJob, QualityRecord, load_quality
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.base import Outcome
from attnbench.engine.quality import train
from attnbench.engine.quality.runner import record_of

BENCH = [sys.executable, "-m", "attnbench"]


def job(variant: str = "full.sdpa", task: str = "retrieval", seed: int = 0, n: int = 32, **extra) -> QualityJob:
    params = {"full.sdpa": (("causal", False),), "hierarchical.han": (("encoder", "attention"), ("sentence", 8))}
    case = Case(variant, params[variant], "layer", "cpu", "float32", "train", 8, 2, 16, n, threads=1)
    task_params = {"retrieval": (("num_distractors", 2),), "mqar": (("num_kv_pairs", 2), ("num_queries", 2))}
    fields = {"layers": 1, "seed": seed, "steps": 6, "lr": 3e-3, "eval_examples": 16, **extra}
    return QualityJob(task=task, task_params=task_params[task], case=case, **fields)


def test_same_seed_same_model_and_accuracy_another_seed_differs() -> None:
    torch.set_num_threads(1)
    a = train.quality_phase(job(seed=3), RunSettings())
    b = train.quality_phase(job(seed=3), RunSettings())
    c = train.quality_phase(job(seed=4), RunSettings())
    assert a["status"] == b["status"] == "ok"
    assert a["loss_curve"] == b["loss_curve"] and a["accuracy"] == b["accuracy"]
    assert a["by_distance"] == b["by_distance"]
    assert c["loss_curve"] != a["loss_curve"]
    # The figures a record needs: held-out answers, chance, the binomial test, steady-state steps.
    assert a["asked"] == 16 and a["chance"] == pytest.approx(1 / 32)
    assert a["steps_done"] == 6 and a["step_time_s"]["n"] == 5 and a["first_step_s"] > 0
    assert sum(b_["asked"] for b_ in a["by_distance"]) == a["asked"]
    assert 0 <= a["learned_p"] <= 1 and a["learned"] == (a["learned_p"] < train.LEARNED_P)


def test_a_non_finite_loss_is_recorded_as_diverged_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = train._loss
    calls = {"n": 0}

    def loss_turning_nan(*args):
        calls["n"] += 1
        value = real(*args)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(train, "_loss", loss_turning_nan)
    out = train.quality_phase(job(), RunSettings())
    assert out["status"] == "diverged" and out["diverged_at"] == 2 and out["steps_done"] == 3
    assert "step 2" in out["reason"] and out.get("accuracy") is None
    record = record_of(job(), Outcome("ok", None, out, worker={"pid": 1}), Path("/nonexistent"))
    assert record.status == "diverged" and record.reason == out["reason"] and record.loss_final is None


def test_one_vector_designs_refuse_tasks_asking_several_questions() -> None:
    from attnbench.core.errors import Unsupported

    with pytest.raises(Unsupported, match="one vector"):
        train.quality_phase(job("hierarchical.han", "mqar"), RunSettings())
    out = train.quality_phase(job("hierarchical.han", "retrieval"), RunSettings())  # one question per sequence
    assert out["status"] == "ok" and out["asked"] == 16


def test_maps_are_the_definitions_probabilities_per_layer_and_head() -> None:
    out = train.quality_phase(job(maps=True), RunSettings())
    maps = out["maps_data"]
    assert out["maps_reason"] is None and maps["pool"] == 1 and len(maps["layers"]) == 1
    heads = maps["layers"][0]["heads"]
    assert len(heads) == 2 and len(heads[0]) == 32
    for row in heads[1]:
        assert math.isclose(sum(row), 1.0, abs_tol=1e-3)  # softmax rows (rounded to 5 digits)
    assert maps["asked_positions"] == [31]


def test_binomial_tail_is_the_exact_sum() -> None:
    n, p = 20, 0.1
    for k in (0, 1, 5, 20):
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert train.binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9)


def test_bench_quality_writes_records_and_reads_them_back(tmp_path: Path) -> None:
    out = tmp_path / "q"
    args = [
        "quality", "--tasks", "retrieval,mqar", "--variants", "full.sdpa,hierarchical.han", "--seq-lens", "32",
        "--steps", "4", "--seeds", "1", "--model-dim", "32", "--heads", "2", "--batch", "4", "--layers", "1",
        "--eval-examples", "8", "--task-param", "retrieval.num_distractors=2", "--task-param", "mqar.num_kv_pairs=2",
        "--task-param", "mqar.num_queries=2", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = load_quality(out)
    assert [(r.task, r.variant, r.seed) for r in records] == [
        ("retrieval", "full.sdpa", 0),
        ("retrieval", "hierarchical.han", 0),
        ("mqar", "full.sdpa", 0),
        ("mqar", "hierarchical.han", 0),
    ]
    statuses = [r.status for r in records]
    assert statuses == ["ok"] * 3 + ["unsupported"]  # HAN answers one question per sequence
    assert "one vector" in records[-1].reason
    for r in records[:3]:
        assert r.peak_memory_bytes and r.peak_memory_bytes > 0 and r.memory_method
        assert r.step_time_s["n"] == 3 and r.model == {"layers": 1, "model_dim": 32, "heads": 2}
        assert r.config_id == r.job_id.rsplit("-s", 1)[0]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["settings"]["quality"]["seeds"] == 1
    # Each line is a valid record on its own (the format's one owner reads it back).
    line = (out / "quality.jsonl").read_text().splitlines()[0]
    assert QualityRecord.from_json(json.loads(line), "x").to_json() == json.loads(line)
    assert "retrieval: accuracy and cost" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quality", "--tasks", "sudoku"], "unknown task 'sudoku'"),
        (["quality", "--steps", "0"], "--steps must be from 1"),
        (["quality", "--suite", "default"], "has no [quality] table"),
        (["run", "--suite", "quality-smoke"], "is a quality suite"),
        (["quality", "--task-param", "retrieval.colour=3"], "retrieval has no parameter 'colour'"),
        (["quality", "--task-param", "retrieval.distance=500", "--seq-lens", "64"], "task retrieval at n=64"),
        (["quality", "--model-dim", "30", "--heads", "4"], "not a multiple of heads"),
        (["quality", "--scope", "core"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attnbench.cli.main import main

    try:
        code = main([*args, "--out", str(tmp_path / "x")])
    except SystemExit as exc:  # argparse's own errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


@pytest.mark.slow  # the built-in smoke suite end to end (about 2 minutes here): CI runs it (-m slow)
def test_the_quality_smoke_suite_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [*BENCH, "quality", "--suite", "quality-smoke", "--out", str(tmp_path / "q")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 3), done.stderr  # 3: a job failed, which its record says
    records = load_quality(tmp_path / "q")
    assert len(records) == 12 and all(r.status == "ok" for r in records)


def test_quality_schema_lists_every_field_in_order_and_validates_records() -> None:
    from dataclasses import fields as dc_fields

    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parent.parent / "docs/schema/attnbench.quality-1.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert list(schema["properties"]) == [f.name for f in dc_fields(QualityRecord) if f.name != "unknown"]
    out = train.quality_phase(job(), RunSettings())
    record = record_of(job(), Outcome("ok", None, out, worker={"pid": 1}), Path("/nonexistent"))
    Draft202012Validator(schema).validate(json.loads(json.dumps(record.to_json())))


def test_designs_that_attend_without_a_variant_module_say_why_they_have_no_maps() -> None:
    # ACT's gather path attends from the running tokens with scaled_dot_product_attention itself:
    # the record says so instead of failing the job (as the first quality run here did).
    act = Case(
        "adaptive.act",
        (("attention", "full.sdpa"), ("execution", "gather"), ("halting", "frozen"), ("max_steps", 3),
         ("seed", 0), ("target_steps", 2.0)),
        "layer", "cpu", "float32", "train", 8, 2, 16, 32, threads=1,
    )  # fmt: skip
    quality_job = QualityJob(
        task="retrieval", task_params=(("num_distractors", 2),), case=act, layers=1, seed=0, steps=3, lr=3e-3,
        eval_examples=8, maps=True,
    )  # fmt: skip
    out = train.quality_phase(quality_job, RunSettings())
    assert out["status"] == "ok" and out["maps_data"] is None
    assert "without calling a variant module" in out["maps_reason"]
