"""The run history: every finished run in one SQLite file, queryable over time.

`results/history.sqlite` by default; `--history PATH` or ATTNBENCH_HISTORY moves it
("off" turns recording off). The file is opened in WAL mode with a busy timeout and
every write is one IMMEDIATE transaction, so several runs finishing at once (parallel
CI jobs, a Ray cluster's driver and a local run) serialise instead of failing or losing
rows. WAL needs a local filesystem: do not put the history on NFS.

Each run keeps its run.json and each case its full JSON record beside indexed columns,
so a run can be read back from the history alone (`bench compare latest~1 latest` on a
CI runner that only restored the history) and re-exported as a run folder.

Runs carry their branch and commit time (run.json `git`; schema 2, which adds both columns
to a history written before). `latest`/`latest~N` count the runs of one branch (`--branch`,
by default the branch of the checkout attnbench runs from; `any`: every run), so a pull
request's run is never main's baseline; runs whose branch is unknown (recorded before
attnbench kept branches, or on a detached HEAD outside CI) count on every branch. `bisect`
walks one branch's runs of a case in commit order for the first step past the threshold
`bench compare` judges by.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.core import strict_json
from attnbench.core.errors import UserError
from attnbench.core.record import CaseRecord, RunRecord
from attnbench.core.results import RunResult, load_run

HISTORY_ENV = "ATTNBENCH_HISTORY"
DEFAULT_HISTORY = Path("results") / "history.sqlite"
DISABLED = ("off", "none", "")
SCHEMA_VERSION = 2  # 2: runs.branch and runs.commit_time
ANY_BRANCH = "any"  # --branch any: every run, whatever its branch
BUSY_TIMEOUT_S = 120.0

DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    suite       TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,
    hostname    TEXT,
    cpu         TEXT,
    git_commit  TEXT,
    git_dirty   INTEGER,
    origin      TEXT NOT NULL,          -- attnbench | pytest-benchmark
    source      TEXT,                   -- where it was ingested from
    ingested_at TEXT NOT NULL,
    run_json    TEXT NOT NULL,
    branch      TEXT,                   -- run.json git.branch (schema 2)
    commit_time TEXT                    -- run.json git.commit_time (schema 2)
);
CREATE TABLE IF NOT EXISTS cases (
    run_id            TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    case_id           TEXT NOT NULL,
    variant           TEXT NOT NULL,
    backend           TEXT,
    dtype             TEXT,
    mode              TEXT,
    scope             TEXT,
    seq_len           INTEGER,
    status            TEXT NOT NULL,
    median_s          REAL,
    ci95_low          REAL,
    ci95_high         REAL,
    n_samples         INTEGER,
    tokens_per_s      REAL,
    flops_per_s       REAL,
    peak_memory_bytes INTEGER,
    energy_j          REAL,
    stable            INTEGER,
    workload_hash     TEXT,
    record_json       TEXT NOT NULL,
    PRIMARY KEY (run_id, case_id)
);
CREATE INDEX IF NOT EXISTS cases_by_case ON cases(case_id);
CREATE INDEX IF NOT EXISTS cases_by_variant ON cases(variant, seq_len);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs(suite, started_at);
"""
# Columns schema 2 added to `runs`, filled from each stored run.json when a history is migrated.
ADDED_RUN_COLUMNS = ("branch", "commit_time")
INDEX_V2 = "CREATE INDEX IF NOT EXISTS runs_by_branch ON runs(branch, started_at)"
RUN_COLUMNS = (
    "run_id suite started_at finished_at status hostname cpu git_commit git_dirty origin source ingested_at run_json "
    "branch commit_time"
).split()

# Metrics `bench history show` can plot: name -> (SQL column, unit, scale for display).
METRICS = {
    "time": ("median_s", "ms", 1e3),
    "tokens_per_s": ("tokens_per_s", "tokens/s", 1.0),
    "flops_per_s": ("flops_per_s", "GFLOP/s", 1e-9),
    "memory": ("peak_memory_bytes", "MiB", 1 / 2**20),
    "energy": ("energy_j", "mJ", 1e3),
}


def history_path(explicit: str | Path | None = None) -> Path | None:
    """Where the history lives: --history, else ATTNBENCH_HISTORY, else results/history.sqlite.
    None when turned off ("off")."""
    value = str(explicit) if explicit is not None else os.environ.get(HISTORY_ENV)
    if value is None:
        return DEFAULT_HISTORY
    if value.strip().lower() in DISABLED:
        return None
    return Path(value).expanduser()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _utc(stamp: str | None) -> str | None:
    """An ISO 8601 time in UTC, as the project writes them, so times compare as text; an
    unreadable one is kept as written."""
    if not stamp:
        return None
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if when.tzinfo is None:  # the project writes offsets; a time without one is taken as UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


# A run on the branch asked for, or one whose branch is unknown: recorded before attnbench kept
# branches (an old history keeps working) or on a detached HEAD outside CI.
BRANCH_CLAUSE = "(r.branch = ? OR r.branch IS NULL)"


def branch_filter(flag: str | None) -> str | None:
    """--branch as the history filters by it: a branch name; `any` -> None (every run);
    absent -> the branch of the checkout attnbench runs from, the one its runs record (None,
    every run, when that is unknown)."""
    if flag is None:
        from attnbench.core.environment import git_branch

        return git_branch()
    flag = flag.strip()
    if not flag:
        raise UserError(f"--branch needs a branch name, or '{ANY_BRANCH}' for every branch")
    return None if flag == ANY_BRANCH else flag


@dataclass(frozen=True)
class RunRow:
    run_id: str
    suite: str
    started_at: str
    status: str
    hostname: str | None
    cpu: str | None
    git_commit: str | None
    git_dirty: bool | None
    branch: str | None
    commit_time: str | None
    origin: str
    source: str | None
    cases: int
    ok: int


class History:
    """One SQLite history file. Open it with `History.open(path)`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: Path, create: bool = True) -> History:
        if not create and not path.is_file():
            raise UserError(
                f"no history at {path}; runs are recorded there when they finish, or add some with "
                f"`bench history ingest DIR` (choose another file with --history or {HISTORY_ENV})"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the history {path}: {exc}; choose another with --history") from None
        history = cls(path, conn)
        try:
            history._setup()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"{path} is not a usable attnbench history ({exc}); move it away or pick another") from None
        return history

    def _setup(self) -> None:
        c = self.conn
        c.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # WAL: readers never block the writer and a crash mid-write leaves the file intact.
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            sys.stderr.write(f"attnbench: warning: {self.path} could not use WAL mode (got {mode})\n")
        c.execute("PRAGMA synchronous = FULL")
        c.execute("PRAGMA foreign_keys = ON")
        with self.transaction():
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} was written by a newer attnbench (history schema {version}, this one reads "
                    f"up to {SCHEMA_VERSION}); upgrade attnbench"
                )
            # One statement at a time: executescript() would commit the open transaction.
            for statement in filter(str.strip, DDL.split(";")):
                c.execute(statement)
            self._migrate()
            c.execute(INDEX_V2)
            if version < SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate(self) -> None:
        """Schema 1 -> 2 (inside _setup's transaction): add the branch and commit-time columns,
        filled from each run's stored run.json where it holds them (null otherwise)."""
        c = self.conn
        have = {row[1] for row in c.execute("PRAGMA table_info(runs)")}
        missing = [name for name in ADDED_RUN_COLUMNS if name not in have]
        if not missing:
            return
        for name in missing:
            c.execute(f"ALTER TABLE runs ADD COLUMN {name} TEXT")
        filled = []
        for run_id, run_json in c.execute("SELECT run_id, run_json FROM runs").fetchall():
            try:
                git = json.loads(run_json).get("git") or {}
            except (ValueError, AttributeError):
                continue
            if git.get("branch") is not None or git.get("commit_time") is not None:
                filled.append((git.get("branch"), _utc(git.get("commit_time")), run_id))
        c.executemany("UPDATE runs SET branch = ?, commit_time = ? WHERE run_id = ?", filled)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front (waits up to the busy timeout)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------------- writing

    def ingest(self, result: RunResult, origin: str = "attnbench", source: str | None = None) -> bool:
        """Add (or replace, e.g. after a resume) one run and all its cases. True if it was new."""
        info = result.run
        git = info.git or {}
        rows = [_case_row(info.run_id, c) for c in result.cases]
        with self.transaction() as c:
            existed = c.execute("SELECT 1 FROM runs WHERE run_id = ?", (info.run_id,)).fetchone() is not None
            c.execute("DELETE FROM cases WHERE run_id = ?", (info.run_id,))
            c.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({','.join('?' * len(RUN_COLUMNS))})",
                (
                    info.run_id,
                    info.suite,
                    info.started_at,
                    info.finished_at,
                    info.status,
                    info.host.get("hostname"),
                    info.host.get("cpu"),
                    git.get("commit"),
                    None if git.get("dirty") is None else int(bool(git["dirty"])),
                    origin,
                    source if source is not None else str(result.folder),
                    _now(),
                    strict_json.dumps(info.to_json()),
                    git.get("branch"),
                    _utc(git.get("commit_time")),
                ),
            )
            c.executemany(f"INSERT INTO cases VALUES ({','.join('?' * 20)})", rows)
        return not existed

    # ------------------------------------------------------------------------- reading

    def runs(
        self,
        suite: str | None = None,
        limit: int | None = None,
        complete_only: bool = False,
        branch: str | None = None,
    ) -> list[RunRow]:
        """Runs, newest first; with `branch`, that branch's runs and those of unknown branch."""
        where, args = [], []
        if suite:
            where.append("r.suite = ?")
            args.append(suite)
        if complete_only:
            where.append("r.status = 'complete'")
        if branch is not None:
            where.append(BRANCH_CLAUSE)
            args.append(branch)
        sql = (
            "SELECT r.run_id, r.suite, r.started_at, r.status, r.hostname, r.cpu, r.git_commit, r.git_dirty, "
            "r.branch, r.commit_time, r.origin, r.source, COUNT(c.case_id), COALESCE(SUM(c.status = 'ok'), 0) "
            "FROM runs r "
            "LEFT JOIN cases c ON c.run_id = r.run_id "
            + (f"WHERE {' AND '.join(where)} " if where else "")
            + "GROUP BY r.run_id ORDER BY r.started_at DESC, r.ingested_at DESC, r.run_id DESC"
            + (f" LIMIT {int(limit)}" if limit else "")
        )
        out = []
        for row in self.conn.execute(sql, args):
            dirty = None if row[7] is None else bool(row[7])
            out.append(RunRow(*row[:7], dirty, *row[8:]))  # type: ignore[arg-type]
        return out

    def resolve(self, ref: str, suite: str | None = None, branch: str | None = None) -> str:
        """A run reference -> run_id: `latest`, `latest~N` (complete runs, newest first, of
        `suite` and of `branch` (branch_filter) if given), a run id, or a unique prefix of one."""
        m = re.fullmatch(r"latest(?:~(\d+))?", ref)
        if m:
            back = int(m.group(1) or 0)
            runs = self.runs(suite=suite, complete_only=True, limit=back + 1, branch=branch)
            if len(runs) <= back:
                where = (f" of suite '{suite}'" if suite else "") + (f" on branch '{branch}'" if branch else "")
                others = ""
                if branch is not None:
                    elsewhere = len(self.runs(suite=suite, complete_only=True)) - len(runs)
                    others = (
                        f" ({elsewhere} more on other branches: --branch {ANY_BRANCH} counts them)" if elsewhere else ""
                    )
                raise UserError(
                    f"'{ref}' needs {back + 1} complete run(s){where} in the history {self.path}, which holds "
                    f"{len(runs)}{others}; run more, `bench history ingest` some, or name a run folder"
                )
            return runs[back].run_id
        exact = self.conn.execute("SELECT run_id FROM runs WHERE run_id = ?", (ref,)).fetchone()
        if exact:
            return exact[0]
        like = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found = [r[0] for r in self.conn.execute("SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\'", (like,))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(
                f"'{ref}' matches {len(found)} runs in {self.path} ({', '.join(found[:3])}, ...); be more specific"
            )
        raise UserError(
            f"'{ref}' is neither a run folder nor a run in the history {self.path}; "
            "see `bench history list` (references: latest, latest~1, a run id)"
        )

    def load(self, run_id: str) -> RunResult:
        """A run read back from the history, through the same schema readers as run folders."""
        row = self.conn.execute("SELECT run_json, source FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"run {run_id} is not in the history {self.path}")
        where = f"{self.path}:{run_id}"
        run = RunRecord.from_json(json.loads(row[0]), where)
        cases = [
            CaseRecord.from_json(json.loads(record_json), where)
            for (record_json,) in self.conn.execute(
                "SELECT record_json FROM cases WHERE run_id = ? ORDER BY rowid", (run_id,)
            )
        ]
        return RunResult(Path(row[1] or f"history:{run_id}"), run, cases)

    def trend(
        self,
        metric: str,
        case_id: str | None = None,
        variant: str | None = None,
        seq_len: int | None = None,
        suite: str | None = None,
        backend: str | None = None,
        limit: int | None = None,
        branch: str | None = None,
    ) -> list[dict[str, Any]]:
        """One row per (run, case) with the metric, oldest first; ok cases only; with `branch`,
        that branch's runs and those of unknown branch."""
        column = METRICS[metric][0]
        where = ["c.status = 'ok'", f"c.{column} IS NOT NULL"]
        args: list[Any] = []
        for clause, value in (
            ("c.case_id = ?", case_id),
            ("c.variant = ?", variant),
            ("c.seq_len = ?", seq_len),
            ("r.suite = ?", suite),
            ("c.backend = ?", backend),
            (BRANCH_CLAUSE, branch),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (
            f"SELECT r.run_id, r.started_at, r.git_commit, r.branch, r.hostname, c.case_id, c.variant, c.seq_len, "
            f"c.{column}, c.ci95_low, c.ci95_high, c.stable, c.workload_hash, c.backend, c.dtype, c.mode, c.scope "
            f"FROM cases c JOIN runs r ON r.run_id = c.run_id WHERE {' AND '.join(where)} "
            "ORDER BY r.started_at, c.seq_len, c.case_id"
        )
        keys = (
            "run_id started_at git_commit branch hostname case_id variant seq_len value ci95_low ci95_high stable "
            "workload_hash backend dtype mode scope"
        ).split()
        rows = [dict(zip(keys, r, strict=True)) for r in self.conn.execute(sql, args)]
        if metric != "time":
            for r in rows:
                r["ci95_low"] = r["ci95_high"] = None
        if limit:
            runs = sorted({r["started_at"] + r["run_id"] for r in rows})[-limit:]
            keep = set(runs)
            rows = [r for r in rows if r["started_at"] + r["run_id"] in keep]
        return rows

    # ------------------------------------------------------------------------- bisecting

    def case_id(self, given: str) -> str:
        """A case_id in the history from the id or a unique prefix of one."""
        if self.conn.execute("SELECT 1 FROM cases WHERE case_id = ? LIMIT 1", (given,)).fetchone():
            return given
        like = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found = [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT case_id FROM cases WHERE case_id LIKE ? ESCAPE '\\' ORDER BY case_id LIMIT 4", (like,)
            )
        ]
        if len(found) == 1:
            return found[0]
        if found:
            more = ", ..." if len(found) > 3 else ""
            raise UserError(
                f"case '{given}' matches several cases in {self.path} ({', '.join(found[:3])}{more}); be more specific"
            )
        raise UserError(f"no case '{given}' in the history {self.path}; see `bench history show` for case ids")

    def bisect(
        self,
        metric: str,
        case: str,
        branch: str | None = None,
        suite: str | None = None,
        threshold: float | None = None,
    ) -> Bisection:
        """The first run of `branch` (branch_filter) at which a case's metric moved past the
        threshold: each run, in commit order (commit time; the start time where unknown), is
        judged against the first as `bench compare` judges a case (compare_case, the suite's
        [compare] thresholds of the newest run, `threshold` replacing the metric's), and the
        first regression or improvement is the step, with the run before it."""
        from attnbench.analysis.compare import compare_case, suite_compare_config

        if metric not in BISECT_METRICS:
            raise UserError(f"bisect measures {', '.join(BISECT_METRICS)}, not '{metric}'")
        case_id = self.case_id(case)
        column = METRICS[metric][0]
        where, args = ["c.case_id = ?", "c.status = 'ok'", f"c.{column} IS NOT NULL"], [case_id]
        for clause, value in (("r.suite = ?", suite), (BRANCH_CLAUSE, branch)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (
            "SELECT r.run_id, r.git_commit, r.git_dirty, r.commit_time, r.started_at, r.branch, r.run_json, "
            f"c.record_json, c.{column}, c.ci95_low, c.ci95_high "
            f"FROM cases c JOIN runs r ON r.run_id = c.run_id WHERE {' AND '.join(where)}"
        )
        points = []
        for row in self.conn.execute(sql, args):
            run_id, commit, dirty, commit_time, started_at, run_branch, run_json, record_json, value, lo, hi = row
            stored = f"{self.path}:{run_id}"
            points.append(
                BisectRun(
                    run_id=run_id,
                    git_commit=commit,
                    git_dirty=None if dirty is None else bool(dirty),
                    commit_time=commit_time,
                    started_at=started_at,
                    branch=run_branch,
                    value=value,
                    ci95_low=lo if metric == "time" else None,
                    ci95_high=hi if metric == "time" else None,
                    run=RunRecord.from_json(json.loads(run_json), stored),
                    record=CaseRecord.from_json(json.loads(record_json), stored),
                )
            )
        points.sort(key=lambda p: (_utc(p.commit_time or p.started_at) or "", _utc(p.started_at) or "", p.run_id))
        on = f" on branch '{branch}'" if branch else ""
        if len(points) < 2:
            raise UserError(
                f"bisect needs 2 or more runs measuring {metric} of {case_id}{on} in {self.path}, which holds "
                f"{len(points)}" + (f" (--branch {ANY_BRANCH} counts every branch)" if branch else "")
            )
        config = suite_compare_config(points[-1].run)
        if threshold is not None:
            config = config.with_overrides(**{metric: threshold})
        walked = {
            "metric": metric,
            "case_id": case_id,
            "branch": branch,
            "runs": len(points),
            "last": points[-1],
            "config_source": config.source,
        }
        reference, notes = points[0], []
        for i, point in enumerate(points[1:], start=1):
            cmp, _ = compare_case(reference.record, point.record, config)
            if cmp.verdict == "changed":  # another definition: its runs are a new series
                notes.append(f"{cmp.reason} at run {point.run_id}: judged against that run from there on")
                reference = point
                continue
            change = getattr(cmp, metric)
            if change is not None and change.verdict in ("regression", "improvement"):
                before = points[i - 1]
                return Bisection(
                    **walked,
                    first=reference,
                    threshold=change.threshold,
                    before=before,
                    after=point,
                    verdict=change.verdict,
                    change=change.ratio,
                    step=point.value / before.value if before.value else None,
                    notes=(*notes, *_step_notes(before, point, reference, points[-1], metric, config)),
                )
        th = getattr(config.for_case(case_id, reference.record.variant), metric)
        return Bisection(**walked, first=reference, threshold=th, notes=tuple(notes))


def _case_row(run_id: str, c: CaseRecord) -> tuple:
    t = c.time_s
    return (
        run_id,
        c.case_id,
        c.variant,
        c.backend,
        c.dtype,
        c.mode,
        c.scope,
        c.seq_len,
        c.status,
        t.median if t else None,
        t.ci95_low if t else None,
        t.ci95_high if t else None,
        t.n if t else None,
        c.tokens_per_s,
        c.flops_per_s,
        c.peak_memory_bytes,
        c.energy_j,
        None if c.stable is None else int(bool(c.stable)),
        c.workload_hash,
        strict_json.dumps(c.to_json()),
    )


# ----------------------------------------------------------------------------- bisecting

BISECT_METRICS = ("time", "memory", "energy")  # the metrics bench compare gives a verdict on
BISECT_SCHEMA = "attnbench.bisect/1"  # `bench history bisect --json` (docs/result-format.md)


@dataclass(frozen=True)
class BisectRun:
    """One run of the case bisected: where it sits in the branch and what it measured."""

    run_id: str
    git_commit: str | None
    git_dirty: bool | None
    commit_time: str | None
    started_at: str
    branch: str | None
    value: float  # the metric: median seconds per call, peak bytes, joules per call
    ci95_low: float | None  # the median's 95% CI (time only)
    ci95_high: float | None
    run: RunRecord
    record: CaseRecord

    def to_json(self) -> dict[str, Any]:
        keys = "run_id git_commit git_dirty commit_time started_at branch value ci95_low ci95_high".split()
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class Bisection:
    """What `bench history bisect` found: the runs walked, and the step (None: none found)."""

    metric: str
    case_id: str
    branch: str | None  # the branch walked; None: every branch
    runs: int
    first: BisectRun  # the run the others were judged against (the first, or the first after a definition change)
    last: BisectRun
    threshold: float | None
    config_source: str
    before: BisectRun | None = None  # the last run before the step
    after: BisectRun | None = None  # the first run past it
    verdict: str | None = None  # regression | improvement
    change: float | None = None  # after / first
    step: float | None = None  # after / before
    notes: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.after is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": BISECT_SCHEMA, "found": self.found}
        for name in ("metric", "case_id", "branch", "runs", "threshold", "config_source"):
            out[name] = getattr(self, name)
        for name in ("first", "last", "before", "after"):
            point = getattr(self, name)
            out[name] = point.to_json() if point is not None else None
        out.update(verdict=self.verdict, change=self.change, step=self.step, notes=list(self.notes))
        return out


def _step_notes(
    before: BisectRun, after: BisectRun, first: BisectRun, last: BisectRun, metric: str, config: Any
) -> list[str]:
    """What else explains the step, and whether it lasted."""
    from attnbench.analysis.compare import compare_case
    from attnbench.analysis.guards import environment_differences

    notes = []
    if before.git_commit and before.git_commit == after.git_commit:
        notes.append("the same commit on both sides: the host or the environment moved, not the code")
    refusals, _ = environment_differences(before.run, after.run)
    if refusals:
        notes.append("the environment changed between these two runs: " + "; ".join(refusals))
    if last.run_id != after.run_id:
        change = getattr(compare_case(first.record, last.record, config)[0], metric)
        if change is not None and change.verdict in ("regression", "improvement"):
            notes.append(f"the newest run, {last.run_id}, is still past it ({change.ratio - 1:+.1%} against the first)")
        elif change is not None and change.ratio is not None:
            notes.append(f"the newest run, {last.run_id}, is not past it ({change.ratio - 1:+.1%} against the first)")
    return notes


# ----------------------------------------------------------------------------- ingesting files


@dataclass(frozen=True)
class IngestReport:
    added: list[str]
    replaced: list[str]
    skipped: list[tuple[str, str]]  # (path, why)


def find_inputs(paths: list[Path]) -> list[Path]:
    """Run folders (any folder holding run.json, searched recursively) and .json files."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist; give run folders, folders of runs, or pytest-benchmark JSON files")
        if path.is_file() or (path / "run.json").is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.rglob("run.json"))
    return list(dict.fromkeys(found))


def ingest_paths(history: History, paths: list[Path], include_incomplete: bool = False) -> IngestReport:
    from attnbench.analysis.importers import import_pytest_benchmark

    added: list[str] = []
    replaced: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path in find_inputs(paths):
        try:
            if path.is_file():
                if path.name == "run.json":
                    path = path.parent
                else:
                    result, origin = import_pytest_benchmark(path), "pytest-benchmark"
            if path.is_dir():
                result, origin = load_run(path), "attnbench"
        except UserError as exc:
            skipped.append((str(path), str(exc)))
            continue
        if result.run.status != "complete" and not include_incomplete:
            skipped.append((str(path), f"run status is {result.run.status}; finish it with bench run --resume"))
            continue
        new = history.ingest(result, origin=origin, source=str(path.resolve()))
        (added if new else replaced).append(result.run.run_id)
    return IngestReport(added, replaced, skipped)


def record_finished_run(folder: Path, explicit: str | Path | None) -> tuple[Path | None, str | None]:
    """After `bench run`: add the run to the history. Returns where it was recorded (None with
    the history off), or why it was not: a failure never loses the run, which stays in its
    folder (add it later with `bench history ingest`). The command prints either."""
    try:
        path = history_path(explicit)
        if path is None:
            return None, None
        with History.open(path) as history:
            history.ingest(load_run(folder), source=str(folder.resolve()))
        return path, None
    except Exception as exc:  # the run is on disk whatever happens here
        return None, f"{type(exc).__name__}: {exc}"


def export_run(result: RunResult, folder: Path) -> None:
    """Write a run read from the history back out as a run folder (e.g. to pin a baseline)."""
    from attnbench.core.results import CASES_FILE, RUN_FILE, check_writable

    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} already holds files; choose an empty folder")
    check_writable(folder)
    (folder / RUN_FILE).write_text(strict_json.dumps(result.run.to_json(), indent=2) + "\n")
    with open(folder / CASES_FILE, "w") as f:
        for c in result.cases:
            f.write(strict_json.dumps(c.to_json()) + "\n")
