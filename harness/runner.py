"""A run: expand the sweep, run each case through an executor, write every record at once."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from backends.base import DTYPES
from harness.cases import Case, Sweep, expand
from harness.environment import fingerprint
from harness.executor import Outcome
from harness.registry import get_backend, get_workload
from harness.results import CASE_SCHEMA, RUN_SCHEMA, RunWriter, load_run
from harness.settings import RunSettings
from workloads.base import Shape

MEMORY_HEADROOM = 0.9  # share of free memory a case may be expected to use
STOPPING = ("oom", "timeout")  # statuses after which a curve's longer lengths are skipped


class Executor(Protocol):
    name: str

    def warm(self) -> float: ...

    def run(self, case: Case) -> Outcome: ...

    def abandon(self) -> None: ...


class Progress(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def case_started(self, case: Case) -> None: ...

    def case_finished(self, case: Case, record: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(suite: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{suite}-{secrets.token_hex(2)}"


def new_run(run_id: str, suite: str, sweep: Sweep, settings: RunSettings, argv: list[str], executor: str) -> dict:
    env = fingerprint()
    return {
        "schema": RUN_SCHEMA,
        "run_id": run_id,
        "suite": suite,
        "started_at": now_iso(),
        "finished_at": None,
        "status": "running",
        "argv": argv,
        "git": env["git"],
        "host": env["host"],
        "packages": env["packages"],
        "devices": [],
        "executor": executor,
        "sweep": sweep.to_json(),
        "settings": settings.to_json(),
        "cases_total": None,
        "resumed_at": [],
    }


def base_record(run_id: str, case: Case) -> dict[str, Any]:
    """The fields every record has, whatever became of the case; analytic figures included."""
    cls = get_workload(case.variant)
    params = cls.make_params(case.params_dict)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    itemsize = DTYPES[case.dtype].itemsize
    return {
        "schema": CASE_SCHEMA,
        "run_id": run_id,
        "case_id": case.case_id,
        "variant": case.variant,
        "family": cls.family,
        "params": case.params_dict,
        "derived_params": list(cls.derived_params),
        "scope": case.scope,
        "backend": case.backend,
        "device": None,
        "dtype": case.dtype,
        "mode": case.mode,
        "batch": case.batch,
        "heads": case.heads,
        "head_dim": case.head_dim,
        "seq_len": case.seq_len,
        "threads": case.threads,
        "status": None,
        "reason": None,
        "time_s": None,
        "compile_s": None,
        "tokens_per_s": None,
        "flops": cls.case_flops(params, shape, case.scope, case.mode),
        "flops_per_s": None,
        "flops_executed": cls.case_flops(params, shape, case.scope, case.mode, executed=True),
        "peak_memory_bytes": None,
        "memory_method": None,
        "analytic_min_bytes": cls.case_min_bytes(params, shape, case.scope, itemsize),
        "energy_j": None,
        "energy_method": None,
        "energy_reason": None,
        "stable": None,
    }


def finish_record(record: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    record["status"] = outcome.status
    record["reason"] = outcome.reason
    record["worker"] = outcome.worker
    if outcome.traceback:
        record["traceback"] = outcome.traceback
    if outcome.status != "ok":
        record["energy_reason"] = f"case did not run to completion ({outcome.status})"
        return record
    r = outcome.result
    median = r["time_s"]["median"]
    record.update(
        device=r["device"]["name"],
        time_s=r["time_s"],
        compile_s=r["compile_s"],
        tokens_per_s=record["batch"] * record["seq_len"] / median,
        peak_memory_bytes=r["peak_memory_bytes"],
        memory_method=r["memory_method"],
        energy_j=r["energy_j"],
        energy_method=r["energy_method"],
        energy_reason=r["energy_reason"],
        stable=r["stable"],
    )
    metrics = r.get("workload_metrics") or {}
    record["workload_metrics"] = metrics
    for key in ("flops", "flops_executed"):
        if metrics.get(key) is not None:  # the workload measured what it did, e.g. ACT's halting
            record[f"analytic_{key}"] = record[key]
            record[key] = metrics[key]
    record["flops_per_s"] = record["flops"] / median
    if r.get("memory_reason"):
        record["memory_reason"] = r["memory_reason"]
    for key in (
        "first_call_s",
        "warmup",
        "calls_per_sample",
        "converged",
        "stop_reason",
        "notes",
        "clock",
        "sync",
        "backend_settings",
        "verification",
    ):
        record[key] = r[key]
    return record


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """CI cancels with SIGTERM; treat it like Ctrl-C so the run is closed properly."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Runner:
    def __init__(self, folder: Path, run: dict[str, Any], executor: Executor, progress: Progress) -> None:
        self.folder = folder
        self.run = run
        self.executor = executor
        self.progress = progress
        self.sweep = Sweep.from_json(run["sweep"])
        self.settings = RunSettings.from_json(run["settings"])
        self._availability: dict[str, str | None] = {}
        # curve -> (length, case_id, status) where it ran out of memory or time
        self._stopped_at: dict[tuple, tuple[int, str, str]] = {}

    def _unavailable(self, backend: str) -> str | None:
        if backend not in self._availability:
            avail = get_backend(backend).availability()
            self._availability[backend] = None if avail.available else avail.reason or "unavailable"
        return self._availability[backend]

    def _pre_check(self, case: Case) -> tuple[str, str] | None:
        """(status, reason) for a case that must not start a worker, or None."""
        unavailable = self._unavailable(case.backend)
        if unavailable:
            return "unsupported", f"backend {case.backend} is not available here: {unavailable}"
        stopped = self._stopped_at.get(_curve(case))
        if stopped and case.seq_len > stopped[0]:
            n, case_id, status = stopped
            what = "ran out of memory" if status == "oom" else "timed out"
            return "skipped", f"{case.variant} {what} at n={n} (case {case_id}), so longer lengths are skipped"
        cls = get_workload(case.variant)
        shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
        itemsize = DTYPES[case.dtype].itemsize
        params = cls.make_params(case.params_dict)
        need = cls.case_peak_estimate(params, shape, case.scope, itemsize, case.mode)
        need += 3 * case.batch * case.heads * case.seq_len * case.head_dim * itemsize  # inputs
        free = get_backend(case.backend).free_memory_bytes()
        if free is not None and need > MEMORY_HEADROOM * free:
            return "skipped", (
                f"needs about {need / 2**30:.1f} GiB by its analytic estimate; {free / 2**30:.1f} GiB is free"
            )
        return None

    def _note_stop(self, case: Case, status: str) -> None:
        """Longer lengths of a curve that ran out of memory or time would only do so again."""
        key = _curve(case)
        if key not in self._stopped_at or case.seq_len < self._stopped_at[key][0]:
            self._stopped_at[key] = (case.seq_len, case.case_id, status)

    def _add_device(self, outcome: Outcome) -> None:
        desc = outcome.result.get("device") if outcome.status == "ok" else None
        if desc and all(d.get("backend") != desc.get("backend") for d in self.run["devices"]):
            self.run["devices"].append(desc)
            self._writer.save()

    def execute(self) -> int:
        """Run every case not yet recorded. Returns the number of cases recorded now."""
        cases = expand(self.sweep)
        existing = load_run(self.folder).cases if (self.folder / "cases.jsonl").exists() else []
        done = {c.case_id for c in existing}
        for rec in existing:
            if rec.status in STOPPING:
                self._note_stop(_case_of(rec), rec.status)
        self.run["cases_total"] = len(cases)
        self._writer = RunWriter.create(self.folder, self.run)
        todo = [c for c in cases if c.case_id not in done]
        self.progress.start(len(cases), len(cases) - len(todo))
        recorded = 0
        try:
            with sigterm_as_interrupt():
                if todo:
                    self.run["worker_server_start_s"] = self.executor.warm()
                for case in todo:
                    self.progress.case_started(case)
                    record = base_record(self.run["run_id"], case)
                    refused = self._pre_check(case)
                    started = time.perf_counter()
                    if refused:
                        status, reason = refused
                        record.update(status=status, reason=reason, energy_reason=f"case {status}")
                    else:
                        outcome = self.executor.run(case)
                        record = finish_record(record, outcome)
                        self._add_device(outcome)
                        if outcome.status in STOPPING:
                            self._note_stop(case, outcome.status)
                    record["wall_s"] = time.perf_counter() - started
                    record["finished_at"] = now_iso()
                    self._writer.append(record)  # on disk before the next case starts
                    recorded += 1
                    self.progress.case_finished(case, record)
        except KeyboardInterrupt:
            self.executor.abandon()
            self.run["status"] = "interrupted"
            self.run["finished_at"] = None
            self._writer.save()
            self._writer.close()
            self.progress.stop()
            raise
        self.progress.stop()
        self.run["status"] = "complete"
        self.run["finished_at"] = now_iso()
        self._writer.save()
        self._writer.close()
        return recorded


def _curve(case: Case) -> tuple:
    return case.group_key(get_workload(case.variant).derived_params)


def _case_of(rec: Any) -> Case:
    params = tuple(sorted(rec.params.items()))
    return Case(
        rec.variant,
        params,
        rec.extra.get("scope", "core"),
        rec.backend,
        rec.dtype,
        rec.mode,
        rec.batch,
        rec.heads,
        rec.head_dim,
        rec.seq_len,
        rec.extra.get("threads"),
    )


def read_run_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "run.json").read_text())
