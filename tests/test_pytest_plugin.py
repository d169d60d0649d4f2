"""The pytest11 plugin: `pytest --attnbench-suite S --benchmark-json out.json` measures a suite's
cases the harness's way and hands them to pytest-benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from attnbench.engine.expand import expand
from attnbench.engine.suites import Overrides, load_suite, resolve
from tests.conftest import BENCH, cli_env

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]

SUITE = """
description = "two tiny cases for the plugin test"
[sweep]
variants = ["full.sdpa", "full.naive"]
backends = ["cpu"]
seq_lens = [32]
heads = [1]
head_dim = [8]
threads = [1]
[settings]
max_time_per_case = 0.1
"""


def test_suite_cases_become_pytest_benchmark_benchmarks(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    out = tmp_path / "out.json"
    r = subprocess.run(
        [*PYTEST, "--attnbench-suite", str(suite), "--benchmark-json", str(out), "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # no test files here: only the suite's items run
        env=cli_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
    data = json.loads(out.read_text())
    expected = {c.case_id for c in expand(resolve(load_suite(str(suite)), Overrides())[0])}
    assert {b["extra_info"]["case_id"] for b in data["benchmarks"]} == expected
    for b in data["benchmarks"]:
        stats = b["stats"]
        assert stats["rounds"] == len(stats["data"]) >= 3  # the harness's samples, one per round
        assert stats["iterations"] == b["extra_info"]["calls_per_sample"] >= 1
        assert min(stats["data"]) <= stats["median"] <= max(stats["data"])
        assert b["extra_info"]["clock"] == "time.perf_counter"
        assert len(b["extra_info"]["workload_hash"]) == 16
    # attnbench's fingerprint rides in extra_info: machine_info stays pytest-benchmark's own, so
    # --benchmark-compare does not warn that every machine differs.
    assert "attnbench" not in data["machine_info"]
    assert all(b["extra_info"]["run"]["packages"]["torch"] for b in data["benchmarks"])
    # The file goes into the history like a run made by bench run.
    db = tmp_path / "h.sqlite"
    r = subprocess.run(
        [*BENCH, "history", "ingest", str(out), "--history", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert r.returncode == 0 and "1 run(s) added" in r.stdout, r.stderr
    r = subprocess.run(
        [*BENCH, "history", "list", "--history", str(db)], capture_output=True, text=True, timeout=60, env=cli_env()
    )
    assert "tiny" in r.stdout and "2/2" in r.stdout


def test_plugin_is_inert_without_the_option(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert True\n")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(),
    )
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def test_bad_suite_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--attnbench-suite", "no-such-suite", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(),
    )
    assert r.returncode == 4  # pytest's usage error
    assert "unknown suite 'no-such-suite'" in r.stderr
