"""The result files: writing them case by case, and reading them back with a schema check.

Layout (the public contract, see README and DESIGN.md):
    <run folder>/run.json      the run: environment, sweep, status
    <run folder>/cases.jsonl   one JSON object per case, appended and fsynced as each ends
    <run folder>/passes.jsonl  with passes > 1 only: each finished pass of a case, before its
                               record is complete (attnbench.engine.passes); not part of the contract
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from attnbench.core.errors import UserError

RUN_SCHEMA = "attnbench.run/1"
CASE_SCHEMA = "attnbench.case/1"
RUN_FILE = "run.json"
CASES_FILE = "cases.jsonl"
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunWriter:
    """Owns one run folder: run.json rewritten atomically, cases.jsonl appended and fsynced."""

    def __init__(self, folder: Path, run: dict[str, Any]) -> None:
        self.folder = folder
        self.run = run
        self._cases = open(folder / CASES_FILE, "a")  # noqa: SIM115 - held for the run

    @classmethod
    def create(cls, folder: Path, run: dict[str, Any]) -> RunWriter:
        folder.mkdir(parents=True, exist_ok=True)
        writer = cls(folder, run)
        writer.save()
        return writer

    def save(self) -> None:
        _write_json_atomic(self.folder / RUN_FILE, self.run)

    def append(self, record: dict[str, Any]) -> None:
        self._cases.write(json.dumps(record, sort_keys=False) + "\n")
        self._cases.flush()
        os.fsync(self._cases.fileno())

    def close(self) -> None:
        self._cases.close()


def check_writable(folder: Path) -> None:
    """One clear line if the run folder cannot be made or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write results to {folder}: {exc.strerror or exc}; choose another folder with --out"
        ) from None


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class RunInfo:
    schema: str
    run_id: str
    suite: str
    started_at: str
    finished_at: str | None
    status: str
    argv: list[str]
    git: dict[str, Any]
    host: dict[str, Any]
    packages: dict[str, Any]
    devices: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # sweep, settings and anything newer


@dataclass(frozen=True)
class CaseRecord:
    schema: str
    run_id: str
    case_id: str
    variant: str
    family: str
    params: dict[str, Any]
    backend: str
    device: str | None
    dtype: str
    mode: str
    batch: int
    heads: int
    head_dim: int
    seq_len: int
    status: str
    reason: str | None
    time_s: dict[str, Any] | None
    compile_s: float | None
    tokens_per_s: float | None
    flops: float | None
    flops_per_s: float | None
    peak_memory_bytes: int | None
    memory_method: str | None
    energy_j: float | None
    energy_method: str | None
    energy_reason: str | None
    stable: bool | None
    extra: dict[str, Any] = field(default_factory=dict)  # scope, threads, measurement details, ...

    @property
    def median_s(self) -> float | None:
        return self.time_s["median"] if self.time_s else None


@dataclass(frozen=True)
class RunResult:
    folder: Path
    run: RunInfo
    cases: list[CaseRecord]


def _split(cls: type, data: dict[str, Any], where: str) -> Any:
    names = [f.name for f in fields(cls) if f.name != "extra"]
    missing = [n for n in names if n not in data]
    if missing:
        raise UserError(f"{where} lacks required field(s) {', '.join(missing)}; the file is damaged")
    return cls(**{n: data[n] for n in names}, extra={k: v for k, v in data.items() if k not in names})


def _read_run_v1(data: dict[str, Any], where: str) -> RunInfo:
    return _split(RunInfo, data, where)


def _read_case_v1(data: dict[str, Any], where: str) -> CaseRecord:
    return _split(CaseRecord, data, where)


RUN_READERS = {RUN_SCHEMA: _read_run_v1}
CASE_READERS = {CASE_SCHEMA: _read_case_v1}


def _check_schema(data: Any, readers: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where} holds a JSON {type(data).__name__}, not a result object; the file is damaged")
    schema = data.get("schema")
    if schema not in readers:
        raise UserError(
            f"{where} has schema {schema!r}, which this attnbench cannot read "
            f"(it reads {', '.join(readers)}); upgrade attnbench to read newer results"
        )
    return readers[schema]


def load_run(folder: str | Path) -> RunResult:
    """Read a run folder back into objects; refuses unknown schema versions with a clear message."""
    folder = Path(folder)
    run_path = folder / RUN_FILE
    if not run_path.is_file():
        raise UserError(f"{folder} is not a run folder: {RUN_FILE} is missing")
    try:
        data = json.loads(run_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{run_path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    run = _check_schema(data, RUN_READERS, str(run_path))(data, str(run_path))
    cases: list[CaseRecord] = []
    cases_path = folder / CASES_FILE
    if cases_path.is_file():
        with open(cases_path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{cases_path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    # A run killed mid-write can leave a torn last line; earlier lines stand.
                    if not line.endswith("\n"):
                        break
                    raise UserError(f"{where} is not valid JSON") from None
                cases.append(_check_schema(rec, CASE_READERS, where)(rec, where))
    return RunResult(folder, run, cases)
