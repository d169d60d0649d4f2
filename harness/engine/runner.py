"""A run: expand the sweep, run each case through an executor, write every record at once."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from attnbench.backends.base import DTYPES
from attnbench.backends.peaks import fraction_of_peak
from attnbench.core import interrupts
from attnbench.core.cases import Case, Sweep
from attnbench.core.environment import fingerprint
from attnbench.core.errors import UserError
from attnbench.core.nodes import case_node, describe_node
from attnbench.core.registry import get_backend, get_workload
from attnbench.core.results import CASE_SCHEMA, RUN_SCHEMA, RunWriter, load_run
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.base import Outcome
from attnbench.engine.expand import expand
from attnbench.engine.identity import workload_hash
from attnbench.engine.memory_fit import memory_refusal
from attnbench.engine.passes import PASSES_FILE, save_pass, saved_passes
from attnbench.engine.passes import merge as merge_passes
from attnbench.engine.turns import DriverGone, gate_from_env
from attnbench.workloads.base import Shape

STOPPING = ("oom", "timeout")  # statuses after which a curve's longer lengths are skipped


class Executor(Protocol):
    name: str

    def warm(self) -> float: ...

    def run(self, case: Case) -> Outcome: ...

    def abandon(self) -> None: ...


class ConcurrentExecutor(Executor, Protocol):
    """An executor that runs several cases at once, on other machines (attnbench.engine.executors.ray).

    The Runner submits the next case of every scaling curve and records outcomes in the
    order they finish; a curve has one case in flight at a time, so its longer lengths are
    still skipped after an oom or timeout. Availability and the memory fit are the
    executor's to judge, since the driver's own host says nothing about the nodes'.
    """

    def cannot_run(self, case: Case) -> str | None: ...

    def submit(self, case: Case) -> None: ...

    def next_finished(self) -> tuple[Case, Outcome]: ...


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
        # Source and configuration of what is measured: `bench compare` reports a case whose
        # hash differs as changed instead of comparing numbers of different code.
        "workload_hash": workload_hash(cls, case.params_dict),
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
        "transform": case.transform,
        "transform_details": None,
        "fidelity": None,
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
        "energy_per_token_j": None,
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
    record["bytes_per_s"] = record["analytic_min_bytes"] / median if record.get("analytic_min_bytes") else None
    record["fraction_of_peak"] = fraction_of_peak(
        r["device"].get("peaks"), record["dtype"], record["flops_per_s"], record["bytes_per_s"]
    )
    tokens = record["batch"] * record["seq_len"]
    record["energy_per_token_j"] = record["energy_j"] / tokens if record["energy_j"] is not None else None
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
    for key in ("transform_details", "fidelity"):
        if key in r:
            record[key] = r[key]
    for key in (
        "prepare_s",
        "memory_details",
        "energy_details",
        "attention_ops",
        "backend_details",
        "profile",
        "machine_check",
        "passes",
        "block_samples",
        "turns",
    ):
        if r.get(key) is not None:
            record[key] = r[key]
    return record


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
        self._local_node: dict[str, Any] | None = None
        # case_id -> (case, record, outcomes of its passes so far, wall seconds so far)
        self._pending: dict[str, tuple[Case, dict[str, Any], list[Outcome], float]] = {}
        self._gate = gate_from_env()  # bench ab: each worker phase waits for its turn
        if hasattr(executor, "gate"):  # and its timing worker for a turn per block of samples
            executor.gate = self._gate

    def _unavailable(self, backend: str) -> str | None:
        if backend not in self._availability:
            avail = get_backend(backend).availability()
            self._availability[backend] = None if avail.available else avail.reason or "unavailable"
        return self._availability[backend]

    def _pre_check(self, case: Case) -> tuple[str, str] | None:
        """(status, reason) for a case that must not start a worker, or None."""
        concurrent = _is_concurrent(self.executor)
        if concurrent:
            unavailable = self.executor.cannot_run(case)  # type: ignore[attr-defined]
            if unavailable:
                return "unsupported", unavailable
        else:
            unavailable = self._unavailable(case.backend)
            if unavailable:
                return "unsupported", f"backend {case.backend} is not available here: {unavailable}"
        stopped = self._stopped_at.get(_curve(case))
        if stopped and case.seq_len > stopped[0]:
            n, case_id, status = stopped
            what = "ran out of memory" if status == "oom" else "timed out"
            return "skipped", f"{case.variant} {what} at n={n} (case {case_id}), so longer lengths are skipped"
        refused = None if concurrent else memory_refusal(case)  # a remote node checks its own memory
        return ("skipped", refused) if refused else None

    def _note_node(self, record: dict[str, Any], outcome: Outcome) -> None:
        """Record where the case ran; run.json lists every node once, with its host fingerprint."""
        if outcome.node is None and _is_concurrent(self.executor):
            record["node"] = None  # it never reached a node (e.g. none could run it)
            return
        if outcome.node is None:
            if self._local_node is None:
                self._local_node = describe_node()
            outcome.node = self._local_node
        record["node"] = case_node(outcome.node)
        nodes = self.run.setdefault("nodes", [])
        entry = next((n for n in nodes if n.get("id") == outcome.node["id"]), None)
        if entry is None:
            entry = {k: v for k, v in outcome.node.items() if k != "accelerators"}
            entry["devices"] = []
            nodes.append(entry)
        device = record.get("device")
        if device and device not in entry["devices"]:
            entry["devices"].append(device)
        entry["cases"] = entry.get("cases", 0) + 1
        self._writer.save()

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

    def _execute_concurrent(self, todo: list[Case]) -> int:
        """Curves side by side; within a curve, a length starts when the shorter one has ended."""
        executor: ConcurrentExecutor = self.executor  # type: ignore[assignment]
        waiting: dict[tuple, deque[Case]] = {}
        for case in todo:  # expand() lists each curve by increasing length
            waiting.setdefault(_curve(case), deque()).append(case)
        in_flight: dict[tuple, tuple[dict[str, Any], float]] = {}
        recorded = 0
        while waiting or in_flight:
            interrupts.check()
            for key in [k for k in waiting if k not in in_flight]:
                queue = waiting[key]
                while queue and key not in in_flight:
                    case = queue.popleft()
                    self.progress.case_started(case)
                    record = base_record(self.run["run_id"], case)
                    refused = self._pre_check(case)
                    if refused:
                        status, reason = refused
                        record.update(status=status, reason=reason, energy_reason=f"case {status}", wall_s=0.0)
                        self._append(case, record)
                        recorded += 1
                    else:
                        executor.submit(case)
                        in_flight[key] = (record, time.perf_counter())
                if not queue:
                    del waiting[key]
            if not in_flight:
                continue
            case, outcome = executor.next_finished()
            record, started = in_flight.pop(_curve(case))
            record = finish_record(record, outcome)
            self._add_device(outcome)
            self._note_node(record, outcome)
            if outcome.status in STOPPING:
                self._note_stop(case, outcome.status)
            record["wall_s"] = time.perf_counter() - started  # queueing on the cluster included
            self._append(case, record)
            recorded += 1
        return recorded

    def _append(self, case: Case, record: dict[str, Any]) -> None:
        record["finished_at"] = now_iso()
        self._writer.append(record)  # on disk as soon as the case ends
        self.progress.case_finished(case, record)

    def _finish(self, case: Case, record: dict[str, Any], outcome: Outcome, wall_s: float) -> None:
        record = finish_record(record, outcome)
        self._add_device(outcome)
        self._note_node(record, outcome)
        if outcome.status in STOPPING:
            self._note_stop(case, outcome.status)
        record["wall_s"] = wall_s
        self._append(case, record)

    def _execute_serial(self, todo: list[Case]) -> int:
        """Each case in turn; with passes > 1, the cases that passed the first pass are timed
        again in later passes over the list, and recorded when their last pass ends."""
        passes = self.settings.passes
        recorded = 0
        resumed = saved_passes(self.folder) if passes > 1 else {}
        for case in todo:
            if case.case_id in resumed:  # its first passes ran before the driver stopped
                outcomes, wall = resumed[case.case_id]
                record = base_record(self.run["run_id"], case)
                self._pending[case.case_id] = (case, record, outcomes[:passes], wall)
                continue
            self.progress.case_started(case)
            record = base_record(self.run["run_id"], case)
            refused = self._pre_check(case)
            started = time.perf_counter()
            if refused:
                status, reason = refused
                record.update(status=status, reason=reason, energy_reason=f"case {status}", wall_s=0.0)
                self._append(case, record)
                recorded += 1
                continue
            outcome = self._in_turn(case, self.executor.run)
            if outcome.status == "ok" and passes > 1:
                wall = time.perf_counter() - started
                save_pass(self.folder, case.case_id, 1, outcome, wall)
                self._pending[case.case_id] = (case, record, [outcome], wall)
                continue
            self._finish(case, record, outcome, time.perf_counter() - started)
            recorded += 1
        for number in range(2, passes + 1):
            for case_id in list(self._pending):
                case, record, outcomes, wall = self._pending[case_id]
                if len(outcomes) >= number:  # resumed with this pass already done
                    continue
                self.progress.case_started(case)
                started = time.perf_counter()
                outcome = self._in_turn(case, self.executor.run_pass)  # type: ignore[attr-defined]  # local only
                wall += time.perf_counter() - started
                if outcome.status != "ok":
                    # A case that fails in a later pass is recorded as failing: flaky is not fine.
                    del self._pending[case_id]
                    outcome.reason = f"pass {number} of {passes}: {outcome.reason}"
                    outcome.result = {}
                    self._finish(case, record, outcome, wall)
                    recorded += 1
                    continue
                save_pass(self.folder, case_id, number, outcome, time.perf_counter() - started)
                outcomes.append(outcome)
                self._pending[case_id] = (case, record, outcomes, wall)
        recorded += self._flush_pending(None)
        return recorded

    def _in_turn(self, case: Case, phase: Callable[[Case], Outcome]) -> Outcome:
        """A worker phase, on its turn when bench ab interleaves this run with another."""
        interrupts.check()
        with self._gate.phase(case.case_id):
            outcome = phase(case)
        interrupts.check()  # interrupted during the phase: stop before recording its outcome
        if outcome.status != "ok" and (outcome.reason or "").startswith(DriverGone.__name__):
            raise DriverGone(outcome.reason)  # the driver stopped while the worker waited: stop, resumable
        return outcome

    def _flush_pending(self, why: str | None) -> int:
        """Record the cases still waiting for passes: all done, or the run was interrupted."""
        pending = self._pending
        for case, record, outcomes, wall in pending.values():
            outcome = merge_passes(outcomes, self.settings.target_rel_ci)
            if why is not None:
                outcome.result["stable"] = False
                outcome.result["notes"] = [
                    f"{why} after {len(outcomes)} of {self.settings.passes} passes",
                    *outcome.result["notes"],
                ]
            self._finish(case, record, outcome, wall)
        count = len(pending)
        self._pending = {}
        return count

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
        if self.settings.passes > 1 and _is_concurrent(self.executor):
            raise UserError(
                f"passes = {self.settings.passes} needs the local executor (a case's passes are spread over one "
                "machine's run); drop --passes or run without --executor ray"
            )
        self.progress.start(len(cases), len(cases) - len(todo))
        recorded = 0
        try:
            with interrupts.noted():
                interrupts.check()
                if todo:
                    self.run["worker_server_start_s"] = self.executor.warm()
                    describe = getattr(self.executor, "describe", None)
                    if describe is not None:  # e.g. the Ray cluster the run was given
                        self.run[self.executor.name] = describe()
                        self._writer.save()
                if _is_concurrent(self.executor):
                    recorded = self._execute_concurrent(todo)
                    todo = []
                recorded += self._execute_serial(todo)
        except KeyboardInterrupt:
            self.executor.abandon()
            self._flush_pending("interrupted")
            self.run["status"] = "interrupted"
            self.run["finished_at"] = None
            self._writer.save()
            self._writer.close()
            self.progress.stop()
            raise
        self.progress.stop()
        (self.folder / PASSES_FILE).unlink(missing_ok=True)  # every pass is in a record now
        self.run["status"] = "complete"
        self.run["finished_at"] = now_iso()
        self._writer.save()
        self._writer.close()
        return recorded


def _is_concurrent(executor: Executor) -> bool:
    return callable(getattr(executor, "submit", None)) and callable(getattr(executor, "next_finished", None))


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
        rec.extra.get("transform", "none"),
    )


def read_run_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "run.json").read_text())
