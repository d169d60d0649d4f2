"""The run folder: writing it case by case, and reading it back.

Layout (the public contract; docs/result-format.md describes it, attnbench.core.record owns
the records' format):
    <run folder>/run.json      the run record: environment, sweep, status
    <run folder>/cases.jsonl   one case record per line, appended and fsynced as each case ends
    <run folder>/passes.jsonl  with passes > 1 only: each finished pass of a case, before its
                               record is complete (attnbench.engine.passes); not part of the contract
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.core.errors import UserError
from attnbench.core.record import CaseRecord, RunRecord

RUN_FILE = "run.json"
CASES_FILE = "cases.jsonl"


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

    def __init__(self, folder: Path, run: RunRecord) -> None:
        self.folder = folder
        self.run = run
        self.dropped_fragment = _drop_torn_line(folder / CASES_FILE)
        self._cases = open(folder / CASES_FILE, "a")  # noqa: SIM115 - held for the run

    @classmethod
    def create(cls, folder: Path, run: RunRecord) -> RunWriter:
        folder.mkdir(parents=True, exist_ok=True)
        writer = cls(folder, run)
        writer.save()
        return writer

    def save(self, run: RunRecord | None = None) -> None:
        """Write run.json again: the given record, else the last one saved."""
        if run is not None:
            self.run = run
        _write_json_atomic(self.folder / RUN_FILE, self.run.to_json())

    def append(self, record: CaseRecord) -> None:
        self._cases.write(json.dumps(record.to_json(), sort_keys=False) + "\n")
        self._cases.flush()
        os.fsync(self._cases.fileno())

    def close(self) -> None:
        self._cases.close()


def _drop_torn_line(path: Path) -> int:
    """Cut a last line that a killed run left without its newline (a power cut, a full disk):
    appending after it would glue the next record to it and make the file unreadable. Its case
    was never recorded, so a resume runs it again. Returns the bytes dropped."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep = size
        while keep > 0:  # back to just after the last newline (records are a few KiB)
            step = min(keep, 1 << 16)
            f.seek(keep - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = keep - step + newline + 1
                break
            keep -= step
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


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
class RunResult:
    folder: Path
    run: RunRecord
    cases: list[CaseRecord]


def load_run(folder: str | Path) -> RunResult:
    """Read a run folder back into records; refuses unknown schema versions with a clear message."""
    folder = Path(folder)
    run_path = folder / RUN_FILE
    if not run_path.is_file():
        raise UserError(f"{folder} is not a run folder: {RUN_FILE} is missing")
    try:
        data = json.loads(run_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{run_path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    run = RunRecord.from_json(data, str(run_path))
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
                cases.append(CaseRecord.from_json(rec, where))
    return RunResult(folder, run, cases)
