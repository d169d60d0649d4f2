"""Faults from outside a case, through the real CLI in real processes: a driver killed with
SIGKILL, SIGTERM, a second writer of one run folder, a file-size limit mid-run. For each:
what is kept, the exit code, and that no process is left behind."""

from __future__ import annotations

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


def test_sigterm_interrupts_with_143_and_leaves_no_process(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start("--variants", "test.hangs", "--seq-lens", "16", *TINY, "--out", str(out))
    children = _descendants_once_hanging(psutil.Process(proc.pid))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert _gone(children, within_s=10) == []


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
