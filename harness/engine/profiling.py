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

Every profile folder holds `trace.json` (Chrome trace / Perfetto), `ops.csv` and `ops.md`
(top operators by self time and by memory allocated, and the named steps), `memory.png`
(memory over the profiled calls, steps shaded) and `profile.json` (the summary a case
record links to).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnbench.backends.base import Backend, Step
    from attnbench.core.cases import Case
    from attnbench.core.settings import RunSettings

CALL_RANGE = "attnbench.call"  # one profiled call; steps are the variant's ranges inside it
TRACE = "trace.json"
OPS_CSV = "ops.csv"
OPS_MD = "ops.md"
MEMORY_PNG = "memory.png"
SUMMARY = "profile.json"
TENSORBOARD = "tensorboard"
TOP = 15  # rows of each table
TOP_IN_RECORD = 5  # operators a case record carries for the report
OUTSIDE = "(outside named steps)"
_OUTPUTS = (TRACE, OPS_CSV, OPS_MD, MEMORY_PNG, SUMMARY, TENSORBOARD, "ort_profile.json", "metrics.txt")
_EPS_US = 1e-3  # trace timestamps are rounded to ns; a child may end a hair after its parent


@dataclass(frozen=True)
class OpStat:
    """One operator over the profiled calls; times and bytes are per call."""

    name: str
    count: float  # occurrences per call
    self_s: float  # host (CPU) self time; for ONNX Runtime the node's kernel time
    share: float  # of all operators' self time
    device_s: float | None  # CUDA kernel time launched by it, where a GPU trace exists
    allocated_bytes: int  # gross bytes allocated by it (frees not subtracted)
    step: str | None  # the named step holding most of its self time


@dataclass(frozen=True)
class StepStat:
    """One named range of the variant ("lsh.hash"), inclusive of what it encloses, per call."""

    name: str
    count: float
    total_s: float
    share: float  # of the call's time
    allocated_bytes: int
    device_s: float | None
    depth: int  # 1: directly inside the call; deeper ranges nest in another step


@dataclass(frozen=True)
class MemorySeries:
    label: str
    times_s: list[float]  # since the first profiled call started
    bytes: list[int]


@dataclass(frozen=True)
class Analysis:
    calls: int
    call_s: float  # mean wall seconds of one profiled call, profiler overhead included
    ops: list[OpStat]  # by self time, largest first
    steps: list[StepStat]
    memory: list[MemorySeries] = field(default_factory=list)
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # top-level steps (name, t0, t1) in s
    notes: list[str] = field(default_factory=list)
    time_basis: str = "host self time"


# ------------------------------------------------------------------------------ trace analysis


@dataclass
class _Open:
    ev: dict[str, Any]
    end: float
    kind: str  # op | range | call | runtime
    child_us: float = 0.0
    occ: int = -1  # index into the op occurrences, for ops


def analyze_torch_trace(trace: dict[str, Any], calls: int) -> Analysis:
    """Operators and named steps of the calls in a torch.profiler Chrome trace.

    Replays each host thread's events in time order with a stack of open ranges: an op's
    self time is its duration less its child ops'; an allocation ("[memory]" event) belongs
    to the innermost open op and to every open step; a CUDA kernel belongs to the op whose
    runtime call launched it (matched by correlation id). Only work inside a profiled call
    (the CALL_RANGE ranges) counts.
    """
    per_thread: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    kernels: list[dict[str, Any]] = []
    for ev in trace.get("traceEvents", []):
        ph, cat = ev.get("ph"), ev.get("cat")
        host = ph == "X" and cat in ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")
        if host or (ph == "i" and ev.get("name") == "[memory]"):
            per_thread[ev.get("tid")].append(ev)
        elif ph == "X" and cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            kernels.append(ev)

    occ_name: list[str] = []
    occ_step: list[str | None] = []
    occ_self: list[float] = []
    occ_alloc: list[int] = []
    occ_device: list[float] = []
    ranges: dict[str, dict[str, Any]] = {}
    calls_seen: list[tuple[float, float]] = []
    spans: list[tuple[str, float, float]] = []
    launches: dict[Any, tuple[int, list[str]]] = {}  # correlation -> (op occurrence, open steps)
    memory: dict[str, list[tuple[float, int]]] = defaultdict(list)
    outside_alloc = 0  # allocated inside a call but in no named step

    for events in per_thread.values():
        events.sort(key=lambda e: (e["ts"], 0 if e["ph"] == "X" else 1, -float(e.get("dur", 0))))
        stack: list[_Open] = []

        def close_until(ts: float, stack: list[_Open] = stack) -> None:
            while stack and ts >= stack[-1].end - _EPS_US:
                done = stack.pop()
                if done.kind == "op":
                    occ_self[done.occ] = max(0.0, float(done.ev.get("dur", 0)) - done.child_us)

        for ev in events:
            ts = float(ev["ts"])
            close_until(ts)
            in_call = any(o.kind == "call" for o in stack)
            steps = [o.ev["name"] for o in stack if o.kind == "range"]
            if ev["ph"] == "i":
                if not in_call:
                    continue
                args = ev.get("args", {})
                nbytes = int(args.get("Bytes", 0))
                device = "cuda" if int(args.get("Device Type", 0)) == 1 else "cpu"
                memory[device].append((ts, int(args.get("Total Allocated", 0))))
                if nbytes > 0:
                    op = next((o for o in reversed(stack) if o.kind == "op"), None)
                    if op is not None:
                        occ_alloc[op.occ] += nbytes
                    for name in set(steps):
                        ranges[name]["alloc"] += nbytes
                    if not steps:
                        outside_alloc += nbytes
                continue
            dur = float(ev.get("dur", 0))
            cat, name = ev.get("cat"), ev.get("name", "")
            if cat == "user_annotation":
                if name == CALL_RANGE:
                    calls_seen.append((ts, ts + dur))
                    stack.append(_Open(ev, ts + dur, "call"))
                    continue
                if in_call:
                    r = ranges.setdefault(name, {"count": 0, "us": 0.0, "alloc": 0, "device_us": 0.0, "depth": 99})
                    r["count"] += 1
                    # A range nested in the same name (recursion) is already inside the outer one.
                    if name not in steps:
                        r["us"] += dur
                    r["depth"] = min(r["depth"], len(steps) + 1)
                    if not steps:
                        spans.append((name, ts, ts + dur))
                stack.append(_Open(ev, ts + dur, "range"))
                continue
            parent = next((o for o in reversed(stack) if o.kind == "op"), None)
            if cat == "cpu_op":
                if parent is not None:
                    parent.child_us += dur
                if not in_call:
                    stack.append(_Open(ev, ts + dur, "outside"))
                    continue
                occ_name.append(name)
                occ_step.append(steps[-1] if steps else None)
                occ_self.append(dur)  # until its children are known
                occ_alloc.append(0)
                occ_device.append(0.0)
                stack.append(_Open(ev, ts + dur, "op", occ=len(occ_name) - 1))
            else:  # a CUDA runtime/driver call: remember who launched what
                corr = ev.get("args", {}).get("correlation")
                if in_call and corr is not None and parent is not None and parent.occ >= 0:
                    launches[corr] = (parent.occ, list(steps))
                stack.append(_Open(ev, ts + dur, "runtime"))
        close_until(float("inf"))

    has_device = bool(kernels)
    unattributed_us = 0.0
    for k in kernels:
        hit = launches.get(k.get("args", {}).get("correlation"))
        if hit is None:
            unattributed_us += float(k.get("dur", 0))
            continue
        occ, steps = hit
        occ_device[occ] += float(k.get("dur", 0))
        for name in set(steps):
            ranges[name]["device_us"] += float(k.get("dur", 0))
    calls = max(1, len(calls_seen) or calls)
    call_us = sum(b - a for a, b in calls_seen)
    t0 = min((a for a, _ in calls_seen), default=0.0)

    agg: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(occ_name):
        a = agg.setdefault(name, {"count": 0, "us": 0.0, "alloc": 0, "device_us": 0.0, "by_step": defaultdict(float)})
        a["count"] += 1
        a["us"] += occ_self[i]
        a["alloc"] += occ_alloc[i]
        a["device_us"] += occ_device[i]
        a["by_step"][occ_step[i]] += occ_self[i]
    total_self = sum(a["us"] for a in agg.values()) or 1.0
    ops = [
        OpStat(
            name=name,
            count=a["count"] / calls,
            self_s=a["us"] / 1e6 / calls,
            share=a["us"] / total_self,
            device_s=a["device_us"] / 1e6 / calls if has_device else None,
            allocated_bytes=int(a["alloc"] / calls),
            step=max(a["by_step"].items(), key=lambda kv: kv[1])[0],
        )
        for name, a in agg.items()
    ]
    ops.sort(key=lambda o: (o.device_s or 0.0, o.self_s) if has_device else (o.self_s,), reverse=True)

    steps_out = [
        StepStat(
            name=name,
            count=r["count"] / calls,
            total_s=r["us"] / 1e6 / calls,
            share=r["us"] / call_us if call_us else 0.0,
            allocated_bytes=int(r["alloc"] / calls),
            device_s=r["device_us"] / 1e6 / calls if has_device else None,
            depth=r["depth"],
        )
        for name, r in ranges.items()
    ]
    covered = sum(s.total_s for s in steps_out if s.depth == 1)
    if steps_out and call_us:
        rest = max(0.0, call_us / 1e6 / calls - covered)
        share = rest / (call_us / 1e6 / calls)
        steps_out.append(StepStat(OUTSIDE, 1.0, rest, share, int(outside_alloc / calls), None, 1))
    steps_out.sort(key=lambda s: (s.depth, -s.total_s))

    series = []
    for device, points in sorted(memory.items()):
        points.sort()
        label = "CUDA allocator: allocated" if device == "cuda" else "CPU allocator: allocated (torch tensors)"
        series.append(MemorySeries(label, [(ts - t0) / 1e6 for ts, _ in points], [b - points[0][1] for _, b in points]))
    notes = []
    if not ranges:
        notes.append("the variant has no named steps (attnbench.workloads.base.step_range); operators only")
    if has_device and unattributed_us:
        notes.append(f"{unattributed_us / 1e3:.3g} ms of kernels matched no launching operator")
    return Analysis(
        calls=calls,
        call_s=call_us / 1e6 / calls,
        ops=ops,
        steps=steps_out,
        memory=series,
        spans=[(n, (a - t0) / 1e6, (b - t0) / 1e6) for n, a, b in spans],
        notes=notes,
        time_basis="CUDA kernel time" if has_device else "host self time",
    )


def analyze_ort_trace(events: list[dict[str, Any]], calls: int) -> tuple[Analysis, list[dict[str, Any]]]:
    """Node kernel times of the last `calls` runs in an ONNX Runtime profile, by op type.

    The session also ran the export check and the warm-up; only the last `calls`
    `model_run` events, and the nodes inside them, are the profiled calls. Returns the
    analysis and those events (the trace to keep).
    """
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = sorted(runs, key=lambda e: e["ts"])[-calls:] if calls else runs
    windows = [(float(r["ts"]), float(r["ts"]) + float(r.get("dur", 0))) for r in runs]

    def inside(e: dict[str, Any]) -> bool:
        ts = float(e.get("ts", 0))
        return any(a - _EPS_US <= ts <= b + _EPS_US for a, b in windows)

    kept = [e for e in events if e.get("ph") == "X" and inside(e)]
    nodes = [e for e in kept if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    n = max(1, len(runs))
    agg: dict[str, dict[str, Any]] = {}
    for e in nodes:
        args = e.get("args", {})
        a = agg.setdefault(args.get("op_name", e["name"]), {"count": 0, "us": 0.0, "alloc": 0})
        a["count"] += 1
        a["us"] += float(e.get("dur", 0))
        a["alloc"] += int(args.get("output_size", 0) or 0)
    total = sum(a["us"] for a in agg.values()) or 1.0
    ops = sorted(
        (
            OpStat(name, a["count"] / n, a["us"] / 1e6 / n, a["us"] / total, None, int(a["alloc"] / n), None)
            for name, a in agg.items()
        ),
        key=lambda o: o.self_s,
        reverse=True,
    )
    call_s = sum(b - a for a, b in windows) / 1e6 / n
    notes = [
        "ONNX Runtime runs the exported graph: the variant's named steps do not survive export, so operators "
        "are graph nodes by op type; allocated bytes are the nodes' output sizes"
    ]
    return Analysis(n, call_s, ops, [], notes=notes, time_basis="node kernel time"), kept


# ------------------------------------------------------------------------------ outputs


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.3f}"


def write_tables(out: Path, analysis: Analysis) -> None:
    """ops.csv (every operator) and ops.md (steps, top operators by time and by memory)."""
    with open(out / OPS_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "step", "count_per_call", "self_s", "share", "device_s", "allocated_bytes"])
        for o in analysis.ops:
            w.writerow([o.name, o.step or "", f"{o.count:g}", f"{o.self_s:.9g}", f"{o.share:.6f}",
                        "" if o.device_s is None else f"{o.device_s:.9g}", o.allocated_bytes])  # fmt: skip
    lines = [f"Per call, mean over {analysis.calls} profiled call(s) of {_ms(analysis.call_s)} ms each "
             f"(profiler overhead included; the timed figures are in the case record).", ""]  # fmt: skip
    lines += [f"- {n}" for n in analysis.notes]
    if analysis.steps:
        lines += ["", "## Named steps (inclusive)", "", "| step | per call | time ms | share of call | allocated MiB |"]
        lines.append("|---|---:|---:|---:|---:|")
        for s in analysis.steps:
            name = ("  " * (s.depth - 1)) + s.name
            lines.append(f"| {name} | {s.count:g} | {_ms(s.total_s)} | {s.share:.1%} | {_mib(s.allocated_bytes)} |")
    header = "| operator | step | calls | self ms | share | device ms | allocated MiB |"
    for title, rows in (
        (f"## Top operators by {analysis.time_basis}", analysis.ops[:TOP]),
        ("## Top operators by memory allocated", sorted(analysis.ops, key=lambda o: -o.allocated_bytes)[:TOP]),
    ):
        lines += ["", title, "", header, "|---|---|---:|---:|---:|---:|---:|"]
        for o in rows:
            lines.append(
                f"| `{o.name}` | {o.step or '-'} | {o.count:g} | {_ms(o.self_s)} | {o.share:.1%} | "
                f"{_ms(o.device_s)} | {_mib(o.allocated_bytes)} |"
            )
    (out / OPS_MD).write_text("\n".join(lines) + "\n")


def memory_figure(path: Path, analysis: Analysis, title: str) -> None:
    """Memory over the profiled calls, one line per series, the top-level steps shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    names = sorted({n for n, _, _ in analysis.spans})
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}
    for name, a, b in analysis.spans:
        ax.axvspan(a * 1e3, b * 1e3, color=colours[name], alpha=0.25, lw=0)
    for s in analysis.memory:
        ax.step([t * 1e3 for t in s.times_s], [b / 2**20 for b in s.bytes], where="post", label=s.label, lw=1.2)
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles += [Patch(color=colours[n], alpha=0.35) for n in names]
    labels += names
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if not analysis.memory:
        ax.text(0.5, 0.5, "no memory events recorded", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("time since the first profiled call (ms)")
    ax.set_ylabel("MiB above the start of the calls")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def record_summary(analysis: Analysis) -> dict[str, Any]:
    """What a case record carries: top operators and the named steps, per call."""
    return {
        "calls": analysis.calls,
        "call_s": analysis.call_s,
        "time_basis": analysis.time_basis,
        "top_ops": [
            {
                "name": o.name,
                "self_s": o.device_s if o.device_s is not None else o.self_s,
                "share": o.share,
                "step": o.step,
            }
            for o in analysis.ops[:TOP_IN_RECORD]
        ],
        "steps": [{"name": s.name, "total_s": s.total_s, "share": s.share} for s in analysis.steps if s.depth == 1],
    }


# ------------------------------------------------------------------------------ drivers


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
    (out / TRACE).write_text(json.dumps(trace))
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
    from dataclasses import replace

    return replace(analysis, **changes)


DRIVERS = {"torch": _torch_driver, "onnxruntime": _ort_driver, "xla": _xla_driver}


def _clear(out: Path) -> None:
    """Remove an earlier profile's files from this case's folder (and nothing else)."""
    for name in _OUTPUTS:
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
    write_tables(out, analysis)
    title = (
        f"{case.variant} {case.backend}/{case.dtype}/{case.mode} n={case.seq_len}: {analysis.calls} profiled call(s)"
    )
    memory_figure(out / MEMORY_PNG, analysis, title)
    summary = {
        "case_id": case.case_id,
        "case": case.identity(),
        "backend": backend.name,
        "profiler": backend.profiler,
        "prepare_s": prepare_s,
        **record_summary(analysis),
        "ops": [asdict(o) for o in analysis.ops[:TOP]],
        "steps_all": [asdict(s) for s in analysis.steps],
        "notes": analysis.notes,
        "memory_series": [s.label for s in analysis.memory],
        **extra,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    files = {"trace": TRACE, "ops_csv": OPS_CSV, "ops_md": OPS_MD, "memory_png": MEMORY_PNG, "summary": SUMMARY}
    return {
        "path": str(out.resolve()),
        **files,
        "tensorboard": extra.get("tensorboard"),
        "profiler": backend.profiler,
        **record_summary(analysis),
        "notes": analysis.notes,
    }
