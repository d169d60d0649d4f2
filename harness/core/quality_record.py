"""The quality format: a training job (`QualityJob`) and its record, one line of quality.jsonl.

This module is the one owner of quality.jsonl, as attnbench.core.record is of run.json and
cases.jsonl: which fields a record has, in which order they are written, the schema version and
how it is read. docs/result-format.md ("quality.jsonl") describes it for people and
docs/schema/quality.schema.json for tools.

A `bench quality` run folder holds run.json (the run record, its `sweep` the variants and
lengths, its `settings` the quality settings), quality.jsonl (one record per task, case and
seed, appended as each job ends) and, with --maps, maps/ (one JSON file of attention maps per
job that wrote them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from attnbench.core.cases import Case
from attnbench.core.errors import UserError
from attnbench.core.results import append_line
from attnbench.core.strict_json import finite

QUALITY_SCHEMA = "attnbench.quality/1"
QUALITY_FILE = "quality.jsonl"
MAPS_DIR = "maps"
# ok: trained and evaluated; diverged: the loss became NaN or infinite (the step is recorded);
# the rest as a case's status.
QUALITY_STATUSES = ("ok", "diverged", "oom", "timeout", "error", "unsupported")


@dataclass(frozen=True)
class QualitySettings:
    """How every job of a quality run trains and is evaluated (a suite's [quality] table)."""

    tasks: tuple[str, ...] = ("mqar",)
    task_params: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # task -> sorted (name, value)
    steps: int = 200
    seeds: int = 3
    batch: int = 16
    lr: float = 1e-3
    layers: int = 2
    model_dim: int = 128
    heads: int = 4
    eval_examples: int = 256
    maps: bool = False

    def params_for(self, task: str) -> dict[str, Any]:
        return dict(dict(self.task_params).get(task, ()))

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tasks"] = list(self.tasks)
        d["task_params"] = {t: dict(ps) for t, ps in self.task_params}
        return d


@dataclass(frozen=True)
class QualityJob:
    """One model trained from scratch: a task, the case whose layer it stacks, one seed."""

    task: str
    task_params: tuple[tuple[str, Any], ...]  # sorted (name, value), every parameter resolved
    case: Case  # scope "layer", mode "train"; batch, heads and head_dim are the model's
    layers: int
    seed: int
    steps: int
    lr: float
    eval_examples: int
    maps: bool = False

    def config(self) -> dict[str, Any]:
        """Everything but the seed: the jobs a figure's seeds are drawn from share it."""
        return {
            "task": self.task,
            "task_params": dict(self.task_params),
            "case_id": self.case.case_id,
            "layers": self.layers,
            "steps": self.steps,
            "lr": self.lr,
            "eval_examples": self.eval_examples,
        }

    @property
    def config_id(self) -> str:
        text = json.dumps(self.config(), sort_keys=True)
        return f"{self.task}-{self.case.variant}-n{self.case.seq_len}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    @property
    def job_id(self) -> str:
        return f"{self.config_id}-s{self.seed}"

    @property
    def model_dim(self) -> int:
        return self.case.heads * self.case.head_dim


@dataclass(frozen=True, kw_only=True)
class QualityRecord:
    """One line of quality.jsonl. Figures a job did not reach are null, with `reason` saying why."""

    schema: str = QUALITY_SCHEMA
    job_id: str
    config_id: str  # the job without its seed: a figure's seeds share it
    task: str
    task_params: dict[str, Any]
    case_id: str
    variant: str
    params: dict[str, Any]
    impl: str
    transform: str
    backend: str
    dtype: str
    seq_len: int
    batch: int
    model: dict[str, Any]  # layers, model_dim, heads
    seed: int
    steps: int  # asked for
    lr: float
    status: str  # QUALITY_STATUSES
    reason: str | None = None
    # held-out figures
    accuracy: float | None = None
    chance: float | None = None  # the best input-blind guess's accuracy (attnbench.workloads.tasks)
    asked: int | None = None  # held-out positions the accuracy is over
    eval_examples: int | None = None
    learned: bool | None = None  # beats chance: one-sided binomial p < LEARNED_P
    learned_p: float | None = None
    # accuracy per dependency distance: [{"lo", "hi", "asked", "correct"}], tasks that define one
    by_distance: list[dict[str, Any]] | None = None
    # training
    steps_done: int | None = None
    diverged_at: int | None = None  # the step whose loss was not finite
    loss_first: float | None = None
    loss_final: float | None = None  # mean of the last tenth of steps
    loss_curve: list[list[float]] | None = None  # [step, loss] every few steps
    step_time_s: dict[str, Any] | None = None  # TimeStats.to_json() of the steps after the first
    first_step_s: float | None = None  # the first step: lazy initialisation and compilation
    train_wall_s: float | None = None  # the whole training, data generation included
    peak_memory_bytes: int | None = None  # one training step above the model and batch, own worker
    memory_method: str | None = None
    memory_reason: str | None = None
    device: dict[str, Any] | None = None
    worker: dict[str, Any] | None = None
    maps: str | None = None  # file under the run folder
    maps_reason: str | None = None  # why there is none, when asked for
    finished_at: str | None = None
    unknown: dict[str, Any] = field(default_factory=dict)  # keys another tool added: kept, never read

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "unknown"}
        d.update(self.unknown)
        return d

    @classmethod
    def from_json(cls, data: Any, where: str) -> QualityRecord:
        if not isinstance(data, dict):
            raise UserError(f"{where}: a quality record is a JSON object, got {type(data).__name__}")
        schema = data.get("schema")
        if schema != QUALITY_SCHEMA:
            raise UserError(f"{where}: quality schema {schema!r} is not one this attnbench reads ({QUALITY_SCHEMA})")
        known = {f.name for f in fields(cls)} - {"unknown"}
        missing = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in data
        ]
        if missing:
            raise UserError(f"{where}: the quality record lacks {', '.join(missing)}; the file is damaged")
        if data["status"] not in QUALITY_STATUSES:
            raise UserError(f"{where}: unknown quality status {data['status']!r}")
        values = {k: v for k, v in data.items() if k in known}
        return cls(**values, unknown={k: v for k, v in data.items() if k not in known})


def append_quality(folder: Path, record: QualityRecord) -> None:
    """One record, synced to disk before the next job starts."""
    append_line(folder / QUALITY_FILE, json.dumps(finite(record.to_json()), allow_nan=False))


def load_quality(folder: Path) -> list[QualityRecord]:
    """The records of a run folder's quality.jsonl ([] when it has none); a torn last line (a run
    killed mid-write) is dropped, damage elsewhere refused with one line."""
    path = folder / QUALITY_FILE
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):
                    break
                raise UserError(f"{path}:{lineno} is not valid JSON") from None
            out.append(QualityRecord.from_json(data, f"{path}:{lineno}"))
    return out
