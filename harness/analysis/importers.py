"""Runs made by other tools, read into attnbench's records: pytest-benchmark JSON files, which
`bench history ingest` takes beside run folders. The other direction is attnbench.analysis.exporters."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from attnbench.analysis.exporters import IDENTITY_FIELDS, MEASURE_FIELDS
from attnbench.core.errors import UserError
from attnbench.core.record import CaseRecord, RunRecord
from attnbench.core.results import RunResult
from attnbench.core.stats import TimeStats


def _time_stats(stats: dict[str, Any]) -> TimeStats:
    from attnbench.core.stats import summarize

    data = stats.get("data") or []
    if data:
        return summarize([float(x) for x in data])
    # Summary only (saved without --benchmark-save-data): no samples, no CI.
    return TimeStats(
        median=stats["median"],
        mean=stats.get("mean"),
        stdev=stats.get("stddev"),
        min=stats.get("min"),
        max=stats.get("max"),
        iqr=stats.get("iqr"),
        ci95_low=None,  # type: ignore[arg-type]
        ci95_high=None,  # type: ignore[arg-type]
        n=stats.get("rounds"),
        samples=(),
    )


def _run_info(data: dict[str, Any]) -> dict[str, Any]:
    """attnbench's fingerprint of the run, where the file has one: in each benchmark's
    extra_info["run"] (bench export), or in machine_info["attnbench"] (the pytest plugin, and
    exports before 0.2.0)."""
    for bench in data["benchmarks"]:
        run = (bench.get("extra_info") or {}).get("run") if isinstance(bench, dict) else None
        if isinstance(run, dict):
            return run
    return (data.get("machine_info") or {}).get("attnbench") or {}


def _git(ci: dict[str, Any]) -> dict[str, Any]:
    """run.json's git from pytest-benchmark's commit_info: the commit, and its branch and time
    where pytest-benchmark knew them ("(unknown)" and "(detached head)" name no branch)."""
    git = {"commit": ci.get("id"), "dirty": ci.get("dirty")}
    branch = ci.get("branch")
    if isinstance(branch, str) and branch and not branch.startswith("("):
        git["branch"] = branch
    try:
        when = dt.datetime.fromisoformat(ci["time"])
    except (KeyError, TypeError, ValueError):
        return git
    if when.tzinfo is not None:  # UTC, like every timestamp attnbench writes
        git["commit_time"] = when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")
    return git


def _as_written(bench: dict[str, Any]) -> dict[str, Any]:
    """What `bench export` needs to write the benchmark back as the file had it: its names,
    params and options, and its statistics where the file has no samples to compute them from."""
    kept = {k: bench.get(k) for k in ("name", "fullname", "group", "params", "param", "options")}
    stats = bench.get("stats") or {}
    if not stats.get("data"):
        kept["stats"] = {k: v for k, v in stats.items() if k != "data"}
    return kept


def import_pytest_benchmark(path: Path) -> RunResult:
    """A pytest-benchmark JSON file as a run (suite "pytest-benchmark"), ready for the history.

    The run id is derived from the file's content, so ingesting the same file twice replaces
    rather than duplicates it.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or "machine_info" not in data:
        raise UserError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' and 'machine_info')")
    mi = data.get("machine_info") or {}
    ci = data.get("commit_info") or {}
    ours = _run_info(data)
    when = data.get("datetime") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    stamp = when.replace("-", "").replace(":", "").replace("T", "-")[:15]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:6]
    run_id = f"{stamp}-pytest-benchmark-{digest}"
    cpu = mi.get("cpu") or {}
    host = ours.get("host") or {
        "hostname": mi.get("node"),
        "os": " ".join(x for x in (mi.get("system"), mi.get("release")) if x),
        "python": mi.get("python_version"),
        "cpu": cpu.get("brand_raw"),
        "arch": mi.get("machine"),
        "logical_cores": cpu.get("count"),
    }
    run = RunRecord(
        run_id=run_id,
        suite=ours.get("suite") or "pytest-benchmark",
        started_at=when,
        finished_at=when,
        status="complete",
        argv=[],
        git=_git(ci),
        host=host,
        packages=ours.get("packages") or {},
        devices=ours.get("devices") or [],
        imported_from=str(path),
        pytest_benchmark_version=data.get("version"),
    )
    cases = []
    for bench in data["benchmarks"]:
        stats = bench.get("stats") or {}
        if "median" not in stats:
            continue
        info = bench.get("extra_info") or {}
        time_s = _time_stats(stats)
        known = {k: info.get(k) for k in (*IDENTITY_FIELDS, *MEASURE_FIELDS) if k in info}
        case_id = known.pop("case_id", None) or bench.get("fullname") or bench["name"]
        group = bench.get("group")
        # What the file does not say is None (or, for what a record must name, a stand-in).
        given = {k: known.get(k) for k in (*MEASURE_FIELDS, "batch", "heads", "head_dim", "seq_len", "threads")}
        given["energy_reason"] = given["energy_reason"] or "not in the pytest-benchmark file"
        cases.append(
            CaseRecord(
                run_id=run_id,
                case_id=case_id,
                variant=known.get("variant") or f"pytest.{group or bench['name'].split('[')[0]}",
                family=known.get("family") or "external",
                params=known.get("params") or bench.get("params") or {},
                workload_hash=known.get("workload_hash"),
                scope=known.get("scope") or "core",
                backend=known.get("backend") or "pytest-benchmark",
                device=known.get("device") or host.get("cpu"),
                dtype=known.get("dtype") or "-",
                mode=known.get("mode") or "-",
                status="ok",
                reason=None,
                time_s=time_s,
                compile_s=None,
                pytest_benchmark=_as_written(bench),
                **given,
            )
        )
    return RunResult(path, run, cases)
