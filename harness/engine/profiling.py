"""Profiling one case: where its time and memory go, under the backend's own profiler.

Runs in a worker process of its own (the `profile` phase, attnbench.engine.worker), never in the
one that is timed, so no profiler hook can touch a measured figure. One driver per
backend family (the backend's `profiler` attribute says which):

- ``torch`` (cpu, cuda, and plugin backends on torch eager): torch.profiler with CPU (and
  CUDA, where the backend asks for it) activities, memory profiling and shapes. Time and
  allocations are attributed to operators and to the variant's named steps
  (`attnbench.workloads.base.step_range`) by replaying the Chrome trace.
- ``onnxruntime``: the session's own profiling (`SessionOptions.enable_profiling`); the
  operators are graph nodes, grouped by op type.
- ``xla``: torch.profiler on the host (graph tracing and execution calls, named ranges),
  torch-xla's profiler trace for TensorBoard, and its metrics report (compile and
  execute times, ops that fell back to the CPU).

The phase writes `trace.json` (Chrome trace / Perfetto) and `profile.json` (the summary a
case record links to, with the whole analysis: attnbench.engine.profile_data). The command
that asked for the profile then draws, from profile.json, `ops.csv` and `ops.md` (top
operators by self time and by memory allocated, and the named steps) and `memory.png`
(memory over the profiled calls, steps shaded): attnbench.report.profiles.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.core.strict_json import dumps
from attnbench.engine.profile_data import (
    CALL_RANGE,
    MEMORY_PNG,
    OPS_CSV,
    OPS_MD,
    OUTPUTS,
    SUMMARY,
    TENSORBOARD,
    TRACE,
    Analysis,
    MemorySeries,
    analyze_ort_trace,
    analyze_torch_trace,
    record_summary,
)

if TYPE_CHECKING:
    from attnbench.backends.base import Backend, Step
    from attnbench.core.cases import Case
    from attnbench.core.settings import RunSettings


class RssSampler:
    """Process resident memory every ~1 ms on a thread, for runtimes that report no allocations."""

    label = "process RSS (sampled every ~1 ms)"

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            import psutil

            return int(psutil.Process().memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.points.append((time.perf_counter(), self._rss()))
            self._stop.wait(0.001)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def series(self, t0: float) -> MemorySeries:
        base = self.points[0][1] if self.points else 0
        return MemorySeries(self.label, [t - t0 for t, _ in self.points], [b - base for _, b in self.points])


def _calls(step: Step, backend: Backend, calls: int) -> Iterator[int]:
    from torch.profiler import record_function

    for i in range(calls):
        with record_function(CALL_RANGE):
            step()
            backend.synchronize()  # the call's device work belongs inside its range
        yield i


def _torch_driver(backend: Backend, step: Step, calls: int, out: Path) -> tuple[Analysis, dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if "cuda" in backend.profiler_activities() and torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, profile_memory=True, record_shapes=True) as prof:
        for _ in _calls(step, backend, calls):
            pass
    prof.export_chrome_trace(str(out / TRACE))
    # What torch.profiler.tensorboard_trace_handler writes, where TensorBoard's profiler plugin looks.
    tb = out / TENSORBOARD
    tb.mkdir(exist_ok=True)
    shutil.copyfile(out / TRACE, tb / f"{socket.gethostname()}_{os.getpid()}.{int(time.time() * 1000)}.pt.trace.json")
    analysis = analyze_torch_trace(json.loads((out / TRACE).read_text()), calls)
    return analysis, {"tensorboard": TENSORBOARD, "activities": [str(a).split(".")[-1] for a in activities]}


def _ort_driver(backend: Backend, step: Step, calls: int, out: Path) -> tuple[Analysis, dict[str, Any]]:
    t0 = time.perf_counter()
    with RssSampler() as rss:
        for _ in range(calls):
            step()
    files = backend.end_profiling()  # type: ignore[attr-defined]
    if not files:
        raise RuntimeError("ONNX Runtime wrote no profile (the session was built before profiling was enabled)")
    raw = Path(files[-1])
    events = json.loads(raw.read_text())
    raw.replace(out / "ort_profile.json")
    analysis, kept = analyze_ort_trace(events, calls)
    trace = {"traceEvents": kept, "displayTimeUnit": "ms", "otherData": {"source": "onnxruntime session profiling"}}
    (out / TRACE).write_text(dumps(trace))
    analysis = _with(analysis, memory=[rss.series(t0)])
    return analysis, {"raw_profile": "ort_profile.json", "tensorboard": None}


def _xla_driver(backend: Backend, step: Step, calls: int, out: Path) -> tuple[Analysis, dict[str, Any]]:
    import torch_xla.debug.metrics as met
    import torch_xla.debug.profiler as xp
    from torch.profiler import ProfilerActivity, profile

    # Traced under a profiler, the named ranges make a different graph: compile it now, not in
    # a profiled call (seen on XLA:CPU: one compilation in the first profiled call otherwise).
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True):
        for _ in _calls(step, backend, 1):
            pass
    met.clear_all()
    notes = [
        "XLA is lazy: host operators and named steps are graph tracing; executing the graph is the sync, "
        "outside the steps (see ExecuteTime in metrics.txt). XLA's own trace of the device work is "
        "tensorboard/plugins/profile/*/*.trace.json.gz (Chrome trace) and *.xplane.pb (TensorBoard)"
    ]
    tb = out / TENSORBOARD
    tracing = True
    try:
        xp.start_trace(str(tb))
    except Exception as exc:  # the trace is extra: the host profile and the metrics still stand
        tracing = False
        notes.append(f"torch-xla profiler trace not written: {type(exc).__name__}: {exc}")
    t0 = time.perf_counter()
    try:
        with RssSampler() as rss, profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in _calls(step, backend, calls):
                pass
    finally:
        if tracing:
            xp.stop_trace()
    prof.export_chrome_trace(str(out / TRACE))
    report = met.metrics_report()
    (out / "metrics.txt").write_text(report)
    metrics = {}
    for name in ("CompileTime", "ExecuteTime", "TransferToDeviceTime", "TransferFromDeviceTime"):
        data = met.metric_data(name)
        if data:
            metrics[name] = {"count": int(data[0]), "total_s": float(data[1]) / 1e9}
    if metrics.get("CompileTime"):
        notes.append(f"{metrics['CompileTime']['count']} compilation(s) during the profiled calls")
    fallbacks = list(met.executed_fallback_ops())
    if fallbacks:
        notes.append(f"ops that fell back to the CPU (not lowered to XLA): {', '.join(sorted(fallbacks))}")
    analysis = analyze_torch_trace(json.loads((out / TRACE).read_text()), calls)
    analysis = _with(analysis, memory=[rss.series(t0)], notes=analysis.notes + notes)
    return analysis, {
        "tensorboard": TENSORBOARD if tracing and tb.exists() else None,
        "metrics": metrics,
        "fallback_ops": fallbacks,
        "metrics_report": "metrics.txt",
    }


def _with(analysis: Analysis, **changes: Any) -> Analysis:
    return replace(analysis, **changes)


DRIVERS = {"torch": _torch_driver, "onnxruntime": _ort_driver, "xla": _xla_driver}


def _clear(out: Path) -> None:
    """Remove an earlier profile's files from this case's folder (and nothing else)."""
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def profile_phase(case: Case, settings: RunSettings) -> dict[str, Any]:
    """The worker's `profile` phase: warm up, then profile `settings.profile_calls` calls."""
    from attnbench.core.errors import Unsupported
    from attnbench.engine.build import build_step, load_case

    if not settings.profile_dir:
        raise ValueError("the profile phase needs settings.profile_dir")
    out = Path(settings.profile_dir) / case.case_id
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    cls, backend = load_case(case, settings)
    driver = DRIVERS.get(backend.profiler)
    if driver is None:
        raise Unsupported(f"backend {backend.name} names profiler {backend.profiler!r}, which bench profile lacks")
    backend.setup(case)
    backend.start_profiling(out)
    step, prepare_s, _ = build_step(cls, backend, case, settings.seed)
    # Lazy initialisation, compilation and caches belong to no profiled call.
    for _ in range(max(2, backend.min_warmup_calls)):
        step()
    backend.synchronize()
    analysis, extra = driver(backend, step, settings.profile_calls, out)
    # The tables and the memory figure are drawn from this file by the command that asked for
    # the profile (attnbench.report.profiles), not here.
    summary = {
        "case_id": case.case_id,
        "case": case.identity(),
        "backend": backend.name,
        "profiler": backend.profiler,
        "prepare_s": prepare_s,
        **record_summary(analysis),
        **analysis.to_json(),
        **extra,
    }
    (out / SUMMARY).write_text(dumps(summary, indent=2) + "\n")
    files = {"trace": TRACE, "ops_csv": OPS_CSV, "ops_md": OPS_MD, "memory_png": MEMORY_PNG, "summary": SUMMARY}
    return {
        "path": str(out.resolve()),
        **files,
        "tensorboard": extra.get("tensorboard"),
        "profiler": backend.profiler,
        **record_summary(analysis),
        "notes": analysis.notes,
    }
