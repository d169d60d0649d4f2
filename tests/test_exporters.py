"""Exporters (pytest-benchmark, Bencher BMF, github-action-benchmark) and the pytest-benchmark importer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.analysis.compare import compare_runs
from attnbench.analysis.exporters import (
    NO_CI,
    pytest_benchmark_stats,
    to_bmf,
    to_github_action_benchmark,
    to_pytest_benchmark,
)
from attnbench.analysis.importers import import_pytest_benchmark
from attnbench.core.results import RunResult, load_run
from tests.conftest import BENCH, cli_env
from tests.synthetic_runs import Case, noisy, write_run


@pytest.fixture
def run(tmp_path: Path) -> RunResult:
    cases = [
        Case("full.sdpa-cpu-n512-aaaa", noisy(0.004, 25, 0.03, seed=1)),
        Case("full.naive-cpu-n512-bbbb", noisy(0.009, 12, 0.03, seed=2), variant="full.naive"),
        Case("broken", None, status="error"),
    ]
    return load_run(write_run(tmp_path / "run", "run-x", cases))


def test_pytest_benchmark_json_carries_samples_and_identity(run: RunResult, tmp_path: Path) -> None:
    data = to_pytest_benchmark(run)
    assert set(data) == {"machine_info", "commit_info", "benchmarks", "datetime", "version"}
    assert len(data["benchmarks"]) == 2  # the failed case has no timing to export
    b = data["benchmarks"][0]
    rec = run.cases[0]
    assert b["stats"]["data"] == rec.samples
    assert b["stats"]["rounds"] == len(rec.samples)
    assert b["stats"]["median"] == pytest.approx(rec.median_s)
    assert b["extra_info"]["case_id"] == rec.case_id
    assert b["extra_info"]["workload_hash"] == "h0"
    assert b["extra_info"]["peak_memory_bytes"] == rec.peak_memory_bytes
    assert data["commit_info"]["id"] == "abc123"
    # pytest-benchmark's own tool reads the file.
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(data))
    cli = shutil.which("pytest-benchmark") or str(Path(sys.executable).parent / "pytest-benchmark")
    r = subprocess.run([cli, "compare", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "full.sdpa" in r.stdout


def test_pytest_benchmark_stats_are_its_own() -> None:
    stats = pytest_benchmark_stats([1.0, 2.0, 3.0, 4.0], iterations=5)
    assert stats["median"] == 2.5 and stats["rounds"] == 4 and stats["iterations"] == 5
    assert stats["data"] == [1.0, 2.0, 3.0, 4.0]


def test_bmf_latency_in_nanoseconds_with_ci_bounds(run: RunResult) -> None:
    bmf = to_bmf(run)
    assert len(bmf) == 2
    name, measures = next(iter(bmf.items()))
    assert "full.sdpa" in name and "full.sdpa-cpu-n512-aaaa" in name
    lat = measures["latency"]
    assert lat["value"] == pytest.approx(run.cases[0].median_s * 1e9)
    assert lat["lower_value"] <= lat["value"] <= lat["upper_value"]
    tp = measures["throughput"]
    assert tp["lower_value"] <= tp["value"] <= tp["upper_value"]
    assert measures["peak-memory"]["value"] == run.cases[0].peak_memory_bytes
    for m in bmf.values():
        for metric in m.values():
            assert isinstance(metric["value"], float)


def test_github_action_benchmark_custom_smaller_is_better(run: RunResult) -> None:
    entries = to_github_action_benchmark(run)
    assert len(entries) == 4  # time and peak memory for each measured case
    for e in entries:
        assert set(e) >= {"name", "unit", "value"}
        assert isinstance(e["value"], float)
    assert entries[0]["unit"] == "ms" and entries[0]["value"] == pytest.approx(run.cases[0].median_s * 1e3)
    assert len({e["name"] for e in entries}) == 4


def test_import_of_our_own_export_restores_cases_and_compares(run: RunResult, tmp_path: Path) -> None:
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(to_pytest_benchmark(run)))
    imported = import_pytest_benchmark(path)
    assert imported.run.run_id.endswith("-pytest-benchmark-" + imported.run.run_id.rsplit("-", 1)[1])
    assert import_pytest_benchmark(path).run.run_id == imported.run.run_id  # stable: re-ingest replaces
    assert [c.case_id for c in imported.cases] == [c.case_id for c in run.cases[:2]]
    for got, want in zip(imported.cases, run.cases, strict=False):
        assert got.samples == want.samples
        assert got.workload_hash == "h0"
        assert got.peak_memory_bytes == want.peak_memory_bytes
    assert imported.run.host == run.run.host and imported.run.packages == run.run.packages
    cmp = compare_runs(run, imported)
    assert cmp.summary.counts["no change"] == 2 and cmp.summary.counts["missing"] == 1


def foreign_pytest_benchmark(tmp_path: Path, name: str = "0001_foreign.json") -> Path:
    """A file written by pytest-benchmark itself for an unrelated test suite, saved without its samples."""
    foreign = {
        "machine_info": {
            "node": "laptop",
            "machine": "arm64",
            "python_version": "3.12.1",
            "system": "Darwin",
            "release": "23.0",
            "cpu": {"brand_raw": "Apple M2", "count": 8},
        },
        "commit_info": {"id": "deadbeef", "dirty": True},
        "benchmarks": [
            {
                "group": None,
                "name": "test_parse[big]",
                "fullname": "tests/test_parse.py::test_parse[big]",
                "params": {"size": "big"},
                "extra_info": {},
                "stats": {"min": 1.0, "max": 2.0, "mean": 1.5, "stddev": 0.1, "rounds": 9, "median": 1.4},
            }
        ],
        "datetime": "2026-11-20T10:00:00.000001+00:00",
        "version": "5.1.0",
    }
    path = tmp_path / name
    path.write_text(json.dumps(foreign))
    return path


def test_import_of_a_foreign_pytest_benchmark_file(tmp_path: Path) -> None:
    """A file written by pytest-benchmark itself for an unrelated test suite."""
    path = foreign_pytest_benchmark(tmp_path)
    result = import_pytest_benchmark(path)
    (case,) = result.cases
    assert case.case_id == "tests/test_parse.py::test_parse[big]"
    assert case.variant == "pytest.test_parse" and case.status == "ok"
    assert case.median_s == 1.4 and case.samples == []
    assert result.run.host["cpu"] == "Apple M2" and result.run.git["commit"] == "deadbeef"
    db = tmp_path / "h.sqlite"
    r = subprocess.run(
        [*BENCH, "history", "ingest", str(path), "--history", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert r.returncode == 0 and "1 run(s) added" in r.stdout, r.stderr


def test_bench_export_command(run: RunResult, tmp_path: Path) -> None:
    for fmt in ("pytest-benchmark", "bmf", "github-action-benchmark"):
        out = tmp_path / f"{fmt}.json"
        r = subprocess.run(
            [*BENCH, "export", str(run.folder), "--format", fmt, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(out.read_text())


def test_exporters_take_an_imported_run_without_a_confidence_interval(tmp_path: Path) -> None:
    """A pytest-benchmark file saved without its samples has no CI: BMF and
    github-action-benchmark leave the bounds out (both make them optional) instead of a TypeError."""
    run = import_pytest_benchmark(foreign_pytest_benchmark(tmp_path))
    assert run.cases[0].time_s is not None and run.cases[0].time_s.ci95_low is None
    bmf = to_bmf(run)
    (measures,) = bmf.values()
    assert measures["latency"] == {"value": pytest.approx(1.4e9)}
    json.dumps(bmf, allow_nan=False)
    (entry,) = to_github_action_benchmark(run)
    assert "range" not in entry and entry["value"] == pytest.approx(1.4e3) and NO_CI in entry["extra"]
    json.dumps(entry, allow_nan=False)
