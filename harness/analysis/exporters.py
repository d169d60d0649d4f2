"""Results in other tools' formats, so users keep their dashboards.

- pytest-benchmark JSON, written as pytest-benchmark writes it (`pytest --benchmark-json`):
  its `options` keys, its `machine_info` (its own function, where the run was made on this
  machine and interpreter) and `commit_info`, and the names the pytest plugin gives the same
  cases (`pytest --attnbench-suite`), with the raw samples as `stats.data`. attnbench's own
  fields go where pytest-benchmark reads nothing: each benchmark's `extra_info`;
- Bencher Metric Format (BMF) JSON: `latency` in nanoseconds with the median's 95% CI as
  lower/upper values, `throughput` in tokens/s, `peak-memory` in bytes and `energy` in joules
  per call, each case named as Bencher's own pytest adapter names it (the pytest `fullname`);
- github-action-benchmark: `customSmallerIsBetter` (time, peak memory) and, in a file of its
  own, `customBiggerIsBetter` (throughput): lists of {name, unit, value, range, extra}.

Reading pytest-benchmark files back is attnbench.analysis.importers.

A case without a CI (imported from a pytest-benchmark file saved without its samples) gets
no bounds in BMF and no `range` in github-action-benchmark (both formats make them
optional); the latter's `extra` says why.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
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
    """A readable, unique benchmark name for github-action-benchmark's charts (kept as it was,
    so a dashboard's history goes on): what ran, and the case_id for what it exactly was."""
    return f"{c.variant}[{c.backend}/{c.dtype}/{c.mode}/{c.scope}/n={c.seq_len}] {c.case_id}"


def pytest_group(c: CaseRecord) -> str:
    """The group the pytest plugin gives a case (attnbench.pytest_plugin.feed_benchmark)."""
    return f"{c.variant} {c.backend}/{c.dtype}/{c.mode}/{c.scope}"


def pytest_fullname(suite: str, c: CaseRecord) -> str:
    """The case's pytest node id, pytest-benchmark's `fullname`, as `pytest --attnbench-suite
    SUITE` makes it (items named by case_id under a collector `attnbench[SUITE]` whose parent is
    the session, whose node id is empty). Bencher's pytest adapter names a benchmark by this, so
    BMF uses it too: one case is one Bencher benchmark whichever way it got there. A case
    imported from a pytest-benchmark file keeps the fullname it had there."""
    imported = (c.pytest_benchmark or {}).get("fullname")
    return imported or f"::attnbench[{suite}]::{c.case_id}"


def extra_info(c: CaseRecord) -> dict[str, Any]:
    data = {"schema": c.schema, "run_id": c.run_id, "status": c.status}
    for key in (*IDENTITY_FIELDS, *MEASURE_FIELDS):
        data[key] = getattr(c, key)
    return data


def run_info(run: RunResult) -> dict[str, Any]:
    """What the run record says of the run as a whole, in each benchmark's extra_info["run"]
    (pytest-benchmark compares machine_info, so it stays exactly pytest-benchmark's)."""
    r = run.run
    return {"run_id": r.run_id, "suite": r.suite, "host": r.host, "packages": r.packages, "devices": r.devices}


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


# The keys of a benchmark's `options`, in the order pytest-benchmark's fixture writes them
# (BenchmarkFixture._make_stats), and the version that added a key: a file has exactly the
# keys of the pytest-benchmark whose version it names.
OPTION_KEYS = ("disable_gc", "timer", "min_rounds", "max_time", "min_time", "precision", "confidence", "warmup")
OPTIONS_SINCE = {"precision": (5, 3), "confidence": (5, 3)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def option_keys(pb_version: str) -> tuple[str, ...]:
    have = _version(pb_version)
    return tuple(k for k in OPTION_KEYS if have >= OPTIONS_SINCE.get(k, ()))


def _timer(clock: str | None) -> str:
    """pytest-benchmark writes its timer's function name (`perf_counter` for time.perf_counter);
    the record's clock starts with the dotted name of what timed it."""
    m = re.match(r"[A-Za-z_][\w.]*", clock or "")
    return m.group(0).rsplit(".", 1)[-1] if m else "perf_counter"


def benchmark_options(run: RunResult, c: CaseRecord, keys: tuple[str, ...]) -> dict[str, Any]:
    """A case's `options` with pytest-benchmark's keys and value types, saying what attnbench did
    in its terms: the sampling budget is max_time, a sample's least duration min_time, the
    fewest samples min_rounds, the median's CI target precision (at 95% confidence), the
    warm-up calls warmup (False: none). A case imported from a pytest-benchmark file keeps the
    options it had there (None for a key its pytest-benchmark did not write yet)."""
    imported = c.pytest_benchmark or {}
    if isinstance(imported.get("options"), dict):
        return {k: imported["options"].get(k) for k in keys}
    from attnbench.core.settings import RunSettings, SamplingPolicy

    settings = run.run.settings or {}
    target = settings.get("target_rel_ci")
    calls = (c.warmup or {}).get("calls")
    derived: dict[str, Any] = {
        "disable_gc": False,  # the workers leave the garbage collector on while timing
        "timer": _timer(c.clock),
        "min_rounds": SamplingPolicy.floor_samples,
        "max_time": float(settings.get("max_time_per_case") or RunSettings.max_time_per_case),
        "min_time": float(SamplingPolicy.min_sample_s),
        "precision": float(target) if target else None,
        "confidence": 0.95 if target else None,
        "warmup": int(calls) if calls else False,
    }
    return {k: derived[k] for k in keys}


# What must be equal for this machine and interpreter to be the ones the run was made on.
SAME_HOST_KEYS = ("hostname", "os", "python", "cpu", "arch")


def machine_info(run: RunResult) -> dict[str, Any]:
    """pytest-benchmark's machine_info of the machine the run was made on.

    Exported there (same host, OS, CPU and Python), it is what pytest-benchmark itself writes
    (its pytest_benchmark_generate_machine_info, py-cpuinfo included), so `--benchmark-compare`
    against its own files finds the same machine. Exported elsewhere, the same keys hold what
    the run record says, and null what it does not (the compiler, the build, the release)."""
    from attnbench.core.environment import host_info

    h = run.run.host or {}
    here = host_info()
    if all(h.get(k) == here.get(k) for k in SAME_HOST_KEYS):
        from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info

        return pytest_benchmark_generate_machine_info()
    return {
        "node": h.get("hostname"),
        "processor": None,
        "machine": h.get("arch"),
        "python_compiler": None,
        "python_implementation": None,
        "python_implementation_version": None,
        "python_version": h.get("python"),
        "python_build": None,
        "release": None,
        "system": None,
        "cpu": {"brand_raw": h.get("cpu"), "count": h.get("logical_cores")},
    }


# The checkout attnbench runs from (this file is harness/analysis/exporters.py); where the
# run's commit is looked up when its record lacks the commit's time or branch.
CHECKOUT = Path(__file__).resolve().parents[2]


def _git(src: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit_details(commit: str, src: Path = CHECKOUT) -> dict[str, str]:
    """The commit's committer and author time (ISO 8601, as pytest-benchmark reads them) and,
    where it is what the checkout has out now, the branch: {} where git or the commit is not here."""
    if not re.fullmatch(r"[0-9a-f]{4,64}", commit):
        return {}
    shown = _git(src, "show", "-s", "--format=%cI%n%aI", f"{commit}^{{commit}}")
    if not shown:
        return {}
    lines = shown.splitlines()
    out = {"time": lines[0], "author_time": lines[-1]}
    head = _git(src, "rev-parse", "HEAD")
    if head and head.startswith(commit):
        branch = _git(src, "rev-parse", "--abbrev-ref", "HEAD")
        if branch:
            out["branch"] = "(detached head)" if branch == "HEAD" else branch
    return out


def commit_info(run: RunResult, src: Path = CHECKOUT) -> dict[str, Any]:
    """pytest-benchmark's commit_info (utils.get_commit_info) of the run's commit.

    The time and branch come from the run record where it has them (`commit_time`,
    `author_time`, `branch` in run.json's git), else from git, where the commit is in this
    checkout; what neither knows takes pytest-benchmark's own fallback (time null, branch
    "(unknown)"), as does a run made outside a git checkout (id "unversioned")."""
    git = run.run.git or {}
    commit = git.get("commit")
    local = git_commit_details(commit, src) if commit and not (git.get("commit_time") and git.get("branch")) else {}
    return {
        "id": commit or "unversioned",
        "time": git.get("commit_time") or local.get("time"),
        "author_time": git.get("author_time") or local.get("author_time"),
        "dirty": bool(git.get("dirty")),
        "project": "attnbench",
        "branch": git.get("branch") or local.get("branch") or "(unknown)",
    }


def _pytest_benchmark_entry(run: RunResult, c: CaseRecord, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """One benchmark as the pytest plugin has pytest-benchmark write the same case, or as the
    file it was imported from had it; None for a case with neither samples nor a stored summary."""
    imported = c.pytest_benchmark or {}
    if c.samples:
        stats = pytest_benchmark_stats(c.samples, int(c.calls_per_sample or 1))
    elif isinstance(imported.get("stats"), dict):
        stats = dict(imported["stats"])  # saved without its samples: its summary as it was
    else:
        return None
    return {
        "group": imported["group"] if "group" in imported else pytest_group(c),
        "name": imported.get("name") or c.case_id,
        "fullname": pytest_fullname(run.run.suite, c),
        # The plugin's items are not parametrized, so pytest-benchmark writes no params for them.
        "params": imported.get("params"),
        "param": imported.get("param"),
        "extra_info": {**extra_info(c), "run": run_info(run)},
        "options": benchmark_options(run, c, keys),
        "stats": stats,
    }


def to_pytest_benchmark(run: RunResult) -> dict[str, Any]:
    from pytest_benchmark import __version__ as pb_version

    keys = option_keys(pb_version)
    entries = (_pytest_benchmark_entry(run, c, keys) for c, _ in _measured(run))
    return {
        "machine_info": machine_info(run),
        "commit_info": commit_info(run),
        "benchmarks": [e for e in entries if e is not None],
        "datetime": run.run.finished_at or run.run.started_at,
        "version": pb_version,
    }


# ----------------------------------------------------------------------------- Bencher, github-action-benchmark


def _throughput_bounds(c: CaseRecord, t: TimeStats) -> tuple[float, float] | None:
    """tokens/s at the ends of the median's CI (the tokens per call over the CI's times)."""
    ci = _ci(t)
    if ci is None or ci[0] <= 0 or not c.tokens_per_s:
        return None
    tokens = c.tokens_per_s * t.median
    return tokens / ci[1], tokens / ci[0]


def to_bmf(run: RunResult) -> dict[str, Any]:
    """Bencher Metric Format: benchmark name -> measure slug -> {value, lower_value, upper_value}.
    `latency` and `throughput` are measures every Bencher project has; `peak-memory` and `energy`
    are created on first use without units unless created beforehand (README, Nightly tracking)."""
    out: dict[str, Any] = {}
    for c, t in _measured(run):
        ci = _ci(t)
        latency: dict[str, float] = {"value": t.median * 1e9}
        if ci is not None:  # BMF's bounds are optional: left out where there is no CI
            latency.update(lower_value=ci[0] * 1e9, upper_value=ci[1] * 1e9)
        measures: dict[str, Any] = {"latency": latency}
        if c.tokens_per_s:
            throughput: dict[str, float] = {"value": float(c.tokens_per_s)}
            bounds = _throughput_bounds(c, t)
            if bounds is not None:
                throughput.update(lower_value=bounds[0], upper_value=bounds[1])
            measures["throughput"] = throughput
        if c.peak_memory_bytes is not None:
            measures["peak-memory"] = {"value": float(c.peak_memory_bytes)}
        if c.energy_j is not None:
            measures["energy"] = {"value": float(c.energy_j)}
        out[pytest_fullname(run.run.suite, c)] = measures
    return out


def _extra(run: RunResult, c: CaseRecord, t: TimeStats) -> str:
    extra = f"case_id {c.case_id}; n={t.n} samples; stable={c.stable}; run {run.run.run_id}"
    return extra if _ci(t) is not None else f"{extra}; {NO_CI}"


def _range(value: float, low: float, high: float, scale: float) -> str:
    return f"± {max(value - low, high - value) * scale:.4g}"


def to_github_action_benchmark(run: RunResult) -> list[dict[str, Any]]:
    """github-action-benchmark `tool: customSmallerIsBetter`: time and peak memory per case."""
    out: list[dict[str, Any]] = []
    for c, t in _measured(run):
        ci = _ci(t)
        entry: dict[str, Any] = {"name": f"{bench_name(c)} time", "unit": "ms", "value": t.median * 1e3}
        if ci is not None:  # `range` is optional: left out, with the reason in extra, where there is no CI
            entry["range"] = _range(t.median, ci[0], ci[1], 1e3)
        entry["extra"] = _extra(run, c, t)
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


def to_github_action_benchmark_throughput(run: RunResult) -> list[dict[str, Any]]:
    """github-action-benchmark `tool: customBiggerIsBetter`: tokens/s per case. The action takes
    one tool per file, so this is a file of its own (`bench export --format github-action-benchmark
    -o F.json` writes it beside F.json as F-throughput.json)."""
    out: list[dict[str, Any]] = []
    for c, t in _measured(run):
        if not c.tokens_per_s:
            continue
        entry: dict[str, Any] = {"name": f"{bench_name(c)} throughput", "unit": "tokens/s"}
        entry["value"] = float(c.tokens_per_s)
        bounds = _throughput_bounds(c, t)
        if bounds is not None:
            entry["range"] = _range(entry["value"], bounds[0], bounds[1], 1.0)
        entry["extra"] = _extra(run, c, t)
        out.append(entry)
    return out


# The formats, by the name `bench export --format` takes: adding one is a function above and a line here.
EXPORTERS: dict[str, Callable[[RunResult], Any]] = {
    "pytest-benchmark": to_pytest_benchmark,
    "bmf": to_bmf,
    "github-action-benchmark": to_github_action_benchmark,
    "github-action-benchmark-throughput": to_github_action_benchmark_throughput,
}
FORMATS = tuple(EXPORTERS)
# A format whose output another tool wants beside it, in a file of its own: `bench export -o F.json`
# also writes that format to F<suffix>.json (format -> (companion format, suffix)).
COMPANIONS: dict[str, tuple[str, str]] = {
    "github-action-benchmark": ("github-action-benchmark-throughput", "-throughput"),
}


def export(run: RunResult, fmt: str) -> Any:
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    return EXPORTERS[fmt](run)
