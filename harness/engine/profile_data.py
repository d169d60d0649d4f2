"""What a profile folder holds, and the analysis of the traces in it: where a case's time and
memory go, by operator and by the variant's named steps.

Torch-free: the profile phase (attnbench.engine.profiling) analyses its trace here and keeps
the analysis in profile.json; reports and `bench profile` draw the tables and the memory
figure from that file (attnbench.report.profiles).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

CALL_RANGE = "attnbench.call"  # one profiled call; steps are the variant's ranges inside it
TRACE = "trace.json"
OPS_CSV = "ops.csv"
OPS_MD = "ops.md"
MEMORY_PNG = "memory.png"
SUMMARY = "profile.json"
TENSORBOARD = "tensorboard"
TOP = 15  # rows of each table in ops.md
TOP_IN_RECORD = 5  # operators a case record carries for the report
OUTSIDE = "(outside named steps)"
# Every file a profile folder may hold: an earlier profile's are removed before a new one.
OUTPUTS = (TRACE, OPS_CSV, OPS_MD, MEMORY_PNG, SUMMARY, TENSORBOARD, "ort_profile.json", "metrics.txt")
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

    def to_json(self) -> dict[str, Any]:
        """What profile.json keeps of the analysis, so reports draw the tables and the memory
        figure from it (attnbench.report.profiles) without the trace."""
        return {
            "calls": self.calls,
            "call_s": self.call_s,
            "time_basis": self.time_basis,
            "ops": [asdict(o) for o in self.ops],
            "steps_all": [asdict(s) for s in self.steps],
            "notes": self.notes,
            "memory_series": [s.label for s in self.memory],
            "memory": [asdict(s) for s in self.memory],
            "spans": [list(span) for span in self.spans],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Analysis:
        return cls(
            calls=d["calls"],
            call_s=d["call_s"],
            ops=[OpStat(**o) for o in d["ops"]],
            steps=[StepStat(**s) for s in d["steps_all"]],
            memory=[MemorySeries(**s) for s in d.get("memory", [])],
            spans=[(name, t0, t1) for name, t0, t1 in d.get("spans", [])],
            notes=d.get("notes", []),
            time_basis=d.get("time_basis", "host self time"),
        )


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
