"""Results in other tools' formats, so users keep their dashboards, and one importer.

- pytest-benchmark JSON (what `pytest --benchmark-json` writes; `pytest-benchmark compare`
  and its storage read it), with the raw samples as `stats.data`;
- Bencher Metric Format (BMF) JSON: `latency` in nanoseconds with the median's 95% CI as
  lower/upper values, `throughput` in tokens/s, and `peak-memory` in bytes;
- github-action-benchmark's `customSmallerIsBetter`: a list of {name, unit, value, range, extra};
- an importer of pytest-benchmark JSON into the history (`bench history ingest out.json`),
  which restores the attnbench case identity from `extra_info` when the file came from
  this exporter or the pytest plugin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnbench.core.errors import UserError
from attnbench.core.record import CaseRecord, RunRecord
from attnbench.core.results import RunResult
from attnbench.core.stats import TimeStats

# Record fields carried in pytest-benchmark's extra_info, enough to restore the case on import.
IDENTITY_FIELDS = (
    "case_id",
    "variant",
    "family",
    "params",
    "scope",
    "backend",
    "device",
    "dtype",
    "mode",
    "batch",
    "heads",
    "head_dim",
    "seq_len",
    "threads",
    "workload_hash",
)
MEASURE_FIELDS = (
    "tokens_per_s",
    "flops",
    "flops_per_s",
    "peak_memory_bytes",
    "memory_method",
    "energy_j",
    "energy_method",
    "energy_reason",
    "stable",
    "converged",
    "clock",
    "sync",
    "calls_per_sample",
)


def _measured(run: RunResult) -> list[tuple[CaseRecord, TimeStats]]:
    return [(c, c.time_s) for c in run.cases if c.status == "ok" and c.time_s]


def bench_name(c: CaseRecord) -> str:
    """A readable, unique benchmark name: what ran, and the case_id for what it exactly was."""
    return f"{c.variant}[{c.backend}/{c.dtype}/{c.mode}/{c.scope}/n={c.seq_len}] {c.case_id}"


def extra_info(c: CaseRecord) -> dict[str, Any]:
    data = {"schema": c.schema, "run_id": c.run_id, "status": c.status}
    for key in (*IDENTITY_FIELDS, *MEASURE_FIELDS):
        data[key] = getattr(c, key)
    return data


# ----------------------------------------------------------------------------- pytest-benchmark


def pytest_benchmark_stats(samples: list[float], iterations: int) -> dict[str, Any]:
    """pytest-benchmark's own statistics over per-call samples (its Stats class, so the figures
    mean exactly what they mean in its tables), plus the raw data."""
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for s in samples:
        stats.update(s)
    out = stats.as_dict()
    out["data"] = list(samples)
    out["iterations"] = iterations
    return out


def machine_info(run: RunResult) -> dict[str, Any]:
    h = run.run.host
    return {
        "node": h.get("hostname"),
        "processor": h.get("arch"),
        "machine": h.get("arch"),
        "python_implementation": "CPython",
        "python_version": h.get("python"),
        "system": h.get("os"),
        "release": "",
        "cpu": {"brand_raw": h.get("cpu"), "count": h.get("logical_cores"), "arch": h.get("arch")},
        "attnbench": {
            "run_id": run.run.run_id,
            "suite": run.run.suite,
            "host": h,
            "packages": run.run.packages,
            "devices": run.run.devices,
        },
    }


def commit_info(run: RunResult) -> dict[str, Any]:
    git = run.run.git or {}
    return {
        "id": git.get("commit"),
        "time": None,
        "author_time": None,
        "dirty": git.get("dirty"),
        "project": "attnbench",
        "branch": None,
    }


def to_pytest_benchmark(run: RunResult) -> dict[str, Any]:
    from pytest_benchmark import __version__ as pb_version

    benchmarks = []
    for c, _ in _measured(run):
        samples = c.samples
        if not samples:
            continue
        name = bench_name(c)
        params = {**c.params, "seq_len": c.seq_len}
        benchmarks.append(
            {
                "group": f"{c.variant} {c.backend}/{c.dtype}/{c.mode}/{c.scope}",
                "name": name,
                "fullname": f"attnbench::{run.run.suite}::{name}",
                "params": params,
                "param": c.case_id,
                "extra_info": extra_info(c),
                "options": {
                    "disable_gc": False,
                    "timer": c.clock or "time.perf_counter",
                    "min_rounds": 1,
                    "max_time": (run.run.settings or {}).get("max_time_per_case"),
                    "min_time": None,
                    "precision": None,
                    "confidence": None,
                    "warmup": True,
                },
                "stats": pytest_benchmark_stats(samples, int(c.calls_per_sample or 1)),
            }
        )
    return {
        "machine_info": machine_info(run),
        "commit_info": commit_info(run),
        "benchmarks": benchmarks,
        "datetime": run.run.finished_at or run.run.started_at,
        "version": pb_version,
    }


# ----------------------------------------------------------------------------- Bencher, github-action-benchmark


def to_bmf(run: RunResult) -> dict[str, Any]:
    """Bencher Metric Format: benchmark name -> measure slug -> {value, lower_value, upper_value}."""
    out: dict[str, Any] = {}
    for c, t in _measured(run):
        measures: dict[str, Any] = {
            "latency": {
                "value": t.median * 1e9,
                "lower_value": t.ci95_low * 1e9,
                "upper_value": t.ci95_high * 1e9,
            }
        }
        if c.tokens_per_s:
            # Throughput over the median; its bounds follow from the latency's CI.
            tokens = c.tokens_per_s * t.median
            measures["throughput"] = {
                "value": c.tokens_per_s,
                "lower_value": tokens / t.ci95_high,
                "upper_value": tokens / t.ci95_low,
            }
        if c.peak_memory_bytes is not None:
            measures["peak-memory"] = {"value": float(c.peak_memory_bytes)}
        if c.energy_j is not None:
            measures["energy"] = {"value": c.energy_j}
        out[bench_name(c)] = measures
    return out


def to_github_action_benchmark(run: RunResult) -> list[dict[str, Any]]:
    """github-action-benchmark `tool: customSmallerIsBetter`: one entry per case and metric."""
    out: list[dict[str, Any]] = []
    for c, t in _measured(run):
        half = max(t.median - t.ci95_low, t.ci95_high - t.median)
        extra = f"case_id {c.case_id}; n={t.n} samples; stable={c.stable}; run {run.run.run_id}"
        out.append(
            {
                "name": f"{bench_name(c)} time",
                "unit": "ms",
                "value": t.median * 1e3,
                "range": f"± {half * 1e3:.4g}",
                "extra": extra,
            }
        )
        if c.peak_memory_bytes is not None:
            out.append(
                {
                    "name": f"{bench_name(c)} peak memory",
                    "unit": "MiB",
                    "value": c.peak_memory_bytes / 2**20,
                    "extra": f"case_id {c.case_id}; {c.memory_method}",
                }
            )
    return out


# The formats, by the name `bench export --format` takes: adding one is a function above and a line here.
EXPORTERS: dict[str, Callable[[RunResult], Any]] = {
    "pytest-benchmark": to_pytest_benchmark,
    "bmf": to_bmf,
    "github-action-benchmark": to_github_action_benchmark,
}
FORMATS = tuple(EXPORTERS)


def export(run: RunResult, fmt: str) -> Any:
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    return EXPORTERS[fmt](run)


# ----------------------------------------------------------------------------- importing pytest-benchmark


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
    ours = mi.get("attnbench") or {}
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
        git={"commit": ci.get("id"), "dirty": ci.get("dirty")},
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
                pytest_benchmark={"name": bench.get("name"), "fullname": bench.get("fullname"), "group": group},
                **given,
            )
        )
    return RunResult(path, run, cases)
