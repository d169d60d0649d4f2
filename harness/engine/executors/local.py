"""The local executor: each case in a fresh worker process, with a timeout and a memory guard.

Workers are forked from a fork server that imported torch once (attnbench.engine.preload), so a
case pays milliseconds of isolation instead of a multi-second import, yet starts in a
clean process whose peak memory belongs to that case alone.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from attnbench.core import cpu_load, interrupts
from attnbench.core.cases import Case
from attnbench.core.quality_record import QualityJob
from attnbench.core.record import Measurement
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.base import Executor, Outcome
from attnbench.engine.first_call import FIRST_CALL_FACTOR, first_call_limit
from attnbench.engine.lifeline import mark_driver

POLL_S = 0.05


def _secs(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


class _Deadline:
    """When a worker that has sent no result is stopped, and the reason it is given then.

    With --timeout, that limit from the worker's start. Without, the slow-case rule
    (RunSettings.limit_after_first_call, docs/measurement.md): the base limit until the first
    timed call starts, the base again for that call, and once it has ended after t1 seconds,
    max(base, 2 × (calls + 2) × t1 + 60 s) for the calls its phase still makes. The profile
    worker reports no calls: it gets the base plus that limit for the time phase's t1.
    A worker taking bench ab's turns waits about as long as it times: every limit doubles."""

    def __init__(
        self,
        settings: RunSettings,
        phase: str,
        started: float,
        turns: bool,
        first_call_s: float | None = None,
        first_limit_s: float | None = None,
    ) -> None:
        self.settings, self.phase, self.started = settings, phase, started
        self.factor = 2.0 if turns else 1.0
        self.base = settings.case_timeout()
        # The first call's own limit (attnbench.engine.first_call): the base, or more for a case
        # whose FLOPs need more at the host's measured ceiling.
        self.first_limit = max(self.base, first_limit_s or 0.0)
        self.known_first_call_s = first_call_s  # the profile phase's: the time phase measured it
        self.first_started: float | None = None
        self.first_call_s: float | None = None
        limit = settings.profile_timeout(first_call_s) if phase == "profile" else self.base
        self.at = started + self.factor * limit
        if not settings.scales_timeout:
            self.why = " (twice --timeout: it took turns)" if turns else ""
        else:
            self.why = " (limits doubled: it took turns)" if turns else ""

    def first_call(self, now: float, seconds: float | None) -> None:
        """The worker's report: its first timed call started (None) or ended after `seconds`."""
        if not self.settings.scales_timeout or self.phase == "profile":
            return
        if seconds is None:
            self.first_started = now
            self.at = now + self.factor * self.first_limit
        else:
            self.first_call_s = seconds
            calls = self.settings.calls_after_first(self.phase, seconds)
            self.at = now + self.factor * self.settings.limit_after_first_call(seconds, calls)

    def _after(self, t1: float, calls: int) -> str:
        """The limit after a first call of t1, as the rule's figures."""
        rule = f"2 × {calls + 2} × {_secs(t1)} s + 60 s"
        if self.settings.limit_after_first_call(t1, calls) > self.base:
            return rule
        return f"the base {_secs(self.base)} s, over {rule}"

    def reason(self) -> str:
        within = f"no result within {_secs(self.at - self.started)} s"
        if not self.settings.scales_timeout:
            return f"{within}; worker stopped{self.why}"
        if self.phase == "profile":
            t1 = self.known_first_call_s
            if t1 is None:
                return f"{within} (the base limit); worker stopped{self.why}"
            after = self._after(t1, self.settings.calls_after_first("profile", t1))
            return f"{within} (base {_secs(self.base)} s, then {after} for a first call of {_secs(t1)} s); " + (
                f"worker stopped{self.why}"
            )
        if self.first_started is None:
            return f"{within}, before its first timed call (base {_secs(self.base)} s); worker stopped{self.why}"
        if self.first_call_s is None:
            limit = (
                f"the base {_secs(self.base)} s"
                if self.first_limit <= self.base
                else f"{_secs(self.first_limit)} s ({FIRST_CALL_FACTOR:g} × its FLOPs at the host's calibrated ceiling)"
            )
            return f"{within}: its first timed call ran past {limit} from its start; worker stopped{self.why}"
        t1 = self.first_call_s
        after = self._after(t1, self.settings.calls_after_first(self.phase, t1))
        return f"{within} (first call {_secs(t1)} s; limit {after} after it); worker stopped{self.why}"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, settings: RunSettings) -> None:
        super().__init__()  # the gate: in bench ab, the timing worker asks it for block turns
        self.settings = settings
        mark_driver()  # before the fork server starts: its workers die with this process
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["attnbench.engine.preload"])
        self._current: Any = None

    def warm(self) -> float:
        """Start the fork server now (it imports torch), so the first case is not charged for it."""
        t0 = time.perf_counter()
        p = self.ctx.Process(target=_noop, daemon=True)
        p.start()
        p.join()
        return time.perf_counter() - t0

    def abandon(self) -> None:
        """Kill the worker in flight (Ctrl-C)."""
        if self._current is not None and self._current.is_alive():
            _kill(self._current)
            self._current.join(5)

    def run(self, case: Case) -> Outcome:
        """Time the case in one fresh worker, then measure its memory in another.

        Memory gets its own process because its meter may change how the process
        allocates (see attnbench.backends.cpu), which must not touch the timed process.
        """
        timed = self._run_phase(case, "time")
        if timed.status != "ok":
            return timed
        memory = self._run_phase(case, "memory")
        timed.worker["memory_wall_s"] = memory.worker.get("wall_s")
        if memory.status == "ok":
            timed.result = timed.result.with_memory(memory.result)
        else:
            timed.result = timed.result.without_memory(f"the memory pass failed ({memory.status}): {memory.reason}")
            if memory.traceback:
                timed.traceback = memory.traceback
        if self.settings.profile:  # after the figures are taken, in a worker of its own
            profiled = self.profile(case, timed.result.first_call_s)
            timed.result = replace(timed.result, profile=self.profile_summary(profiled))
        return timed

    def run_quality(self, job: QualityJob) -> Outcome:
        """bench quality: train and evaluate in one fresh worker, then meter one training step's
        peak memory in another (as `run` does for a case). The training worker's limit after its
        first step scales with the steps still to run (RunSettings.calls_after_first)."""
        eval_batches = -(-job.eval_examples // job.case.batch)
        settings = replace(self.settings, quality_calls=job.steps + eval_batches + (2 if job.maps else 0))
        trained = self._run_phase(job, "quality", settings)  # type: ignore[arg-type]
        if trained.status != "ok":
            return trained
        memory = self._run_phase(job, "quality_memory", settings)  # type: ignore[arg-type]
        trained.worker["memory_wall_s"] = memory.worker.get("wall_s")
        if memory.status == "ok":
            trained.result.update(memory.result)
        else:
            trained.result["memory_reason"] = f"the memory pass failed ({memory.status}): {memory.reason}"
        return trained

    def run_pass(self, case: Case) -> Outcome:
        """One more timing pass of a case already verified and metered in its first pass."""
        return self._run_phase(case, "time", replace(self.settings, verify=False))

    def profile(self, case: Case, first_call_s: float | None = None) -> Outcome:
        """The case under its backend's profiler in a fresh worker (attnbench.engine.profiling).
        first_call_s: the time phase's first call, which the worker's limit scales with."""
        return self._run_phase(case, "profile", first_call_s=first_call_s)

    def profile_summary(self, outcome: Outcome) -> dict[str, Any]:
        """What a case record keeps of its profile: files (folder relative to the run folder), top operators."""
        worker = {k: outcome.worker.get(k) for k in ("pid", "wall_s")}
        if outcome.status != "ok":
            return {"status": outcome.status, "reason": outcome.reason, "worker": worker}
        profile = dict(outcome.result["profile"])
        path = Path(profile.pop("path"))
        root = Path(self.settings.profile_dir or path.parent).resolve().parent
        profile["dir"] = os.path.relpath(path, root)
        return {"status": "ok", **profile, "worker": worker}

    def _run_phase(
        self, case: Case, phase: str, settings: RunSettings | None = None, first_call_s: float | None = None
    ) -> Outcome:
        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        from attnbench.engine.worker import child_main

        settings = settings or self.settings
        started = time.perf_counter()
        turns = self.gate.worker_turns() if phase == "time" else None
        args = (child_conn, case, settings, phase, turns)
        proc = self.ctx.Process(target=child_main, args=args, daemon=True)
        proc.start()
        self._current = proc
        child_conn.close()
        if turns is not None:  # the worker holds its own copies now
            turns.read.close()
            turns.write.close()
        # Taking block turns with the other side of a bench ab, a worker waits about as long as
        # it times, so its wall clock gets twice each limit (its own time still gets one).
        scaled = settings.scales_timeout and isinstance(case, Case)  # a QualityJob's first step has the base
        first_limit = first_call_limit(settings.case_timeout(), case) if scaled else None
        deadline = _Deadline(settings, phase, started, turns is not None, first_call_s, first_limit)
        try:
            return self._wait(proc, parent_conn, started, deadline)
        finally:
            self._current = None
            _kill(proc)
            proc.join(5)
            parent_conn.close()

    def _wait(self, proc: Any, conn: Any, started: float, deadline: _Deadline) -> Outcome:
        from attnbench.engine.worker import FIRST_CALL

        limit = self.settings.memory_limit_bytes
        watched = _watch(proc.pid)
        busy0 = cpu_load.busy_seconds()
        peak_rss = 0
        while True:
            interrupts.check()  # a Ctrl-C swallowed where it landed still stops the case
            if conn.poll(POLL_S):
                try:
                    sent = conn.recv()
                except (EOFError, OSError):
                    break  # died while sending; reported below from the exit code
                received = time.perf_counter()
                if sent[0] == FIRST_CALL:
                    deadline.first_call(received, sent[1])
                    continue
                entered, left, message = sent
                try:
                    # The worker's own helpers (compile workers) count as its own CPU, not others'.
                    worker_cpu = cpu_load.family_cpu_seconds(watched) if watched is not None else None
                except psutil.Error:
                    worker_cpu = None
                busy = cpu_load.busy_seconds() - busy0
                worker = {
                    "other_cpu_share": None
                    if worker_cpu is None
                    else cpu_load.other_share(busy, worker_cpu, received - started),
                    "pid": proc.pid,
                    "wall_s": received - started,
                    # Isolation cost: process start until the case began, plus the result's trip back.
                    "overhead_s": (entered - started) + (received - left),
                }
                proc.join(5)
                worker["exitcode"] = proc.exitcode
                if message[0] == "ok":
                    turns = message[1].turns if isinstance(message[1], Measurement) else None  # the time phase
                    if turns and turns.get("other_cpu_share") is not None:
                        # bench ab: the other side timed while this worker waited; only its own turns count
                        worker["other_cpu_share"] = turns["other_cpu_share"]
                    return Outcome("ok", None, message[1], worker=worker)
                _, status, reason, tb = message
                return Outcome(status, reason, traceback=tb, worker=worker)
            now = time.perf_counter()
            if watched is not None:
                try:
                    rss = watched.memory_info().rss
                    peak_rss = max(peak_rss, rss)
                except psutil.Error:
                    rss = 0
                if limit is not None and rss > limit:
                    _kill(proc)
                    proc.join(5)
                    return Outcome(
                        "oom",
                        f"worker resident memory {rss / 2**30:.2f} GiB exceeded the limit of "
                        f"{limit / 2**30:.2f} GiB and was stopped",
                        worker={"pid": proc.pid, "wall_s": now - started, "exitcode": proc.exitcode},
                    )
            if now > deadline.at:
                _kill(proc)
                proc.join(5)
                return Outcome(
                    "timeout",
                    deadline.reason(),
                    worker={"pid": proc.pid, "wall_s": now - started, "exitcode": proc.exitcode},
                )
            if not proc.is_alive() and not conn.poll(0):
                break
        proc.join(5)
        code = proc.exitcode
        worker = {"pid": proc.pid, "wall_s": time.perf_counter() - started, "exitcode": code}
        if code is not None and code < 0:
            name = _signal_name(code)
            if name == "SIGKILL" and limit is not None and peak_rss > 0.5 * limit:
                return Outcome(
                    "oom",
                    f"worker killed by SIGKILL at {peak_rss / 2**30:.2f} GiB resident "
                    "(most likely the kernel's out-of-memory killer)",
                    worker=worker,
                )
            return Outcome("error", f"worker died from {name} without reporting a result", worker=worker)
        return Outcome("error", f"worker exited with code {code} without reporting a result", worker=worker)


def _kill(proc: Any) -> None:
    """SIGKILL a worker's process group (it made one of its own: attnbench.engine.worker), so
    the case's own child processes go with it; the worker alone if it had no group yet. Only
    while the worker is unreaped: until then its pid, and so the group's id, is still ours."""
    if proc.exitcode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.is_alive():
        proc.kill()


def _watch(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _noop() -> None:
    pass
