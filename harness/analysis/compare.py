"""Comparing two runs case by case: effect size *and* significance, then a verdict.

Per case present in both runs (matched by case_id), each metric's change and the case's
verdict (attnbench.analysis.verdicts): time judged one of the ways of
attnbench.analysis.time_judgements, chosen per case from its two records, on the raw
samples by default or, on request (time_basis="host-relative"), on samples over the host's
reference kernel; then the host's guards (attnbench.analysis.guards) turn a change the host
can explain into `unstable`. The host-relative ratio is reported either way
(host_relative_ratio), and the spread of the host's reference kernel over both runs with
each change (machine_drift). Given earlier runs of the same suite (the history), each
case's run-to-run noise floor comes from them (attnbench.analysis.noise). Two runs that are
the sides of one `bench ab` are judged as a pair, case by case.

Cases only in the current run are `new`, only in the baseline `missing`; a case whose
workload source or parameters changed (`workload_hash`) is `changed` and not compared;
one that ran in the baseline but failed now (error, timeout, oom) is `failed`. Runs from
different environments are refused unless asked for.

Rendering (tables, markdown) is attnbench.report.compare_tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.analysis.guards import HostEvidence, environment_differences, host_guard, workload_differences
from attnbench.analysis.noise import MIN_RUNS, NO_HISTORY, NoiseEstimate
from attnbench.analysis.noise import estimate as estimate_noise
from attnbench.analysis.significance import percentile_ci
from attnbench.analysis.time_judgements import (
    RAW,
    RELATIVE,
    TIME_BASES,
    choose_judgement,
    interleaved,
    judged_basis,
)
from attnbench.analysis.verdicts import MetricChange, case_verdict, energy_change, memory_change, time_change
from attnbench.core import machine_check
from attnbench.core.errors import UserError
from attnbench.core.thresholds import CompareConfig, Thresholds, load_compare_config, parse_compare_config, read_toml

if TYPE_CHECKING:
    from attnbench.core.record import CaseRecord, RunRecord
    from attnbench.core.results import RunResult

COMPARE_SCHEMA = "attnbench.compare/1"
VERDICTS = ("regression", "failed", "unstable", "improvement", "no change", "changed", "new", "missing")
FAILING = ("regression", "failed")  # what --fail-on-regression fails on
FAILED_STATUSES = ("error", "timeout", "oom")


# ----------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class CaseComparison:
    case_id: str
    variant: str
    label: str
    seq_len: int | None
    verdict: str
    reason: str | None
    time: MetricChange | None = None
    memory: MetricChange | None = None
    energy: MetricChange | None = None
    baseline_status: str | None = None
    current_status: str | None = None
    thresholds: Thresholds | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


@dataclass(frozen=True)
class Summary:
    """Geometric means of the per-case ratios over every case compared."""

    cases_compared: int
    time_geomean: float | None
    time_ci_low: float | None
    time_ci_high: float | None
    memory_geomean: float | None
    memory_cases: int  # cases in memory_geomean: those whose relative threshold decides (not the byte floor)
    counts: dict[str, int]


@dataclass(frozen=True)
class Comparison:
    baseline: dict[str, Any]  # run_id, suite, started_at, git, host summary, source
    current: dict[str, Any]
    environment_notes: list[str]
    environment_refusals: list[str]  # non-empty only when --allow-env-mismatch let it through
    config_source: str
    cases: list[CaseComparison]
    summary: Summary

    @property
    def failing(self) -> list[CaseComparison]:
        return [c for c in self.cases if c.verdict in FAILING]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": COMPARE_SCHEMA,
            "baseline": self.baseline,
            "current": self.current,
            "environment_notes": self.environment_notes,
            "environment_refusals": self.environment_refusals,
            "config_source": self.config_source,
            "summary": asdict(self.summary),
            "cases": [c.to_json() for c in self.cases],
        }


def suite_compare_config(run: RunRecord) -> CompareConfig:
    """The [compare] table of the suite a run was made with, when its file can be found:
    a built-in suite by name, or the --suite file named in the run's argv if it still exists."""
    from importlib import resources

    argv = list(run.argv)
    path: Path | None = None
    if "--suite" in argv[:-1]:
        given = argv[argv.index("--suite") + 1]
        if given.endswith(".toml") or "/" in given:
            path = Path(given)
    if path is not None:
        return load_compare_config(path) if path.is_file() else CompareConfig()
    builtin = resources.files("attnbench.engine.suite_files").joinpath(f"{run.suite}.toml")
    if builtin.is_file():
        data = read_toml(Path(str(builtin)))
        return parse_compare_config(data.get("compare", {}), f"built-in suite {run.suite}")
    return CompareConfig()


# ----------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class Judging:
    """How every case of two runs is judged, decided once for the two runs by compare_runs."""

    time_basis: str = RAW  # the basis asked for; a case without host-relative samples in both runs is raw
    paired: bool = False  # the runs are the two sides of one bench ab (interleaved)
    noise: Mapping[str, NoiseEstimate] = field(default_factory=dict)  # per case_id; absent: no floor
    host_fast: Mapping[Any, float] = field(default_factory=dict)  # the host's fastest reference reading, per threads


def case_label(rec: CaseRecord, shown: Sequence[str] = ()) -> str:
    """The case in one line: variant, the parameters named in `shown` (those that tell it from
    the other cases of its variant), and where it ran."""
    params = ", ".join(f"{k}={rec.params[k]}" for k in shown if k in rec.params)
    what = f"{rec.variant} {params}" if params else rec.variant
    return f"{what} {rec.backend}/{rec.dtype}/{rec.mode}/{rec.scope} n={rec.seq_len}"


def varying_params(records: Iterable[CaseRecord]) -> dict[str, tuple[str, ...]]:
    """Per variant, the parameters whose values differ between its cases at one length (two
    windows, say); parameters derived from the length alone do not count."""
    seen: dict[tuple[str, int], dict[str, set[str]]] = {}
    for r in records:
        at = seen.setdefault((r.variant, r.seq_len), {})
        for k, v in r.params.items():
            at.setdefault(k, set()).add(repr(v))
    out: dict[str, set[str]] = {}
    for (variant, _n), params in seen.items():
        out.setdefault(variant, set()).update(k for k, vs in params.items() if len(vs) > 1)
    return {variant: tuple(sorted(names)) for variant, names in out.items()}


def compare_case(
    base: CaseRecord | None, cur: CaseRecord | None, config: CompareConfig, judging: Judging | None = None
) -> tuple[CaseComparison, Any]:
    """One case's comparison, and the bootstrap replicates of its time ratio (None when not timed in both)."""
    judging = judging or Judging()
    rec = cur or base
    assert rec is not None
    common = {
        "case_id": rec.case_id,
        "variant": rec.variant,
        "label": case_label(rec),
        "seq_len": rec.seq_len,
        "baseline_status": base.status if base else None,
        "current_status": cur.status if cur else None,
    }
    th = config.for_case(rec.case_id, rec.variant)
    if base is None:
        return CaseComparison(**common, verdict="new", reason="not in the baseline run"), None
    if cur is None:
        return CaseComparison(**common, verdict="missing", reason="not in the current run"), None
    if base.status == "ok" and cur.status in FAILED_STATUSES:
        return CaseComparison(**common, verdict="failed", reason=f"now {cur.status}: {cur.reason}"), None
    if base.status != "ok" or cur.status != "ok":
        if base.status != "ok" and cur.status == "ok":
            reason = f"the baseline has no measurement ({base.status})"
            return CaseComparison(**common, verdict="new", reason=reason), None
        return CaseComparison(
            **common, verdict="missing", reason=f"not measured: {base.status} → {cur.status}: {cur.reason}"
        ), None
    changed, unknown = workload_differences(base, cur)
    if changed:
        return CaseComparison(**common, verdict="changed", reason=changed), None
    judgement = choose_judgement(base, cur, judging.time_basis, judging.paired)
    time, reps = time_change(base, cur, th, judgement)
    threads = (rec.machine_check or {}).get("threads")
    host = HostEvidence.of(base, cur, judging.noise.get(rec.case_id), judging.host_fast.get(threads))
    time = host_guard(time, th, judgement, host)
    memory = memory_change(base, cur, th)
    energy = energy_change(base, cur, th)
    verdict, reasons = case_verdict(time, memory, energy)
    if unknown:
        reasons.append(unknown)
    return (
        CaseComparison(
            **common,
            verdict=verdict,
            reason="; ".join(reasons) or None,
            time=time,
            memory=memory,
            energy=energy,
            thresholds=th,
        ),
        reps,
    )


# ----------------------------------------------------------------------------- two runs


def _run_summary(result: RunResult, ref: str) -> dict[str, Any]:
    info = result.run
    return {
        "ref": ref,
        "run_id": info.run_id,
        "suite": info.suite,
        "started_at": info.started_at,
        "status": info.status,
        "git": info.git,
        "hostname": info.host.get("hostname"),
        "cpu": info.host.get("cpu"),
        "source": str(result.folder),
    }


def _geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _memory_ratio_counts(case: CaseComparison) -> bool:
    """Whether a case's memory ratio enters the summary's geometric mean: only where its
    relative threshold, not the byte floor, decides. Below that, page jitter moves small
    peaks by tens of percent (an A/A of two cases of 0.2 and 2.8 MiB gave -8.7%)."""
    m, th = case.memory, case.thresholds or Thresholds()
    if m is None or m.ratio is None or m.baseline is None:
        return False
    return m.baseline * th.memory >= th.memory_floor_bytes


def _noise_floors(
    baseline: RunResult, current: RunResult, noise_runs: Sequence[RunResult], time_basis: str, notes: list[str]
) -> dict[str, NoiseEstimate]:
    """Each case's run-to-run noise from the other runs of unchanged code on this kind of host
    (the baseline among them), or NO_HISTORY for every case when they are too few."""
    others = [r for r in noise_runs if r.run.run_id != current.run.run_id]
    others = [r for r in others if not environment_differences(r.run, current.run)[0]]
    if all(r.run.run_id != baseline.run.run_id for r in others):
        others.append(baseline)
    bases = {
        c.case_id: judged_basis(b, c, time_basis)
        for c in current.cases
        if (b := next((r for r in baseline.cases if r.case_id == c.case_id), None)) is not None
    }
    noise, used = estimate_noise(others, current, bases)
    if noise:
        notes.append(f"run-to-run noise floor from {used} other run(s) of this suite on this kind of host")
        return noise
    notes.append(
        f"no run-to-run noise floor: {used} run(s) of this suite on this kind of host, {MIN_RUNS} needed; "
        "time changes are reported but not called (unstable) until then (--noise-runs 0: judge the two "
        "runs alone)"
    )
    return {c.case_id: NO_HISTORY for c in current.cases}


def compare_runs(
    baseline: RunResult,
    current: RunResult,
    config: CompareConfig | None = None,
    allow_env_mismatch: bool = False,
    refs: tuple[str, str] = ("baseline", "current"),
    noise_runs: Sequence[RunResult] | None = None,
    time_basis: str = RAW,
) -> Comparison:
    """Compare every case of two runs. Refuses (UserError) runs from different environments
    unless allow_env_mismatch. noise_runs: other runs of unchanged code on this kind of host
    (from the history) for each case's run-to-run noise floor; None: no floor. time_basis:
    "raw" or "host-relative" (see the module's docstring)."""
    if time_basis not in TIME_BASES:
        raise UserError(f"time basis must be one of {', '.join(TIME_BASES)}, got {time_basis!r}")
    import numpy as np

    refusals, notes = environment_differences(baseline.run, current.run)
    if refusals and not allow_env_mismatch:
        raise UserError(
            f"runs {baseline.run.run_id} and {current.run.run_id} come from different environments ("
            + "; ".join(refusals)
            + "), so their timings are not comparable; compare runs from the same machine and library "
            "versions, or pass --allow-env-mismatch to compare anyway"
        )
    config = config or suite_compare_config(current.run)
    for result in (baseline, current):
        if result.run.status == "running":
            notes.append(
                f"run {result.run.run_id} has status 'running': it is still being measured (or its driver died), so "
                "cases not yet written are missing; compare it once `bench run` has finished (or --resume it)"
            )
        elif result.run.status != "complete":
            notes.append(f"run {result.run.run_id} is {result.run.status}: cases it did not finish are missing")
    noise: dict[str, NoiseEstimate] = {}
    paired = interleaved(baseline.run, current.run)
    if paired:
        notes.append(
            "the two runs took turns (bench ab): each case is judged on the pair alone, block by block (or pass by "
            "pass where a side timed whole passes in turn); "
            "runs made at other times (the history's noise floor) say nothing about a pair timed together"
        )
    elif noise_runs is not None:
        noise = _noise_floors(baseline, current, noise_runs, time_basis, notes)
    base_cases = {c.case_id: c for c in baseline.cases}
    cur_cases = {c.case_id: c for c in current.cases}
    # The host's fastest reference-kernel reading over both runs, per thread count (it runs on the case's threads).
    host_fast: dict[Any, float] = {}
    for rec in [*baseline.cases, *current.cases]:
        check = rec.machine_check
        for value in machine_check.values(check):
            key = check.get("threads")  # type: ignore[union-attr]  # values() is empty without a check
            host_fast[key] = min(value, host_fast.get(key, value))
    judging = Judging(time_basis, paired, noise, host_fast)
    results: list[CaseComparison] = []
    replicates: list[Any] = []
    shown = varying_params([*baseline.cases, *current.cases])
    for case_id in [*cur_cases, *(k for k in base_cases if k not in cur_cases)]:
        comparison, reps = compare_case(base_cases.get(case_id), cur_cases.get(case_id), config, judging)
        rec = cur_cases.get(case_id) or base_cases[case_id]
        comparison = replace(comparison, label=case_label(rec, shown.get(rec.variant, ())))
        results.append(comparison)
        if reps is not None:
            replicates.append(reps)
    timed = [c.time for c in results if c.time is not None and c.time.ratio is not None]
    relative = sum(1 for m in timed if m.basis == RELATIVE)
    if relative:
        notes.append(
            f"time judged host-relative for {relative} of {len(timed)} cases: each sample over the host's reference "
            "kernel timed around it, so the host's changes of speed cancel (base/cur ms stay raw medians)"
        )
    geo = _geomean(m.ratio for m in timed)  # type: ignore[misc]
    lo = hi = None
    if replicates:
        # The geometric mean of each bootstrap replicate across cases: a CI for the summary.
        logs = np.log(np.vstack(replicates))
        lo, hi = percentile_ci(np.exp(logs.mean(axis=0)))
    mem = [c.memory.ratio for c in results if _memory_ratio_counts(c)]
    counts = {v: sum(1 for c in results if c.verdict == v) for v in VERDICTS}
    summary = Summary(len(timed), geo, lo, hi, _geomean(mem), len(mem), counts)
    order = {v: i for i, v in enumerate(VERDICTS)}
    results.sort(key=lambda c: (order[c.verdict], c.variant, c.seq_len or 0, c.case_id))
    return Comparison(
        baseline=_run_summary(baseline, refs[0]),
        current=_run_summary(current, refs[1]),
        environment_notes=notes,
        environment_refusals=refusals,
        config_source=config.source,
        cases=results,
        summary=summary,
    )
