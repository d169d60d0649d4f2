"""The exports checked against the tools themselves: a file pytest-benchmark wrote (and its own
`compare` command and machine check), the node ids `pytest --attnbench-suite` gives the cases
(Bencher's pytest adapter names a benchmark by them), and github-action-benchmark's two custom
tools. Every format is exported from a native run and from a run imported from a
pytest-benchmark file saved without its samples (no CI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attnbench.analysis.exporters import (
    CHECKOUT,
    FORMATS,
    NO_CI,
    commit_info,
    export,
    machine_info,
    to_bmf,
    to_github_action_benchmark,
    to_github_action_benchmark_throughput,
    to_pytest_benchmark,
)
from attnbench.analysis.importers import import_pytest_benchmark
from attnbench.core import strict_json
from attnbench.core.environment import host_info
from attnbench.core.results import RunResult, load_run
from attnbench.engine.expand import expand
from attnbench.engine.suites import Overrides, load_suite, resolve
from tests.conftest import BENCH, cli_env
from tests.synthetic_runs import Case, noisy, write_run

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
PB_CLI = shutil.which("pytest-benchmark") or str(Path(sys.executable).parent / "pytest-benchmark")

TINY_BENCHMARK = "def test_sum(benchmark):\n    benchmark(sum, range(10))\n"
SUITE = """
description = "two tiny cases for the export tests"
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


@pytest.fixture(scope="module")
def written_by_pytest_benchmark(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Files pytest-benchmark itself wrote for a one-benchmark test: `--benchmark-json` (with the
    samples) and `--benchmark-save` (its storage: without them)."""
    folder = tmp_path_factory.mktemp("pb")
    (folder / "test_tiny.py").write_text(TINY_BENCHMARK)
    r = subprocess.run(
        [
            *PYTEST,
            "--rootdir",
            str(folder),
            "test_tiny.py",
            "--benchmark-json",
            "real.json",
            "--benchmark-save",
            "foreign",
            "--benchmark-storage",
            f"file://{folder / 'storage'}",
            "--benchmark-max-time",
            "0.01",
            "--benchmark-min-rounds",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env=cli_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (saved,) = (folder / "storage").rglob("0001_foreign.json")
    return SimpleNamespace(json=folder / "real.json", saved=saved, data=json.loads((folder / "real.json").read_text()))


def native_run(tmp_path: Path, suite: str = "synthetic", **kw: Any) -> RunResult:
    cases = [
        Case("full.sdpa-cpu-n512-aaaa", noisy(0.004, 25, 0.03, seed=1), extra={"warmup": {"calls": 7, "seconds": 0.3}}),
        Case("full.naive-cpu-n512-bbbb", noisy(0.009, 12, 0.03, seed=2), variant="full.naive", energy_j=0.5),
        Case("broken", None, status="error"),
    ]
    return load_run(write_run(tmp_path / f"run-{suite}", "run-x", cases, suite=suite, **kw))


def imported_without_ci(tmp_path: Path, written: SimpleNamespace) -> RunResult:
    """A run imported from pytest-benchmark's own storage file, which keeps no samples."""
    run = import_pytest_benchmark(written.saved)
    assert run.cases and all(c.time_s is not None and c.time_s.ci95_low is None for c in run.cases)
    return run


def summary_only_attnbench_export(tmp_path: Path) -> RunResult:
    """attnbench's own export saved without its samples (as `--benchmark-save` without
    `--benchmark-save-data` keeps a plugin run), imported: attnbench fields, no CI."""
    data = to_pytest_benchmark(native_run(tmp_path))
    for b in data["benchmarks"]:
        del b["stats"]["data"]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    return import_pytest_benchmark(path)


# ----------------------------------------------------------------------------- pytest-benchmark

OPTION_TYPES = {  # what pytest-benchmark's fixture writes (fixture.py: _make_stats; warmup is `warmup and iterations`)
    "disable_gc": (bool,),
    "timer": (str,),
    "min_rounds": (int,),
    "max_time": (float,),
    "min_time": (float,),
    "precision": (type(None), float),
    "confidence": (type(None), float),
    "warmup": (bool, int),
}


def _kinds(run_kind: str, tmp_path: Path, written: SimpleNamespace) -> RunResult:
    if run_kind == "native":
        return native_run(tmp_path)
    if run_kind == "imported-no-ci":
        return imported_without_ci(tmp_path, written)
    return summary_only_attnbench_export(tmp_path)


RUN_KINDS = ("native", "imported-no-ci", "attnbench-summary-no-ci")


@pytest.mark.parametrize("run_kind", RUN_KINDS)
def test_pytest_benchmark_export_has_exactly_the_shape_pytest_benchmark_writes(
    run_kind: str, tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    real = written_by_pytest_benchmark.data
    data = json.loads(strict_json.dumps(to_pytest_benchmark(_kinds(run_kind, tmp_path, written_by_pytest_benchmark))))
    assert list(data) == list(real)
    assert list(data["machine_info"]) == list(real["machine_info"])
    assert "attnbench" not in data["machine_info"]
    assert list(data["commit_info"]) == list(real["commit_info"])
    assert data["benchmarks"]
    want = real["benchmarks"][0]
    for b in data["benchmarks"]:
        assert list(b) == list(want)
        assert list(b["options"]) == list(want["options"])
        for key, value in b["options"].items():
            assert isinstance(value, OPTION_TYPES[key]), (key, value)
        assert set(b["stats"]) - {"data"} == set(want["stats"]) - {"data"}
        assert isinstance(b["extra_info"], dict) and b["extra_info"]["case_id"]


def test_options_say_what_attnbench_did(tmp_path: Path) -> None:
    run = native_run(tmp_path)
    first, second = (b["options"] for b in to_pytest_benchmark(run)["benchmarks"])
    assert first["timer"] == "perf_counter"  # the clock time.perf_counter, named as pytest-benchmark names it
    assert first["max_time"] == 1.0  # the run's max_time_per_case
    assert first["warmup"] == 7 and second["warmup"] is False
    assert first["disable_gc"] is False and first["min_time"] > 0 and first["min_rounds"] >= 1
    targeted = native_run(tmp_path / "t", run_extra={"settings": {"max_time_per_case": 2.0, "target_rel_ci": 0.02}})
    options = to_pytest_benchmark(targeted)["benchmarks"][0]["options"]
    if "precision" in options:  # pytest-benchmark 5.3 and later: the stopping rule's target
        assert options["precision"] == 0.02 and options["confidence"] == 0.95


@pytest.mark.parametrize("run_kind", RUN_KINDS)
def test_pytest_benchmark_compare_reads_the_export_beside_its_own_file(
    run_kind: str, tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    run = _kinds(run_kind, tmp_path, written_by_pytest_benchmark)
    exported = tmp_path / "exported.json"
    exported.write_text(strict_json.dumps(to_pytest_benchmark(run)))
    r = subprocess.run(
        [PB_CLI, "compare", str(exported), str(written_by_pytest_benchmark.json)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "test_sum" in out and run.cases[0].case_id.split("[")[0].split("::")[-1] in out
    assert "machine_info is different" not in out
    for bad in ("Traceback", "Error", "WARNING", "Warning"):
        assert bad not in out, out


def _without_frequency(mi: dict[str, Any]) -> dict[str, Any]:
    """py-cpuinfo's current clock speed moves between two readings on some machines."""
    cpu = {k: v for k, v in mi["cpu"].items() if not k.startswith("hz_actual")}
    return {**mi, "cpu": cpu}


def test_machine_info_on_the_machine_of_the_run_is_pytest_benchmarks_own(
    tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    """pytest-benchmark's `--benchmark-compare` warns when machine_info differs in any key; its
    own check finds the export and its own file of the same machine equal."""
    from pytest_benchmark.plugin import pytest_benchmark_compare_machine_info

    run = native_run(tmp_path, host=host_info())
    exported = _without_frequency(json.loads(strict_json.dumps(to_pytest_benchmark(run)))["machine_info"])
    own = _without_frequency(written_by_pytest_benchmark.data["machine_info"])
    assert exported == own
    warnings: list[str] = []
    session = SimpleNamespace(logger=SimpleNamespace(warning=warnings.append), storage=SimpleNamespace(location="x"))
    pytest_benchmark_compare_machine_info(
        config=None, benchmarksession=session, machine_info=own, compared_benchmark={"machine_info": exported}
    )
    assert warnings == []


def test_machine_info_of_another_machine_holds_what_the_record_says(tmp_path: Path) -> None:
    mi = machine_info(native_run(tmp_path))  # made on "bench-host-1"
    assert mi["node"] == "bench-host-1" and mi["machine"] == "x86_64" and mi["python_version"] == "3.11.7"
    assert mi["processor"] is None  # not recorded (it used to hold the architecture)
    assert mi["cpu"] == {"brand_raw": "Test CPU 9000", "count": 2}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, check=True).stdout


def test_commit_info_has_the_commits_time_and_branch(tmp_path: Path) -> None:
    try:
        head = _git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("attnbench is not running from a git checkout")
    run = native_run(tmp_path, run_extra={"git": {"commit": head, "dirty": True}})
    info = commit_info(run)
    assert info["id"] == head and info["dirty"] is True and info["project"] == "attnbench"
    assert info["time"] == _git("show", "-s", "--format=%cI", head).strip()
    assert info["author_time"] == _git("show", "-s", "--format=%aI", head).strip()
    branch = _git("rev-parse", "--abbrev-ref", "HEAD").strip()
    assert info["branch"] == ("(detached head)" if branch == "HEAD" else branch)


def test_commit_info_falls_back_as_pytest_benchmark_does(tmp_path: Path) -> None:
    unknown = commit_info(native_run(tmp_path / "a"))  # commit abc123 is in no checkout here
    assert unknown == {
        "id": "abc123",
        "time": None,
        "author_time": None,
        "dirty": False,
        "project": "attnbench",
        "branch": "(unknown)",
    }
    recorded = {"commit": "abc123", "dirty": False, "branch": "main", "commit_time": "2026-11-01T00:00:00+00:00"}
    info = commit_info(native_run(tmp_path / "b", run_extra={"git": recorded}))
    assert info["branch"] == "main" and info["time"] == "2026-11-01T00:00:00+00:00"
    outside = commit_info(native_run(tmp_path / "c", run_extra={"git": {"commit": None, "dirty": None}}))
    assert outside["id"] == "unversioned" and outside["branch"] == "(unknown)" and outside["dirty"] is False


def test_import_keeps_the_commits_branch_and_time(tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace) -> None:
    recorded = {"commit": "abc123", "dirty": False, "branch": "main", "commit_time": "2026-11-01T10:00:00+00:00"}
    data = to_pytest_benchmark(native_run(tmp_path, run_extra={"git": recorded}))
    data["commit_info"]["time"] = "2026-11-01T12:00:00+02:00"  # as git's %cI writes it: local offset
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(data))
    assert import_pytest_benchmark(path).run.git == recorded  # in UTC, as attnbench writes times
    # pytest-benchmark outside a git checkout: "unversioned", branch "(unknown)", no time.
    ci = json.loads(written_by_pytest_benchmark.saved.read_text())["commit_info"]
    if ci["id"] == "unversioned":
        assert imported_without_ci(tmp_path, written_by_pytest_benchmark).run.git == {
            "commit": "unversioned",
            "dirty": False,
        }


def test_export_of_an_imported_file_gives_back_its_names_options_and_summary(
    tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    saved = json.loads(written_by_pytest_benchmark.saved.read_text())
    (b,) = to_pytest_benchmark(imported_without_ci(tmp_path, written_by_pytest_benchmark))["benchmarks"]
    (want,) = saved["benchmarks"]
    for key in ("group", "name", "fullname", "params", "param", "options", "stats"):
        assert b[key] == want[key], key


# ----------------------------------------------------------------------------- Bencher


@pytest.mark.slow  # a bench run and a pytest collection: about 5 s; CI runs it (-m slow)
def test_bmf_names_a_case_as_bencher_names_the_plugins_benchmark(tmp_path: Path) -> None:
    """Bencher's pytest adapter (bencherdev/bencher, lib/bencher_adapter/src/adapters/python/pytest.rs)
    names each benchmark by its pytest-benchmark `fullname`, the pytest node id; BMF uses the node
    id `pytest --attnbench-suite` gives the same case, so both land on one Bencher benchmark."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    r = subprocess.run(
        [*PYTEST, "--attnbench-suite", str(suite), "--collect-only", "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=cli_env(),
    )
    node_ids = {line for line in r.stdout.splitlines() if "::" in line}
    case_ids = [c.case_id for c in expand(resolve(load_suite(str(suite)), Overrides())[0])]
    assert len(node_ids) == len(case_ids) == 2, r.stdout + r.stderr
    cases = [Case(cid, noisy(0.001, 8, 0.02, seed=i)) for i, cid in enumerate(case_ids)]
    run = load_run(write_run(tmp_path / "run", "run-tiny", cases, suite="tiny"))
    assert set(to_bmf(run)) == node_ids
    assert {b["fullname"] for b in to_pytest_benchmark(run)["benchmarks"]} == node_ids


def test_bmf_of_an_imported_file_keeps_its_fullnames(
    tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    bmf = to_bmf(imported_without_ci(tmp_path, written_by_pytest_benchmark))
    assert list(bmf) == ["test_tiny.py::test_sum"]  # what Bencher's adapter calls the file's benchmark
    assert set(bmf["test_tiny.py::test_sum"]["latency"]) == {"value"}  # no CI, no bounds


def test_bmf_measures(tmp_path: Path) -> None:
    sdpa, naive = to_bmf(native_run(tmp_path)).values()
    assert set(sdpa) == {"latency", "throughput", "peak-memory"}
    assert set(naive) == {"latency", "throughput", "peak-memory", "energy"} and naive["energy"] == {"value": 0.5}
    assert sdpa["throughput"]["lower_value"] <= sdpa["throughput"]["value"] <= sdpa["throughput"]["upper_value"]


@pytest.mark.slow
def test_plugin_and_bench_export_make_one_bencher_benchmark_per_case(tmp_path: Path) -> None:
    """The real thing, end to end: the plugin's file through Bencher's naming (fullname) and
    `bench export --format bmf` of a `bench run` of the same suite name the same benchmarks."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    out = tmp_path / "plugin.json"
    r = subprocess.run(
        [*PYTEST, "--attnbench-suite", str(suite), "--benchmark-json", str(out), "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=cli_env(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    adapter_names = {b["fullname"] for b in json.loads(out.read_text())["benchmarks"]}
    run_dir, bmf = tmp_path / "run", tmp_path / "bmf.json"
    for argv in (
        ["run", "--suite", str(suite), "--out", str(run_dir)],
        ["export", str(run_dir), "--format", "bmf", "-o", str(bmf)],
    ):
        r = subprocess.run([*BENCH, *argv], capture_output=True, text=True, timeout=300, env=cli_env(), cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    assert set(json.loads(bmf.read_text())) == adapter_names and len(adapter_names) == 2


# ----------------------------------------------------------------------------- github-action-benchmark


def test_github_action_benchmark_throughput_is_bigger_is_better(tmp_path: Path) -> None:
    run = native_run(tmp_path)
    entries = to_github_action_benchmark_throughput(run)
    assert len(entries) == 2
    for e, c in zip(entries, run.cases, strict=False):
        assert e["unit"] == "tokens/s" and e["value"] == pytest.approx(c.tokens_per_s)
        assert e["name"].endswith(" throughput") and c.case_id in e["name"] and e["range"].startswith("± ")
    smaller = {e["name"] for e in to_github_action_benchmark(run)}
    assert not smaller & {e["name"] for e in entries}


def test_github_action_benchmark_without_ci(tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace) -> None:
    foreign = imported_without_ci(tmp_path, written_by_pytest_benchmark)
    (entry,) = to_github_action_benchmark(foreign)
    assert "range" not in entry and NO_CI in entry["extra"]
    assert to_github_action_benchmark_throughput(foreign) == []  # a foreign test has no tokens
    ours = to_github_action_benchmark_throughput(summary_only_attnbench_export(tmp_path))
    assert len(ours) == 2 and all("range" not in e and NO_CI in e["extra"] for e in ours)


@pytest.mark.parametrize("run_kind", RUN_KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_exports_every_kind_of_run(
    fmt: str, run_kind: str, tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    data = export(_kinds(run_kind, tmp_path, written_by_pytest_benchmark), fmt)
    json.loads(strict_json.dumps(data))  # strict JSON: no NaN
    foreign_throughput = fmt == "github-action-benchmark-throughput" and run_kind == "imported-no-ci"
    assert bool(data) != foreign_throughput


def test_bench_export_writes_the_throughput_file_beside(
    tmp_path: Path, written_by_pytest_benchmark: SimpleNamespace
) -> None:
    run = native_run(tmp_path)
    out = tmp_path / "out" / "gab.json"
    r = subprocess.run(
        [*BENCH, "export", str(run.folder), "--format", "github-action-benchmark", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == json.loads(strict_json.dumps(to_github_action_benchmark(run)))
    beside = json.loads((tmp_path / "out" / "gab-throughput.json").read_text())
    assert [e["unit"] for e in beside] == ["tokens/s", "tokens/s"]
    # A run with no throughput (a foreign pytest-benchmark file) gets no empty file, which the action refuses.
    db, foreign = str(tmp_path / "h.sqlite"), str(tmp_path / "f.json")
    for argv in (
        ["history", "ingest", str(written_by_pytest_benchmark.saved), "--history", db],
        ["export", "latest", "--history", db, "--format", "github-action-benchmark", "-o", foreign],
    ):
        r = subprocess.run([*BENCH, *argv], capture_output=True, text=True, timeout=60, env=cli_env())
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.json").exists() and not (tmp_path / "f-throughput.json").exists()
    assert "not written" in r.stderr
