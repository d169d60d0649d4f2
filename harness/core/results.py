"""The run folder: writing it case by case, and reading it back.

Layout (the public contract; docs/result-format.md describes it, attnbench.core.record owns
the records' format):
    <run folder>/run.json      the run record: environment, sweep, status
    <run folder>/cases.jsonl   one case record per line, appended and fsynced as each case ends
    <run folder>/passes.jsonl  with passes > 1 only: each finished pass of a case, before its
                               record is complete (attnbench.engine.passes); not part of the contract
    <run folder>/*.torn        a torn last line set aside from the file of that name (a killed write)
    <run folder>/.lock         the writer's lock, naming its pid and host while it runs
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.core.errors import UserError, WriteFailed
from attnbench.core.record import CaseRecord, RunRecord
from attnbench.core.strict_json import dumps, finite

RUN_FILE = "run.json"
CASES_FILE = "cases.jsonl"


def _umask() -> int:
    """The process's umask. Read from /proc where Linux shows it: os.umask can only read it by
    setting it, which for an instant races with any other thread creating files."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a reader sees the old file or the new one, never half of one.
    The temp file goes whatever happens; the file gets the user's umask (mkstemp makes 0600);
    Strict JSON: a non-finite number is written as null (attnbench.core.strict_json)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(data, indent=2, sort_keys=False))
            f.write("\n")
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink at path, never writes through it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_append(path: Path) -> int:
    """An append-only file of the run folder, never through a symlink someone put there."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link; attnbench writes its results files itself") from None
        raise WriteFailed(f"cannot open {path}: {exc.strerror or exc}") from None


def _write_line(fd: int, path: Path, line: str) -> None:
    data = line.encode() + b"\n"
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        while data:  # a short write (a file-size limit) is a failure, not half a record
            written = os.write(fd, data)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[written:]
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):  # no half record left behind for the next append to glue onto
            os.ftruncate(fd, start)
        raise WriteFailed(f"cannot write to {path}: {exc.strerror or exc}") from None


def append_line(path: Path, line: str) -> None:
    """Append one JSON line to an append-only file of the run folder, synced to disk, after
    setting aside a torn last line a killed writer left (see `set_aside_torn_line`)."""
    set_aside_torn_line(path)
    fd = _open_append(path)
    try:
        _write_line(fd, path, line)
    finally:
        os.close(fd)


class RunLock:
    """Who writes a run folder: one process at a time.

    An advisory `flock` on `<folder>/.lock`, which the kernel releases when its holder dies
    however it dies, so a stale lock from a dead process is simply taken over; the file holds
    the holder's pid, host and start time, for the message a second writer gets."""

    FILE = ".lock"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.FILE
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise UserError(f"cannot lock the run folder {folder}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise UserError(
                f"{folder} is being written by {holder}; wait for it to finish, or choose another folder with --out"
            ) from None
        note = f"pid {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%dT%H:%M:%S%z')})"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, note.encode(), 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        os.ftruncate(self._fd, 0)  # the file stays: unlinking a lock file races with its next taker
        os.close(self._fd)  # closing drops the flock
        self._fd = -1


class RunWriter:
    """Owns one run folder while a run writes it: holds its lock, rewrites run.json atomically,
    appends to cases.jsonl and syncs each record to disk. Every failure to write raises
    WriteFailed naming the file and the cause."""

    def __init__(self, folder: Path, run: RunRecord) -> None:
        self.folder = folder
        self.run = run
        self._lock = RunLock(folder)
        try:
            self.torn = set_aside_torn_line(folder / CASES_FILE)
            self._cases = _open_append(folder / CASES_FILE)
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def create(cls, folder: Path, run: RunRecord) -> RunWriter:
        folder.mkdir(parents=True, exist_ok=True)
        writer = cls(folder, run)
        try:
            writer.save()
        except BaseException:
            writer.close()
            raise
        return writer

    def save(self, run: RunRecord | None = None) -> None:
        """Write run.json again: the given record, else the last one saved."""
        if run is not None:
            self.run = run
        path = self.folder / RUN_FILE
        try:
            _write_json_atomic(path, self.run.to_json())
        except OSError as exc:
            raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}") from None

    def append(self, record: CaseRecord) -> None:
        replaced: list[str] = []
        data = finite(record.to_json(), replaced=replaced)
        if replaced:  # null with the reason, never a figure strict JSON readers refuse
            data["notes"] = [*(data.get("notes") or []), *(f"{r}, written as null" for r in replaced)]
        _write_line(self._cases, self.folder / CASES_FILE, json.dumps(data, allow_nan=False))

    def close(self) -> None:
        if self._cases >= 0:
            os.close(self._cases)
            self._cases = -1
        self._lock.release()


TORN_SUFFIX = ".torn"


def set_aside_torn_line(path: Path) -> int:
    """Move a last line that a killed writer left without its newline (a power cut, a full
    disk) to `<file>.torn` beside it, then cut it from the file: appending after it would glue
    the next record to it and make the file unreadable. Its case was never recorded, so a
    resume runs it again; the bytes are kept, never silently dropped. Returns their count."""
    if not path.is_file() or path.is_symlink():
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
        f.seek(keep)
        fragment = f.read()
        side = path.with_name(path.name + TORN_SUFFIX)
        fd = _open_append(side)
        try:
            _write_line(fd, side, fragment.decode(errors="backslashreplace"))
        finally:
            os.close(fd)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def check_writable(folder: Path) -> None:
    """One clear line if the run folder cannot be made or written. The probe is a new file
    of a name nobody else uses, created exclusively: it never writes through a symlink."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
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
        data = json.loads(run_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{run_path} is not UTF-8 text; the file is damaged") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{run_path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except OSError as exc:
        raise UserError(f"cannot read {run_path}: {exc.strerror or exc}") from None
    run = RunRecord.from_json(data, str(run_path))
    cases: list[CaseRecord] = []
    cases_path = folder / CASES_FILE
    if cases_path.is_file():
        with open(cases_path, encoding="utf-8", errors="replace") as f:  # damage shows as invalid JSON
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
