"""The driver of `bench quality`: a quality suite's jobs, each in the executor's workers, each
record appended to quality.jsonl as its job ends.

A quality suite is a suite file with a [quality] table (attnbench.engine.suites): its [sweep]
names the variants, implementations, lengths, backends and dtypes; [quality] the tasks and
training (QualitySettings); [quality.params.TASK] a task's parameters. Every case is the
variant's `layer`-scope block at the model's width, in training mode; each (task, case) trains
`seeds` models, seeds 0 .. seeds − 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from attnbench.core import interrupts
from attnbench.core.cases import Case
from attnbench.core.errors import UserError
from attnbench.core.quality_record import (
    MAPS_DIR,
    QualityJob,
    QualityRecord,
    QualitySettings,
    append_quality,
)
from attnbench.core.record import RunRecord
from attnbench.core.results import RunWriter
from attnbench.core.strict_json import dumps
from attnbench.engine.executors.base import Outcome
from attnbench.engine.executors.local import LocalExecutor
from attnbench.engine.runner import now_iso
from attnbench.engine.suites import Overrides, SuiteSpec, coerce_value, resolve
from attnbench.workloads.quality_model import ModelConfig
from attnbench.workloads.tasks import TASKS, get_task

QUALITY_KEYS = (*(f.name for f in fields(QualitySettings) if f.name != "task_params"), "params")
LIMITS = {"steps": 100_000, "seeds": 100, "batch": 4096, "layers": 64, "model_dim": 8192, "heads": 256}


def parse_quality(raw: dict[str, Any], source: str, flags: dict[str, Any] | None = None) -> QualitySettings:
    """A suite's [quality] table, with flags (text from the command line) over it; one clear line
    for anything wrong."""
    for key in raw:
        if key not in QUALITY_KEYS:
            raise UserError(f"{source}: unknown key '{key}' in [quality] (known: {', '.join(QUALITY_KEYS)})")
    values: dict[str, Any] = {k: v for k, v in raw.items() if k != "params"}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    values.update(given)
    defaults = QualitySettings()
    out: dict[str, Any] = {}
    for f in fields(QualitySettings):
        if f.name in ("task_params", "tasks") or f.name not in values:
            continue
        what = f"{'--' + f.name.replace('_', '-') if f.name in given else source + ': [quality] ' + f.name}"
        value = coerce_value(values[f.name], getattr(defaults, f.name), what, text=f.name in given)
        if f.name in LIMITS and not 1 <= value <= LIMITS[f.name]:
            raise UserError(f"{what} must be from 1 to {LIMITS[f.name]}, got {value}")
        if f.name == "lr" and not 0 < value < 10:
            raise UserError(f"{what} must be a learning rate between 0 and 10, got {value}")
        if f.name == "eval_examples" and not 1 <= value <= 1_000_000:
            raise UserError(f"{what} must be from 1 to 1000000, got {value}")
        out[f.name] = value
    tasks = values.get("tasks", list(defaults.tasks))
    tasks = tasks if isinstance(tasks, list) else [tasks]
    if not tasks:
        raise UserError(f"{source}: no task given; known tasks: {', '.join(sorted(TASKS))}")
    for task in tasks:
        if task not in TASKS:
            raise UserError(f"unknown task '{task}'; known: {', '.join(sorted(TASKS))}")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"{source}: a task is listed twice in tasks ({', '.join(tasks)})")
    params_raw = raw.get("params", {})
    if not isinstance(params_raw, dict):
        raise UserError(f"{source}: [quality.params] must hold one table per task, got {params_raw!r}")
    task_params = []
    for task, ps in sorted(params_raw.items()):
        if task not in TASKS:
            raise UserError(f"{source}: [quality.params.{task}] names no task; known: {', '.join(sorted(TASKS))}")
        if not isinstance(ps, dict):
            raise UserError(f"{source}: [quality.params.{task}] must be a table of parameter = value, got {ps!r}")
        task_params.append((task, tuple(sorted(ps.items()))))
    settings = QualitySettings(**out, tasks=tuple(tasks), task_params=tuple(task_params))
    try:
        ModelConfig(layers=settings.layers, model_dim=settings.model_dim, heads=settings.heads)
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
    return settings


def parse_task_params(flags: list[str], settings: QualitySettings) -> QualitySettings:
    """--task-param TASK.NAME=VALUE (repeatable) over the suite's [quality.params]."""
    params = {t: dict(ps) for t, ps in settings.task_params}
    for flag in flags:
        name, sep, value = flag.partition("=")
        task, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise UserError(f"--task-param {flag!r}: expected TASK.NAME=VALUE, e.g. retrieval.distance=64")
        if task not in TASKS:
            raise UserError(f"--task-param {flag!r}: unknown task '{task}'; known: {', '.join(sorted(TASKS))}")
        defaults = TASKS[task].default_params()
        if key not in defaults:
            raise UserError(f"--task-param {flag!r}: {task} has no parameter '{key}' (known: {', '.join(defaults)})")
        params.setdefault(task, {})[key] = coerce_value(value, defaults[key], f"--task-param {name}")
    return replace(settings, task_params=tuple((t, tuple(sorted(ps.items()))) for t, ps in sorted(params.items())))


def quality_cases(spec: SuiteSpec, over: Overrides, settings: QualitySettings) -> tuple[Any, list[Case]]:
    """The sweep and its cases: every variant's layer-scope block at the model's width, in training."""
    from attnbench.engine.expand import expand

    if over.scopes is not None or over.modes is not None:
        raise UserError("bench quality trains layer-scope blocks; --scope and --mode do not apply")
    model = replace(
        over,
        batch=[str(settings.batch)],
        heads=[str(settings.heads)],
        head_dim=[str(settings.model_dim // settings.heads)],
        modes=["train"],
        scopes=["layer"],
    )
    sweep, _ = resolve(spec, model)
    return sweep, expand(sweep)


def quality_jobs(cases: list[Case], settings: QualitySettings) -> list[QualityJob]:
    """Task by task, then case by case (each curve by length), then seed by seed. Each task's
    parameters are resolved and checked at every length first: a bad one is one clear line."""
    jobs = []
    for task in settings.tasks:
        cls = get_task(task)
        try:
            params = cls.make_params(settings.params_for(task))
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid parameters for task {task}: {exc}") from None
        resolved = tuple(sorted(_asdict(params).items()))
        for n in sorted({c.seq_len for c in cases}):
            try:
                cls(params, n)
            except ValueError as exc:
                raise UserError(f"task {task} at n={n}: {exc}") from None
        for case in cases:
            for seed in range(settings.seeds):
                jobs.append(
                    QualityJob(
                        task=task,
                        task_params=resolved,
                        case=case,
                        layers=settings.layers,
                        seed=seed,
                        steps=settings.steps,
                        lr=settings.lr,
                        eval_examples=settings.eval_examples,
                        maps=settings.maps,
                    )
                )
    return jobs


def _asdict(params: Any) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in fields(params)}


def record_of(job: QualityJob, outcome: Outcome, folder: Path) -> QualityRecord:
    """The job's record from its workers' outcome; maps, when there are any, go to their own file."""
    case = job.case
    result = dict(outcome.result or {})
    maps = result.pop("maps_data", None)
    maps_file = None
    if maps is not None:
        (folder / MAPS_DIR).mkdir(exist_ok=True)
        maps_file = f"{MAPS_DIR}/{job.job_id}.json"
        (folder / maps_file).write_text(dumps(maps))
    if job.maps and maps is None and "maps_reason" not in result and outcome.status == "ok":
        result["maps_reason"] = "the job wrote no maps"
    status = result.pop("status", outcome.status)
    reason = result.pop("reason", None) if outcome.status == "ok" else outcome.reason
    return QualityRecord(
        job_id=job.job_id,
        config_id=job.config_id,
        task=job.task,
        task_params=dict(job.task_params),
        case_id=case.case_id,
        variant=case.variant,
        params=case.params_dict,
        impl=case.impl,
        transform=case.transform,
        backend=case.backend,
        dtype=case.dtype,
        seq_len=case.seq_len,
        batch=case.batch,
        model={"layers": job.layers, "model_dim": job.model_dim, "heads": case.heads},
        seed=job.seed,
        steps=job.steps,
        lr=job.lr,
        status=status,
        reason=reason,
        worker=outcome.worker or None,
        maps=maps_file,
        finished_at=now_iso(),
        **{k: v for k, v in result.items() if k in _RESULT_FIELDS},
    )


_RESULT_FIELDS = {f.name for f in fields(QualityRecord)} - {
    "schema",
    "job_id",
    "config_id",
    "task",
    "task_params",
    "case_id",
    "variant",
    "params",
    "impl",
    "transform",
    "backend",
    "dtype",
    "seq_len",
    "batch",
    "model",
    "seed",
    "steps",
    "lr",
    "status",
    "reason",
    "worker",
    "maps",
    "finished_at",
    "unknown",
}


def run_jobs(
    folder: Path,
    run: RunRecord,
    jobs: list[QualityJob],
    executor: LocalExecutor,
    progress: Callable[[int, int, QualityJob, QualityRecord | None], None],
) -> RunRecord:
    """Every job, one after another; run.json says how far the run got (interrupted on Ctrl-C)."""
    writer = RunWriter.create(folder, replace(run, cases_total=len(jobs)))
    try:
        try:
            for i, job in enumerate(jobs, 1):
                interrupts.check()
                progress(i, len(jobs), job, None)
                began = time.perf_counter()
                outcome = executor.run_quality(job)
                outcome.worker["job_wall_s"] = time.perf_counter() - began
                record = record_of(job, outcome, folder)
                append_quality(folder, record)
                if record.device and not any(d == record.device for d in writer.run.devices):
                    writer.save(replace(writer.run, devices=[*writer.run.devices, record.device]))
                progress(i, len(jobs), job, record)
        except KeyboardInterrupt:
            executor.abandon()
            writer.save(replace(writer.run, status="interrupted"))
            raise
        done = replace(writer.run, status="complete", finished_at=now_iso())
        writer.save(done)
        return done
    finally:
        writer.close()
