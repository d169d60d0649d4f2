# ruff: noqa: E501 - the malformed-suite corpus reads best one suite per line
"""Faults from outside a case, through the real CLI in real processes: a driver killed with
SIGKILL, SIGTERM, a second writer of one run folder, a file-size limit mid-run. For each:
what is kept, the exit code, and that no process is left behind."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import BENCH, FAULTY, cli_env

TINY = ["--heads", "1", "--head-dim", "8", "--max-time-per-case", "0.05"]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BENCH, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(ATTNBENCH_PLUGINS=FAULTY),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _descendants_once_hanging(driver: psutil.Process, deadline_s: float = 120) -> list[psutil.Process]:
    """The driver's fork server and the worker stuck in test.hangs, once the worker runs."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        procs = driver.children(recursive=True)
        if len(procs) >= 2:  # the fork server and a worker forked from it
            time.sleep(1.0)  # into the case
            return driver.children(recursive=True)
        time.sleep(0.1)
    raise AssertionError("the worker never started")


def _gone(procs: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=within_s)
    for p in alive:  # never leave them to the next test
        p.kill()
    return alive


@pytest.mark.slow  # a real bench run, about 5 s: CI runs it (-m slow)
def test_workers_die_with_a_sigkilled_driver(tmp_path: Path) -> None:
    proc = _start("--variants", "test.hangs", "--seq-lens", "16", *TINY, "--out", str(tmp_path / "run"))
    try:
        children = _descendants_once_hanging(psutil.Process(proc.pid))
        proc.kill()  # SIGKILL: no handler runs in the driver
        proc.communicate(timeout=30)
        assert _gone(children, within_s=10) == []  # the worker followed it (it lived on before)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow  # a real bench run, about 5 s: CI runs it (-m slow)
def test_sigterm_interrupts_with_143_and_leaves_no_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start("--variants", "test.hangs", "--seq-lens", "16", *TINY, "--out", str(out))
    children = _descendants_once_hanging(psutil.Process(proc.pid))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert _gone(children, within_s=10) == []


@pytest.mark.slow  # a real bench run, about 5 s: CI runs it (-m slow)
def test_a_second_writer_of_a_run_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _start("--variants", "test.hangs", "--seq-lens", "16", *TINY, "--out", str(out))
    try:
        _descendants_once_hanging(psutil.Process(first.pid))
        second = subprocess.run(
            [*BENCH, "run", "--resume", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            env=cli_env(ATTNBENCH_PLUGINS=FAULTY),
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on host" in lines[0], second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert not (out / "cases.jsonl").read_text().strip()  # the refused writer wrote nothing


@pytest.mark.slow  # about 20 s of bench run
def test_a_file_size_limit_mid_run_stops_cleanly(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk: a write fails part way. The records written
    before stay whole, no half record and no temp file are left, run.json says interrupted,
    and the exit is one line and 74."""
    out = tmp_path / "run"
    limit = 8000  # run.json (about 3.5 KB) fits; the third record of about 3 KB does not

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [*BENCH, "run", "--variants", "full.sdpa", "--seq-lens", "32,48,64,80", *TINY, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=cli_env(),
        preexec_fn=small_files,
    )
    assert proc.returncode == 74, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "cases.jsonl" in proc.stderr and "--resume" in proc.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    text = (out / "cases.jsonl").read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert 1 <= len(records) < 4
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".run.")) == []  # no temp file
    resumed = subprocess.run(
        [*BENCH, "run", "--resume", str(out)], capture_output=True, text=True, timeout=240, env=cli_env()
    )
    assert resumed.returncode == 0, resumed.stderr
    final = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert sorted(r["seq_len"] for r in final) == [32, 48, 64, 80]  # each once, none lost
    for r in final:  # the case in flight, where its smaller error record still fitted
        assert r["status"] == "ok" or "could not be written" in r["reason"]


# ----------------------------------------------------------------------------- malformed input

MALFORMED_SUITES = {
    "not_toml": "this is = = not toml",
    "sweep_not_table": "sweep = 3",
    "variants_int": "[sweep]\nvariants = 3",
    "variants_empty": "[sweep]\nvariants = []",
    "variants_unknown": '[sweep]\nvariants = ["nope.x"]',
    "variants_dup": '[sweep]\nvariants = ["full.sdpa", "full.sdpa"]\nseq_lens=[64]',
    "seq_lens_empty": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = []',
    "seq_lens_bool": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [true]',
    "seq_lens_neg": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [-5]',
    "seq_lens_zero": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [0]',
    "seq_lens_float": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [64.5]',
    "seq_lens_nan": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [nan]',
    "seq_lens_inf": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [inf]',
    "seq_lens_str": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = ["64"]',
    "seq_lens_dup": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = [64, 64]',
    "seq_lens_table": '[sweep]\nvariants=["full.sdpa"]\nseq_lens = {a=1}',
    "batch_zero": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nbatch=[0]',
    "heads_bool": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nheads=[false]',
    "head_dim_list_list": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nhead_dim=[[64]]',
    "dtypes_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\ndtypes=["float7"]',
    "dtypes_empty": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\ndtypes=[]',
    "modes_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nmodes=["backward"]',
    "scopes_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nscopes=["model"]',
    "threads_zero": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nthreads=[0]',
    "threads_str": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nthreads=["two"]',
    "transforms_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\ntransforms=["magic"]',
    "backends_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nbackends=["tpu9"]',
    "unknown_top": 'foo = 1\n[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]',
    "unknown_sweep_key": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\nfoo=[1]',
    "settings_not_table": 'settings = 5\n[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]',
    "timeout_bool": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\ntimeout_s = true',
    "timeout_neg": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\ntimeout_s = -1',
    "timeout_inf": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\ntimeout_s = inf',
    "verify_str": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\nverify = "false"',
    "verify_int": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\nverify = 0',
    "seed_float": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\nseed = 1.5',
    "seed_bool": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\nseed = true',
    "passes_big": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\npasses = 100',
    "target_ci_nan": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\ntarget_rel_ci = nan',
    "max_time_str": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\nmax_time_per_case = "1"',
    "unknown_setting": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[settings]\nspeed = 1',
    "params_not_table": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params]\n"full.chunked" = 3',
    "params_unknown_variant": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."nope.x"]\nchunk=[1]',
    "params_unknown_name": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\nblock=[1]',
    "params_empty_list": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\nchunk=[]',
    "params_bool_for_int": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\nchunk=[true]',
    "params_nan": '[sweep]\nvariants=["adaptive.act"]\nseq_lens=[64]\n[params."adaptive.act"]\ntarget_steps=[nan]',
    "params_str_for_bool": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\ncausal=["yes"]',
    "params_neg_chunk": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\nchunk=[-4]',
    "params_dup": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\nchunk=[32, 32]',
    "params_table_value": '[sweep]\nvariants=["full.chunked"]\nseq_lens=[64]\n[params."full.chunked"]\nchunk=[{a=1}]',
    "params_window_odd": '[sweep]\nvariants=["sparse.sliding_window"]\nseq_lens=[64]\n[params."sparse.sliding_window"]\nwindow=[7]',
    "params_lsh_factor_bad": '[sweep]\nvariants=["sparse.lsh"]\nseq_lens=[64]\n[params."sparse.lsh"]\nbucket_factor=[3]',
    "params_act_t2t_gather": '[sweep]\nvariants=["adaptive.act"]\nseq_lens=[64]\n[params."adaptive.act"]\nhalting=["t2t"]\nexecution=["gather"]',
    "backend_options_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[backend_options.cpu]\nfoo=1',
    "backend_overrides_bad": '[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]\n[backend_overrides.cpu]\nseq_lens=[1]',
    "notes_int": 'notes = 5\n[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]',
    "description_list": 'description = [1]\n[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]',
    "reference_bad": 'reference = 5\n[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]',
    "compare_bad": 'compare = 5\n[sweep]\nvariants=["full.sdpa"]\nseq_lens=[64]',
    "binary": "\x00\x01\x02",
}

MALFORMED_FLAGS = {
    "seq_lens_text": ["--variants", "full.sdpa", "--seq-lens", "64,abc"],
    "seq_lens_dup": ["--variants", "full.sdpa", "--seq-lens", "64,64"],
    "seq_lens_empty": ["--variants", "full.sdpa", "--seq-lens", ","],
    "max_memory_nan": ["--variants", "full.sdpa", "--seq-lens", "64", "--max-memory", "nan"],
    "max_memory_neg": ["--variants", "full.sdpa", "--seq-lens", "64", "--max-memory", "-1"],
    "timeout_neg": ["--variants", "full.sdpa", "--seq-lens", "64", "--timeout", "-1"],
    "timeout_inf": ["--variants", "full.sdpa", "--seq-lens", "64", "--timeout", "inf"],
    "max_time_inf": ["--variants", "full.sdpa", "--seq-lens", "64", "--max-time-per-case", "inf"],
    "passes_zero": ["--variants", "full.sdpa", "--seq-lens", "64", "--passes", "0"],
    "threads_zero": ["--variants", "full.sdpa", "--seq-lens", "64", "--threads", "0"],
    "param_no_value": ["--variants", "full.chunked", "--seq-lens", "64", "--param", "full.chunked.chunk="],
    "param_no_equals": ["--variants", "full.chunked", "--seq-lens", "64", "--param", "full.chunked.chunk"],
    "param_unknown": ["--variants", "full.chunked", "--seq-lens", "64", "--param", "full.chunked.nope=1"],
    "param_bad_bool": ["--variants", "full.chunked", "--seq-lens", "64", "--param", "full.chunked.causal=maybe"],
    "param_dup": ["--variants", "full.chunked", "--seq-lens", "64", "--param", "full.chunked.chunk=32,32"],
    "variants_empty": ["--variants", "", "--seq-lens", "64"],
    "variants_unknown": ["--variants", "full.nope", "--seq-lens", "64"],
    "backend_option": ["--variants", "full.sdpa", "--seq-lens", "64", "--backend-option", "cpu.nope=1"],
    "suite_missing": ["--suite", "/nonexistent/suite.toml"],
}


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs `bench` in this process; no case may run, and the error is one line with exit 2."""
    from attnbench.cli.main import main
    from attnbench.engine import runner

    def would_run(self: runner.Runner) -> int:
        from attnbench.engine.expand import expand

        expand(self.sweep)  # parameters are checked here, before any case
        raise AssertionError("the input was accepted and cases would run")

    monkeypatch.setattr(runner.Runner, "execute", would_run)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("bench: error: "), err
    return err


@pytest.mark.parametrize("name", sorted(MALFORMED_SUITES))
def test_a_malformed_suite_is_one_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = tmp_path / f"{name}.toml"
    suite.write_bytes(MALFORMED_SUITES[name].encode())
    _one_line_exit_2(["run", "--suite", str(suite), "--out", str(tmp_path / "out")], capsys, monkeypatch)


@pytest.mark.parametrize("name", sorted(MALFORMED_FLAGS))
def test_a_malformed_flag_is_one_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["run", *MALFORMED_FLAGS[name], "--out", str(tmp_path / "out")]
    with contextlib.suppress(SystemExit):  # argparse's own refusals exit 2 with a usage line
        _one_line_exit_2(argv, capsys, monkeypatch)
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


RUN_JSON = {
    "not_json": "{not json",
    "array": "[1, 2]",
    "no_schema": '{"run_id": "x"}',
    "future_schema": '{"schema": "attnbench.run/9"}',
    "wrong_field_type": '{"schema": "attnbench.run/1", "run_id": 5, "suite": [], "status": "complete"}',
    "empty": "",
    "binary": "\x00\xff\xfe",
}


@pytest.mark.parametrize("name", sorted(RUN_JSON))
@pytest.mark.parametrize("command", ["resume", "report", "compare", "history-ingest"])
def test_a_damaged_run_folder_is_one_line_and_exit_2(
    name: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_bytes(RUN_JSON[name].encode("latin-1"))
    argv = {
        "resume": ["run", "--resume", str(folder)],
        "report": ["report", str(folder), "--out", str(tmp_path / "report")],
        "compare": ["compare", str(folder), str(folder)],
        "history-ingest": ["history", "ingest", str(folder), "--history", str(tmp_path / "h.sqlite")],
    }[command]
    if command == "history-ingest":  # many folders at once: each refused one is named, and the rest go on
        from attnbench.cli.main import main

        assert main(argv) == 2
        out = capsys.readouterr().out
        assert f"skipped {folder}: " in out and "1 skipped" in out
        return
    _one_line_exit_2(argv, capsys, monkeypatch)


def test_resume_imports_no_module_the_user_did_not_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # run.json is untrusted input: a plugin module it names runs code when imported.
    from attnbench.cli.main import main
    from attnbench.core.registry import PLUGINS_ENV

    folder = tmp_path / "run"
    folder.mkdir()
    run = json.loads((Path(__file__).parent / "fixtures" / "v0.1.0" / "interrupted" / "run.json").read_text())
    run["settings"]["plugins"] = "evil_module_that_must_not_be_imported"
    (folder / "run.json").write_text(json.dumps(run))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    assert main(["run", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "evil_module_that_must_not_be_imported" in err and "--allow-plugins" in err
    assert err.count("\n") == 1
    assert main(["run", "--allow-plugins", "--variants", "full.sdpa", "--seq-lens", "8"]) == 2
    assert "--allow-plugins goes with --resume" in capsys.readouterr().err


@pytest.mark.slow  # two real sides starting up, about 20 s
def test_bench_ab_stops_cleanly_on_sigterm_to_the_driver_alone(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    out = tmp_path / "ab"
    flags = ["--variants", "test.hangs", "--backends", "cpu", "--seq-lens", "16", *TINY, "--timeout", "300"]
    proc = subprocess.Popen(
        [*BENCH, "ab", "--baseline", str(ROOT), "--allow-same", *flags, "--out", str(out), "--history", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(ATTNBENCH_PLUGINS=FAULTY),
        start_new_session=True,  # so nothing but the driver gets the signal below
    )
    driver = psutil.Process(proc.pid)
    deadline = time.monotonic() + 180
    runs = [out / side / "run.json" for side in ("baseline", "candidate")]

    def started() -> bool:
        # Both sides' runs on disk, not only their processes: one side can reach its hanging worker
        # while the other is still starting, and a side stopped before its run began leaves no run.json.
        return len(driver.children(recursive=True)) >= 4 and all(r.is_file() for r in runs)

    while time.monotonic() < deadline and not started():
        time.sleep(0.2)  # both sides, each with its fork server (and a worker in the hanging case)
    family = driver.children(recursive=True)
    assert started(), "the sides never started"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    for side in ("baseline", "candidate"):
        assert json.loads((out / side / "run.json").read_text())["status"] == "interrupted"
    assert _gone(family, within_s=15) == []
