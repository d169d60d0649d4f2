"""`bench run` end to end: result files honour the contract; failures, interrupts and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from attnbench.core.cases import Case
from attnbench.core.results import load_run
from tests.conftest import BENCH, FAULTY, cli_env
from tests.test_record_format import assert_valid_run_folder

RUN_FIELDS = {
    "schema": str,
    "run_id": str,
    "suite": str,
    "started_at": str,
    "status": str,
    "argv": list,
    "git": dict,
    "host": dict,
    "packages": dict,
    "devices": list,
}
HOST_FIELDS = ("hostname", "os", "python", "cpu", "physical_cores", "logical_cores", "memory_bytes")
CASE_FIELDS = (
    "schema run_id case_id variant family params backend device dtype mode batch heads head_dim seq_len status "
    "reason time_s compile_s tokens_per_s flops flops_per_s peak_memory_bytes memory_method energy_j "
    "energy_method energy_reason stable"
).split()
TIME_FIELDS = "median mean stdev min max iqr ci95_low ci95_high n samples".split()


def bench(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines()]


def check_run_json(run: dict, status: str) -> None:
    for key, typ in RUN_FIELDS.items():
        assert isinstance(run[key], typ), key
    assert run["schema"] == "attnbench.run/1"
    assert run["status"] == status
    assert (run["finished_at"] is None) == (status != "complete")
    for key in HOST_FIELDS:
        assert run["host"][key], key
    assert run["packages"]["torch"]
    assert set(run["git"]) >= {"commit", "dirty"}


def check_ok_case(rec: dict, run_id: str) -> None:
    for key in CASE_FIELDS:
        assert key in rec, key
    assert rec["schema"] == "attnbench.case/1" and rec["run_id"] == run_id
    assert rec["status"] == "ok" and rec["reason"] is None
    t = rec["time_s"]
    assert set(TIME_FIELDS) <= set(t)
    assert len(t["samples"]) == t["n"] >= 3
    assert t["min"] <= t["ci95_low"] <= t["median"] <= t["ci95_high"] <= t["max"]
    assert rec["tokens_per_s"] == pytest.approx(rec["batch"] * rec["seq_len"] / t["median"])
    assert rec["flops_per_s"] == pytest.approx(rec["flops"] / t["median"])
    assert rec["compile_s"] >= 0
    assert isinstance(rec["peak_memory_bytes"], int) and rec["memory_method"]
    assert rec["analytic_min_bytes"] > 0
    assert rec["energy_j"] is None and rec["energy_reason"]  # no counter on this machine
    assert isinstance(rec["stable"], bool)
    assert rec["device"] and rec["clock"] == "time.perf_counter"
    assert rec["backend_settings"]["threads"] >= 1
    params = tuple(sorted(rec["params"].items()))
    case = Case(
        rec["variant"], params, rec["scope"], rec["backend"], rec["dtype"], rec["mode"],
        rec["batch"], rec["heads"], rec["head_dim"], rec["seq_len"], rec["threads"],
        revision=rec["revision"], neutral_params=tuple(rec["neutral_params"]),
    )  # fmt: skip
    assert case.case_id == rec["case_id"]


@pytest.mark.slow  # every variant through the CLI: about 45 s on 2 cores; CI runs it (-m slow)
def test_smoke_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    proc = bench("run", "--suite", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "median ms" in proc.stdout and "worker isolation overhead" in proc.stdout
    run = json.loads((out / "run.json").read_text())
    check_run_json(run, "complete")
    records = lines(out)
    # Two lengths per variant, and full.sdpa's two again in the layer scope the layer-only
    # variants (adaptive, HAN) run in, as their baseline.
    assert len(records) == run["cases_total"] == 2 * len(run["sweep"]["variants"]) + 2
    assert sum(r["variant"] == "full.sdpa" and r["scope"] == "layer" for r in records) == 2
    assert {r["variant"] for r in records} >= {"full.naive", "full.sdpa", "full.chunked"}
    assert len({r["case_id"] for r in records}) == len(records)
    for rec in records:
        check_ok_case(rec, run["run_id"])
    assert [d["backend"] for d in run["devices"]] == ["cpu"]
    loaded = load_run(out)
    assert [c.case_id for c in loaded.cases] == [r["case_id"] for r in records]
    assert_valid_run_folder(out)


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = bench(
        "run", "--variants", "test.raises,test.torch_oom,test.hangs,full.sdpa", "--seq-lens", "64,128",
        # The timeout must stop test.hangs yet let full.sdpa finish on a busy 2-core machine: its
        # cases take about 1 s each there (warm-up, 0.1 s of samples, the memory worker).
        "--heads", "2", "--head-dim", "16", "--max-time-per-case", "0.1", "--timeout", "8", "--out", str(out),
        ATTNBENCH_PLUGINS=FAULTY,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by = {(r["variant"], r["seq_len"]): r for r in lines(out)}
    assert by["test.raises", 64]["status"] == "error"
    assert "deliberate failure" in by["test.raises", 64]["reason"]
    assert "Traceback" in by["test.raises", 64]["traceback"]
    assert by["test.torch_oom", 64]["status"] == "oom"
    # After running out of memory at 64, the longer length is not attempted.
    assert by["test.torch_oom", 128]["status"] == "skipped"
    assert "ran out of memory at n=64" in by["test.torch_oom", 128]["reason"]
    assert by["test.hangs", 64]["status"] == "timeout"
    assert by["test.hangs", 128]["status"] == "skipped"
    assert "timed out at n=64" in by["test.hangs", 128]["reason"]
    assert by["full.sdpa", 128]["status"] == "ok"
    assert all(r["status"] == "ok" or r["reason"] for r in by.values())


def test_passes_spread_a_case_over_the_run_and_merge_its_samples(tmp_path: Path) -> None:
    """--passes 2: every case is timed again in a second pass over the sweep (after the
    others' first passes), its samples merged; a case failing only in a later pass is recorded
    as failing, not passed off with its first pass's figures."""
    out = tmp_path / "run"
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    proc = bench(
        "run", "--variants", "full.sdpa,test.fails_in_later_pass", "--seq-lens", "64,96", "--heads", "2",
        "--head-dim", "16", "--max-time-per-case", "0.2", "--passes", "2", "--out", str(out),
        ATTNBENCH_PLUGINS=FAULTY, ATTNBENCH_FLAKY_DIR=str(flaky),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = lines(out)
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["passes"] == 2 and run["status"] == "complete"
    by = {(r["variant"], r["seq_len"]): r for r in records}
    assert len(records) == 4
    for n in (64, 96):
        rec = by["full.sdpa", n]
        check_ok_case(rec, run["run_id"])
        first, second = rec["passes"]
        assert (first["pass"], second["pass"]) == (1, 2)
        assert rec["time_s"]["n"] == first["n"] + second["n"] == len(rec["time_s"]["samples"])
        assert rec["time_s"]["min"] == min(first["min_s"], second["min_s"])
        assert len(rec["machine_check"]["readings_s"]) == 4 and all(v > 0 for v in rec["machine_check"]["readings_s"])
        # One list of n + 1 short reference readings per pass, around that pass's n samples.
        pairs = rec["machine_check"]["pair_readings_s"]
        assert [len(p) for p in pairs] == [first["n"] + 1, second["n"] + 1] and all(v > 0 for p in pairs for v in p)
        assert rec["verification"]["verified"] is True  # from pass 1; pass 2 only times
        assert rec["peak_memory_bytes"] is not None
        assert rec["stop_reason"].startswith("2 passes")
    assert not (out / "passes.jsonl").exists()  # working state, gone once every record is written
    failed = by["test.fails_in_later_pass", 64]
    assert failed["status"] == "error"
    assert failed["reason"].startswith("pass 2 of 2:") and "deliberate failure after the first pass" in failed["reason"]


def test_passes_are_checked(tmp_path: Path) -> None:
    proc = bench("run", "--suite", "smoke", "--passes", "0", "--out", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert "passes must be a whole number from 1 to 20, got 0" in proc.stderr


def test_case_that_cannot_fit_is_skipped_before_it_starts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = bench("run", "--variants", "full.naive", "--seq-lens", "400000", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (rec,) = lines(out)
    assert rec["status"] == "skipped"
    assert "analytic estimate" in rec["reason"] and "GiB" in rec["reason"]
    assert "worker" not in rec  # no process was started


@pytest.mark.slow  # four sleepy cases, interrupted and resumed: about 27 s; CI runs it (-m slow)
def test_interrupt_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "run", "--variants", "test.sleepy", "--param", "test.sleepy.sleep=0.3", "--seq-lens", "16,32,48,64",
        "--heads", "1", "--head-dim", "8", "--max-time-per-case", "0.1", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*BENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env(ATTNBENCH_PLUGINS=FAULTY),
        # A shell without job control starts background jobs with SIGINT ignored, and Python
        # then never installs its handler: give the driver the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    cases = out / "cases.jsonl"
    while time.monotonic() < deadline and not (cases.exists() and cases.read_text().count("\n") >= 1):
        time.sleep(0.05)
    time.sleep(0.3)  # into the next case
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "bench run --resume" in stdout
    run = json.loads((out / "run.json").read_text())
    check_run_json(run, "interrupted")
    first = lines(out)
    assert 1 <= len(first) < 4
    assert all(r["status"] == "ok" for r in first)
    assert_valid_run_folder(out)

    proc2 = bench("run", "--resume", str(out), ATTNBENCH_PLUGINS=FAULTY)
    assert proc2.returncode == 0, proc2.stderr
    run = json.loads((out / "run.json").read_text())
    check_run_json(run, "complete")
    records = lines(out)
    assert records[: len(first)] == first  # nothing already written was touched
    assert sorted(r["seq_len"] for r in records) == [16, 32, 48, 64]
    assert len(run["resumed_at"]) == 1
    assert_valid_run_folder(out)

    again = bench("run", "--resume", str(out), ATTNBENCH_PLUGINS=FAULTY)
    assert again.returncode == 0
    assert len(lines(out)) == 4  # nothing left to run, nothing duplicated


@pytest.mark.slow  # two bench runs, about 15 s; CI runs it (-m slow)
def test_resume_after_a_torn_last_line(tmp_path: Path) -> None:
    """A run killed mid-write leaves its last line without a newline; --resume cuts it, runs
    that case again, and every reader can read the folder after (they failed on it before)."""
    out = tmp_path / "run"
    args = ["--variants", "full.sdpa", "--seq-lens", "32,48,64", "--heads", "1", "--head-dim", "8"]
    assert bench("run", *args, "--max-time-per-case", "0.05", "--out", str(out)).returncode == 0
    path = out / "cases.jsonl"
    text = path.read_text()
    last = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: last + 40])  # the last record cut 40 bytes in
    proc = bench("run", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["seq_len"] for r in lines(out)) == [32, 48, 64]
    assert len(load_run(out).cases) == 3


def test_an_interrupt_swallowed_where_it_landed_still_stops_the_run(tmp_path: Path) -> None:
    """A C extension can swallow the KeyboardInterrupt of a Ctrl-C (a Ctrl-C while torch imported
    numpy once let a run finish and exit 0); the noted signal stops the run all the same."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [*BENCH, "run", "--variants", "test.swallows_interrupt", "--param", "test.swallows_interrupt.sleep=0.2",
         "--seq-lens", "16,32,48", "--heads", "1", "--head-dim", "8", "--max-time-per-case", "0.1", "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=cli_env(ATTNBENCH_PLUGINS=FAULTY),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert len(lines(out)) < 3 if (out / "cases.jsonl").exists() else True


@pytest.mark.slow  # test_interrupt_then_resume covers resuming in the default run
def test_a_killed_driver_loses_no_finished_pass(tmp_path: Path) -> None:
    """--passes 2, the driver killed outright (SIGKILL: no chance to write anything) after
    the first passes: --resume runs only the second passes, and each record merges both."""
    out = tmp_path / "run"
    args = [
        "run", "--variants", "test.sleepy", "--param", "test.sleepy.sleep=0.3", "--seq-lens", "16,32",
        "--heads", "1", "--head-dim", "8", "--max-time-per-case", "0.2", "--passes", "2", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*BENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env(ATTNBENCH_PLUGINS=FAULTY), start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    saved = out / "passes.jsonl"
    while time.monotonic() < deadline and not (saved.exists() and saved.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers
    proc.communicate(timeout=60)
    assert not (out / "cases.jsonl").exists() or lines(out) == []
    before = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [(e["case_id"], e["pass"]) for e in before][:2] == [(before[0]["case_id"], 1), (before[1]["case_id"], 1)]

    resumed = bench("run", "--resume", str(out), ATTNBENCH_PLUGINS=FAULTY)
    assert resumed.returncode == 0, resumed.stderr
    records = lines(out)
    assert sorted(r["seq_len"] for r in records) == [16, 32]
    first_samples = {e["case_id"]: e["outcome"]["result"]["time_s"]["samples"] for e in before if e["pass"] == 1}
    for rec in records:
        assert [p["pass"] for p in rec["passes"]] == [1, 2]
        # Pass 1 is the one measured before the kill, not a re-run.
        assert rec["time_s"]["samples"][: len(first_samples[rec["case_id"]])] == first_samples[rec["case_id"]]


def test_entry_point_plugins_are_found(tmp_path: Path) -> None:
    """A third-party distribution registers a variant through the attnbench.workloads group."""
    site = tmp_path / "site"
    (site / "myattn").mkdir(parents=True)
    (site / "myattn" / "__init__.py").write_text(
        "from typing import ClassVar\n"
        "import torch.nn.functional as F\n"
        "from attnbench.workloads.base import AttentionVariant\n"
        "class Plain(AttentionVariant):\n"
        "    name: ClassVar[str] = 'plugin.plain'\n"
        "    family: ClassVar[str] = 'full'\n"
        "    summary: ClassVar[str] = 'sdpa, from a plugin'\n"
        "    def forward(self, q, k, v):\n"
        "        return F.scaled_dot_product_attention(q, k, v)\n"
        "    @classmethod\n"
        "    def flops(cls, params, shape):\n"
        "        return 4.0 * shape.seq_len**2 * shape.model_dim * shape.batch\n"
        "    @classmethod\n"
        "    def working_bytes(cls, params, shape, itemsize):\n"
        "        return shape.batch * shape.seq_len * shape.model_dim * itemsize\n"
    )
    dist = site / "myattn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myattn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attnbench.workloads]\nplain = myattn:Plain\n")
    env = {"PYTHONPATH": f"{site}:{cli_env()['PYTHONPATH']}"}
    listed = subprocess.run([*BENCH, "list"], capture_output=True, text=True, timeout=60, env=cli_env(**env))
    assert "plugin.plain" in listed.stdout
    out = tmp_path / "run"
    proc = subprocess.run(
        [*BENCH, "run", "--variants", "plugin.plain", "--seq-lens", "64", "--max-time-per-case", "0.1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=cli_env(**env),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (rec,) = lines(out)
    assert rec["status"] == "ok" and rec["verification"]["verified"] is True
