"""Results in other tools' formats, so users keep their dashboards, and one importer.

- pytest-benchmark JSON (what `pytest --benchmark-json` writes; `pytest-benchmark compare`
  and its storage read it), with the raw samples as `stats.data`;
- Bencher Metric Format (BMF) JSON: `latency` in nanoseconds with the median's 95% CI as
  lower/upper values, `throughput` in tokens/s, and `peak-memory` in bytes;
- github-action-benchmark's `customSmallerIsBetter`: a list of {name, unit, value, range, extra};
- an importer of pytest-benchmark JSON into the history (`bench history ingest out.json`),
  which restores the attnbench case identity from `extra_info` when the file came from
  this exporter or the pytest plugin.

A case without a CI (imported from a pytest-benchmark file saved without its samples) gets
no bounds in BMF and no `range` in github-action-benchmark (both formats make them
optional); the latter's `extra` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attnbench.core.errors import UserError

if TYPE_CHECKING:  # annotations only: `bench --help` reads FORMATS without loading the record model
    from attnbench.core.record import CaseRecord
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


def _ci(t: TimeStats) -> tuple[float, float] | None:
    """The median's 95% CI, or None where the record has none (an imported summary)."""
    if t.ci95_low is None or t.ci95_high is None:
        return None
    return t.ci95_low, t.ci95_high


NO_CI = "no 95% CI: imported without its samples"


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
        ci = _ci(t)
        latency: dict[str, float] = {"value": t.median * 1e9}
        if ci is not None:  # BMF's bounds are optional: left out where there is no CI
            latency.update(lower_value=ci[0] * 1e9, upper_value=ci[1] * 1e9)
        measures: dict[str, Any] = {"latency": latency}
        if c.tokens_per_s:
            # Throughput over the median; its bounds follow from the latency's CI.
            tokens = c.tokens_per_s * t.median
            throughput: dict[str, float] = {"value": c.tokens_per_s}
            if ci is not None and ci[0] > 0:
                throughput.update(lower_value=tokens / ci[1], upper_value=tokens / ci[0])
            measures["throughput"] = throughput
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
        ci = _ci(t)
        extra = f"case_id {c.case_id}; n={t.n} samples; stable={c.stable}; run {run.run.run_id}"
        entry: dict[str, Any] = {"name": f"{bench_name(c)} time", "unit": "ms", "value": t.median * 1e3}
        if ci is not None:  # `range` is optional: left out, with the reason in extra, where there is no CI
            half = max(t.median - ci[0], ci[1] - t.median)
            entry["range"] = f"± {half * 1e3:.4g}"
        else:
            extra += f"; {NO_CI}"
        entry["extra"] = extra
        out.append(entry)
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
