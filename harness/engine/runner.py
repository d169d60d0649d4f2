"""A run: expand the sweep, run each case through an executor, write every record at once."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from attnbench.backends.base import DTYPES
from attnbench.backends.peaks import fraction_of_peak
from attnbench.core import interrupts
from attnbench.core.cases import Case, Sweep
from attnbench.core.environment import fingerprint
from attnbench.core.errors import UserError, WriteFailed
from attnbench.core.nodes import case_node, describe_node
from attnbench.core.record import CaseRecord, Measurement, RunRecord, case_fields
from attnbench.core.registry import get_backend, get_workload
from attnbench.core.results import CASES_FILE, RunWriter, load_run
from attnbench.core.settings import RunSettings
from attnbench.engine.build import impl_refusal
from attnbench.engine.executors.base import ConcurrentExecutor, Executor, Outcome
from attnbench.engine.expand import expand
from attnbench.engine.identity import definition_hash, implementation_hash, workload_hash
from attnbench.engine.memory_fit import memory_refusal
from attnbench.engine.passes import PASSES_FILE, save_pass, saved_passes
from attnbench.engine.passes import merge as merge_passes
from attnbench.engine.turns import DriverGone, gate_from_env
from attnbench.workloads.base import Shape

STOPPING = ("oom", "timeout")  # statuses after which a curve's longer lengths are skipped


class Progress(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def case_started(self, case: Case) -> None: ...

    def case_finished(self, case: Case, record: CaseRecord) -> None: ...

    def stop(self) -> None: ...


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(suite: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{suite}-{secrets.token_hex(2)}"


def new_run(run_id: str, suite: str, sweep: Sweep, settings: RunSettings, argv: list[str], executor: str) -> RunRecord:
    env = fingerprint()
    return RunRecord(
        run_id=run_id,
        suite=suite,
        started_at=now_iso(),
        finished_at=None,
        status="running",
        argv=argv,
        git=env["git"],
        host=env["host"],
        packages=env["packages"],
        devices=[],
        executor=executor,
        sweep=sweep.to_json(),
        settings=settings.to_json(),
    )


def base_record(run_id: str, case: Case, status: str, reason: str | None) -> CaseRecord:
    """The fields every record has, whatever became of the case; analytic figures included."""
    cls = get_workload(case.variant)
    params = cls.make_params(case.params_dict)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    itemsize = DTYPES[case.dtype].itemsize
    return CaseRecord(
        run_id=run_id,
        case_id=case.case_id,
        **case_fields(case),  # variant, params, scope, backend, dtype, mode, the shape, threads, transform, revision
        family=cls.family,
        derived_params=list(cls.derived_params),
        # Source and configuration of what is measured: `bench compare` reports a case whose
        # hash differs as changed instead of comparing numbers of different code.
        workload_hash=workload_hash(cls, case.params_dict),
        # What is computed decides comparability, how it is computed only adds a note
        # (attnbench.engine.identity); the definition is probed by the worker's verification.
        definition_hash=definition_hash(case, None),
        implementation_hash=implementation_hash(case),
        device=None,
        status=status,
        reason=reason,
        time_s=None,
        compile_s=None,
        tokens_per_s=None,
        flops=cls.case_flops(params, shape, case.scope, case.mode),
        flops_per_s=None,
        flops_executed=cls.case_flops(params, shape, case.scope, case.mode, executed=True),
        peak_memory_bytes=None,
        memory_method=None,
        analytic_min_bytes=cls.case_min_bytes(params, shape, case.scope, itemsize),
        energy_j=None,
        energy_method=None,
        energy_reason=None,
        stable=None,
    )


def refused_record(run_id: str, case: Case, status: str, reason: str) -> CaseRecord:
    """The record of a case that never went to a worker (skipped, unsupported)."""
    return replace(base_record(run_id, case, status, reason), energy_reason=f"case {status}", wall_s=0.0)


def finish_record(run_id: str, case: Case, outcome: Outcome) -> CaseRecord:
    """The record of a case that went to a worker: what it measured, and the figures that follow."""
    record = replace(
        base_record(run_id, case, outcome.status, outcome.reason),
        worker=outcome.worker,
        traceback=outcome.traceback or None,
    )
    if outcome.status != "ok":
        return replace(record, energy_reason=f"case did not run to completion ({outcome.status})")
    m: Measurement = outcome.result
    record = record.with_measurement(m)
    probe = (m.verification or {}).get("definition_probe")
    if probe is not None:
        record = replace(record, definition_hash=definition_hash(case, probe))
    metrics = record.workload_metrics or {}
    # The workload measured what it did (e.g. ACT's halting): its count replaces the analytic one.
    if metrics.get("flops") is not None:
        record = replace(record, analytic_flops=record.flops, flops=metrics["flops"])
    if metrics.get("flops_executed") is not None:
        executed = metrics["flops_executed"]
        record = replace(record, analytic_flops_executed=record.flops_executed, flops_executed=executed)
    median = m.time_s.median
    tokens = record.batch * record.seq_len
    flops_per_s = record.flops / median  # type: ignore[operator]
    bytes_per_s = record.analytic_min_bytes / median if record.analytic_min_bytes else None
    return replace(
        record,
        tokens_per_s=tokens / median,
        flops_per_s=flops_per_s,
        bytes_per_s=bytes_per_s,
        fraction_of_peak=fraction_of_peak(m.device.get("peaks"), record.dtype, flops_per_s, bytes_per_s),
        energy_per_token_j=record.energy_j / tokens if record.energy_j is not None else None,
    )


class Runner:
    def __init__(self, folder: Path, run: RunRecord, executor: Executor, progress: Progress) -> None:
        self.folder = folder
        self.run = run
        self.executor = executor
        self.progress = progress
        self.sweep = Sweep.from_json(run.sweep or {})
        self.settings = RunSettings.from_json(run.settings or {})
        self._availability: dict[str, str | None] = {}
        # curve -> (length, case_id, status) where it ran out of memory or time
        self._stopped_at: dict[tuple, tuple[int, str, str]] = {}
        self._local_node: dict[str, Any] | None = None
        # case_id -> (case, outcomes of its passes so far, wall seconds so far)
        self._pending: dict[str, tuple[Case, list[Outcome], float]] = {}
        self._gate = gate_from_env()  # bench ab: each worker phase waits for its turn
        executor.gate = self._gate  # and a local timing worker for a turn per block of samples

    def _unavailable(self, backend: str) -> str | None:
        if backend not in self._availability:
            avail = get_backend(backend).availability()
            self._availability[backend] = None if avail.available else avail.reason or "unavailable"
        return self._availability[backend]

    def _pre_check(self, case: Case) -> tuple[str, str] | None:
        """(status, reason) for a case that must not start a worker, or None."""
        executor = self.executor
        concurrent = isinstance(executor, ConcurrentExecutor)
        if isinstance(executor, ConcurrentExecutor):
            unavailable = executor.cannot_run(case)
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
        # Found without a worker; a remote node may have libraries this one lacks, so it asks itself.
        refusal = None if concurrent else impl_refusal(case)
        if refusal:
            return "unsupported", refusal
        refused = None if concurrent else memory_refusal(case)  # a remote node checks its own memory
        return ("skipped", refused) if refused else None

    def _note_node(self, record: CaseRecord, outcome: Outcome) -> CaseRecord:
        """Record where the case ran; run.json lists every node once, with its host fingerprint."""
        if outcome.node is None and isinstance(self.executor, ConcurrentExecutor):
            return replace(record, node=None)  # it never reached a node (e.g. none could run it)
        if outcome.node is None:
            if self._local_node is None:
                self._local_node = describe_node()
            outcome.node = self._local_node
        nodes = list(self.run.nodes or [])
        at = next((i for i, n in enumerate(nodes) if n.get("id") == outcome.node["id"]), None)
        if at is None:
            entry = {k: v for k, v in outcome.node.items() if k != "accelerators"}
            entry["devices"] = []
            nodes.append(entry)
            at = len(nodes) - 1
        entry = dict(nodes[at])
        if record.device and record.device not in entry["devices"]:
            entry["devices"] = [*entry["devices"], record.device]
        entry["cases"] = entry.get("cases", 0) + 1
        nodes[at] = entry
        self.run = replace(self.run, nodes=nodes)
        self._writer.save(self.run)
        return replace(record, node=case_node(outcome.node))

    def _note_stop(self, case: Case, status: str) -> None:
        """Longer lengths of a curve that ran out of memory or time would only do so again."""
        key = _curve(case)
        if key not in self._stopped_at or case.seq_len < self._stopped_at[key][0]:
            self._stopped_at[key] = (case.seq_len, case.case_id, status)

    def _add_device(self, outcome: Outcome) -> None:
        desc = outcome.result.device if outcome.status == "ok" else None
        if desc and all(d.get("backend") != desc.get("backend") for d in self.run.devices):
            self.run = replace(self.run, devices=[*self.run.devices, desc])
            self._writer.save(self.run)

    def _execute_concurrent(self, executor: ConcurrentExecutor, todo: list[Case]) -> int:
        """Curves side by side; within a curve, a length starts when the shorter one has ended."""
        waiting: dict[tuple, deque[Case]] = {}
        for case in todo:  # expand() lists each curve by increasing length
            waiting.setdefault(_curve(case), deque()).append(case)
        in_flight: dict[tuple, float] = {}  # curve -> when its case was submitted
        recorded = 0
        while waiting or in_flight:
            interrupts.check()
            for key in [k for k in waiting if k not in in_flight]:
                queue = waiting[key]
                while queue and key not in in_flight:
                    case = queue.popleft()
                    self.progress.case_started(case)
                    refused = self._pre_check(case)
                    if refused:
                        self._append(case, refused_record(self.run.run_id, case, *refused))
                        recorded += 1
                    else:
                        executor.submit(case)
                        in_flight[key] = time.perf_counter()
                if not queue:
                    del waiting[key]
            if not in_flight:
                continue
            case, outcome = executor.next_finished()
            started = in_flight.pop(_curve(case))
            self._finish(case, outcome, time.perf_counter() - started)  # queueing on the cluster included
            recorded += 1
        return recorded

    def _append(self, case: Case, record: CaseRecord) -> None:
        record = replace(record, finished_at=now_iso())
        try:
            self._writer.append(record)  # on disk as soon as the case ends
        except WriteFailed as exc:
            # A record too large for what is left (a file-size limit) may still fit as an error.
            failed = finish_record(self.run.run_id, case, Outcome("error", f"its record could not be written: {exc}"))
            with contextlib.suppress(WriteFailed):
                self._writer.append(replace(failed, finished_at=now_iso()))
            raise
        self.progress.case_finished(case, record)

    def _finish(self, case: Case, outcome: Outcome, wall_s: float) -> None:
        record = finish_record(self.run.run_id, case, outcome)
        self._add_device(outcome)
        record = self._note_node(record, outcome)
        if outcome.status in STOPPING:
            self._note_stop(case, outcome.status)
        self._append(case, replace(record, wall_s=wall_s))

    def _execute_serial(self, todo: list[Case]) -> int:
        """Each case in turn; with passes > 1, the cases that passed the first pass are timed
        again in later passes over the list, and recorded when their last pass ends."""
        passes = self.settings.passes
        recorded = 0
        resumed = saved_passes(self.folder) if passes > 1 else {}
        for case in todo:
            if case.case_id in resumed:  # its first passes ran before the driver stopped
                outcomes, wall = resumed[case.case_id]
                self._pending[case.case_id] = (case, outcomes[:passes], wall)
                continue
            self.progress.case_started(case)
            refused = self._pre_check(case)
            started = time.perf_counter()
            if refused:
                self._append(case, refused_record(self.run.run_id, case, *refused))
                recorded += 1
                continue
            outcome = self._in_turn(case, self.executor.run)
            if outcome.status == "ok" and passes > 1:
                wall = time.perf_counter() - started
                save_pass(self.folder, case.case_id, 1, outcome, wall)
                self._pending[case.case_id] = (case, [outcome], wall)
                continue
            self._finish(case, outcome, time.perf_counter() - started)
            recorded += 1
        for number in range(2, passes + 1):
            for case_id in list(self._pending):
                case, outcomes, wall = self._pending[case_id]
                if len(outcomes) >= number:  # resumed with this pass already done
                    continue
                self.progress.case_started(case)
                started = time.perf_counter()
                outcome = self._in_turn(case, self.executor.run_pass)
                wall += time.perf_counter() - started
                if outcome.status != "ok":
                    # A case that fails in a later pass is recorded as failing: flaky is not fine.
                    del self._pending[case_id]
                    outcome.reason = f"pass {number} of {passes}: {outcome.reason}"
                    outcome.result = None
                    self._finish(case, outcome, wall)
                    recorded += 1
                    continue
                save_pass(self.folder, case_id, number, outcome, time.perf_counter() - started)
                outcomes.append(outcome)
                self._pending[case_id] = (case, outcomes, wall)
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
        for case, outcomes, wall in pending.values():
            outcome = merge_passes(outcomes, self.settings.target_rel_ci)
            if why is not None:
                note = f"{why} after {len(outcomes)} of {self.settings.passes} passes"
                outcome.result = replace(outcome.result, stable=False, notes=[note, *outcome.result.notes])
            self._finish(case, outcome, wall)
        count = len(pending)
        self._pending = {}
        return count

    def execute(self) -> int:
        """Run every case not yet recorded. Returns the number of cases recorded now."""
        cases = expand(self.sweep)
        self.run = replace(self.run, cases_total=len(cases))
        # The folder's lock comes first: a second --resume of this run must not even plan.
        self._writer = RunWriter.create(self.folder, self.run)
        existing = load_run(self.folder).cases if (self.folder / CASES_FILE).exists() else []
        done = {c.case_id for c in existing}
        for rec in existing:
            if rec.status in STOPPING:
                self._note_stop(rec.case(), rec.status)
        todo = [c for c in cases if c.case_id not in done]
        if self.settings.passes > 1 and isinstance(self.executor, ConcurrentExecutor):
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
                    self.run = replace(self.run, worker_server_start_s=self.executor.warm())
                    described = self.executor.describe()
                    if described is not None:  # e.g. the Ray cluster the run was given, under its name
                        self.run = replace(self.run, **{self.executor.name: described})
                        self._writer.save(self.run)
                if isinstance(self.executor, ConcurrentExecutor):
                    recorded = self._execute_concurrent(self.executor, todo)
                    todo = []
                recorded += self._execute_serial(todo)
        except KeyboardInterrupt:
            self.executor.abandon()
            self._flush_pending("interrupted")
            self.run = replace(self.run, status="interrupted", finished_at=None)
            self._writer.save(self.run)
            self._writer.close()
            self.progress.stop()
            raise
        except WriteFailed:
            # The disk is full or a file-size limit was hit: nothing more can be recorded, so the
            # run stops, saying so in run.json where that still can be written.
            self.executor.abandon()
            self.progress.stop()
            self.run = replace(self.run, status="interrupted", finished_at=None)
            with contextlib.suppress(WriteFailed):
                self._writer.save(self.run)
            self._writer.close()
            raise
        self.progress.stop()
        (self.folder / PASSES_FILE).unlink(missing_ok=True)  # every pass is in a record now
        self.run = replace(self.run, status="complete", finished_at=now_iso())
        self._writer.save(self.run)
        self._writer.close()
        return recorded


def _curve(case: Case) -> tuple:
    return case.group_key(get_workload(case.variant).derived_params)
