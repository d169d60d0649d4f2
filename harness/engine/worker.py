"""What runs inside the isolated worker process: one case, start to finish.

The parent (attnbench.engine.executors.local) starts a fresh process per case from a fork server that
has already imported torch, so isolation costs milliseconds, not an import.
"""

from __future__ import annotations

import math
import os
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

from attnbench.backends.base import DTYPES, Backend, EnergyMeter, EnergyReading, Step, Timer
from attnbench.core import machine_check
from attnbench.core.cases import Case
from attnbench.core.errors import Unsupported
from attnbench.core.quality_record import QualityJob
from attnbench.core.record import Measurement, MemoryMeasurement
from attnbench.core.registry import PLUGINS_ENV, get_impl
from attnbench.core.settings import RunSettings
from attnbench.engine import reference_kernel
from attnbench.engine.build import build_transformed, case_metrics, load_case
from attnbench.engine.identity import PROBE_SEED, definition_probe
from attnbench.engine.kernels import ATTENTION_MARKERS, attention_ops
from attnbench.engine.lifeline import die_with_parent
from attnbench.engine.quality.train import memory_phase as quality_memory_phase
from attnbench.engine.quality.train import quality_phase
from attnbench.engine.timing import sample, slow_case_policy, warm_up
from attnbench.engine.turns import BlockTurns, NoTurns
from attnbench.workloads.base import AttentionVariant, Shape

VERIFY_TOLERANCE = {"float64": 1e-8, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}

# What a worker sends its parent before its result: (FIRST_CALL, None) as its first timed call
# starts and (FIRST_CALL, seconds) as it ends, so the parent's deadline can scale with that call
# (attnbench.engine.executors.local; the rule: RunSettings.limit_after_first_call).
FIRST_CALL = "first_call"
FirstCallReport = Callable[[float | None], None]


class VerificationFailed(Exception):
    """The variant's output disagrees with its float64 reference."""


def classify(exc: BaseException) -> str:
    """The case status an exception maps to."""
    if isinstance(exc, Unsupported):
        return "unsupported"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "out of memory", "Out of memory", "not enough memory")
    ):
        return "oom"
    return "error"


def verify(cls: type[AttentionVariant], params: Any, case: Case, backend: Backend, max_len: int) -> dict[str, Any]:
    """Run the case's attention, bare, on this backend at a small shape and compare to float64.

    Every implementation is checked the same way: its core module (`Implementation.verify_module`;
    native: the variant itself) against the reference it must match (`verify_reference`; by
    default the variant's float64 definition)."""
    if "core" not in cls.scopes:
        return {"verified": None, "reason": f"{cls.name} has no core scope to check in isolation"}
    impl = get_impl(case.impl)
    n = cls.verify_length(params, case.seq_len, max_len)
    shape = Shape(batch=1, heads=min(case.heads, 2), head_dim=case.head_dim, seq_len=n)
    gen = torch.Generator().manual_seed(PROBE_SEED)  # fixed: the probe of the definition is too
    dtype = DTYPES[case.dtype]
    # Round the inputs to the case's dtype first, so the reference sees exactly what the
    # variant sees (input-dependent patterns such as LSH buckets can flip on rounding).
    q, k, v = (t.to(dtype) for t in cls.make_inputs(shape, "core", torch.float64, torch.device("cpu"), gen))
    torch.manual_seed(PROBE_SEED)  # weights a variant draws without a seed of its own (build reseeds)
    defined = cls(params, shape)
    module = impl.verify_module(cls, params, shape)
    expected = impl.verify_reference(module, defined, *(t.double() for t in (q, k, v)))
    probe = definition_probe(n, defined.reference_mask(n), expected)
    got = backend.infer(module, (q, k, v), case)
    err = (got.detach().to("cpu", torch.float64) - expected).abs().max().item()
    tol = VERIFY_TOLERANCE[case.dtype]
    if not err <= tol:  # catches NaN too
        raise VerificationFailed(
            f"output differs from the float64 reference at n={n}: max abs error {err:.3g} > {tol:g}"
        )
    return {"verified": True, "seq_len": n, "max_abs_err": err, "tolerance": tol, "definition_probe": probe}


def measure_energy(step: Step, timer: Timer, meter: EnergyMeter, per_call_s: float) -> tuple[EnergyReading, int]:
    """Joules over a window of calls long enough for the counter (after timing, never during it)."""
    if not meter.available:
        return meter.stop(), 0
    block = max(1, math.ceil(0.01 / max(per_call_s, 1e-9)))  # ~10 ms between polls
    calls = 0
    meter.start()
    t0 = time.perf_counter()
    while True:
        timer.time(step, block)
        calls += block
        meter.poll()
        if meter.enough() or time.perf_counter() - t0 >= meter.max_window_s:
            break
    return meter.stop(), calls


def measure_time(
    case: Case,
    settings: RunSettings,
    turns: BlockTurns | NoTurns | None = None,
    first_call: FirstCallReport | None = None,
) -> Measurement:
    """Verification, warm-up, timing and energy for one case; raises on failure.

    turns: in a bench ab, the timed stretches (warm-up, each block of samples, the closing
    readings) each wait for a turn (attnbench.engine.turns); building and verifying do not.
    first_call: told as the first timed call starts (None) and ends (its seconds)."""
    turns = turns or NoTurns()
    cls, backend = load_case(case, settings)
    backend_settings = backend.setup(case)
    # Before the first computation (setup only set the thread count), so the threads the
    # backend starts for it inherit the CPUs.
    turns.pin(backend_settings.get("threads") or case.threads or os.cpu_count() or 1)
    checked = (
        verify(cls, cls.make_params(case.params_dict), case, backend, settings.verify_max_len)
        if settings.verify
        else {"verified": None, "reason": "verification turned off"}
    )
    step, prepare_s, applied, inputs = build_transformed(cls, backend, case, settings.seed)
    module = applied.metrics_module or applied.module

    timer = backend.timer()
    policy = settings.policy()
    device = backend.describe()
    # Samples are paired with the host's speed only where the host runs them (not a GPU).
    reference = reference_kernel.pair_reader() if device.get("kind") == "cpu" else None
    with turns.block():
        machine_before = reference_kernel.reference_seconds()
        warm = warm_up(step, timer, policy, backend.min_warmup_calls, first_call)
    policy, stretched = slow_case_policy(policy, warm.call_s, settings.passes)
    backend.timed_region_start()
    applied.timed_start()
    measurement = sample(step, timer, policy, warm.last_call_s, reference, turns)
    if stretched:
        measurement.notes.insert(0, stretched)
    problems = backend.timed_region_stop() + applied.timed_stop()
    if problems:
        measurement.stable = False
        measurement.notes.extend(problems)
    with turns.block():
        machine_after = reference_kernel.reference_seconds()
        energy, energy_calls = measure_energy(step, timer, backend.energy_meter(), measurement.stats.median)
    transformed = applied.finish(inputs)  # fidelity vs the float64 untransformed module, after timing
    if get_impl(case.impl).compiles_on_first_call and not applied.compiles_on_first_call:
        # An implementation that compiles (flex): its first call is compilation; its kernels are
        # inside the compiled graph, which the dispatcher cannot see.
        kernels = None
        compile_s = prepare_s + applied.apply_s + warm.first_call_s
    elif applied.compiles_on_first_call:
        # The dispatcher cannot see inside a compiled graph: the kernels of inductor's output code.
        calls = transformed["transform_details"]["kernels"]["library_calls"]
        kernels = {n: c for n, c in calls.items() if any(m in n for m in ATTENTION_MARKERS)}
        compile_s = prepare_s + applied.apply_s + warm.first_call_s
    else:
        # Aten-level kernels are recorded by the memory worker, on its unmeasured first call.
        kernels = None if backend.records_aten_ops else backend.details().get("attention_ops")
        compile_s = backend.compile_seconds(prepare_s, warm.first_call_s) + applied.apply_s
    fidelity = transformed["fidelity"]
    if fidelity is not None and not fidelity["within"]:
        measurement.notes.append(
            f"transform {applied.name} beyond its tolerance: rel_err {fidelity['rel_err']:.3g} "
            f"(max {fidelity['tolerance']['rel_err']:g}), cosine {fidelity['cosine']:.6f} "
            f"(min {fidelity['tolerance']['min_cosine']:g})"
        )

    return Measurement(
        device=device,
        backend_settings=backend_settings,
        verification=checked,
        time_s=measurement.stats,
        **measurement.record_fields(),  # calls_per_sample, block_samples, converged, stable, stop_reason, notes
        compile_s=compile_s,
        prepare_s=prepare_s,
        first_call_s=warm.first_call_s,
        warmup={"calls": warm.calls, "seconds": warm.seconds},
        turns=turns.summary(),
        machine_check=machine_check.record(
            machine_before, machine_after, measurement.pair_readings_s, threads=torch.get_num_threads()
        ),
        clock=timer.clock,
        sync=timer.sync,
        energy_j=energy.joules / energy_calls if energy.joules is not None and energy_calls else None,
        energy_method=energy.method,
        energy_reason=energy.reason,
        energy_details={**energy.details, "calls": energy_calls} if energy_calls else energy.details,
        attention_ops=kernels,
        backend_details=backend.details(),
        workload_metrics=case_metrics(cls, get_impl(case.impl), module),
        transform=transformed["transform"],
        transform_details=transformed["transform_details"],
        fidelity=fidelity,
    )


def measure_memory(case: Case, settings: RunSettings, first_call: FirstCallReport | None = None) -> MemoryMeasurement:
    """Peak memory of one call, in a process of its own: one warm-up call, then the metered one.

    first_call: told as the warm-up call starts (None) and ends (its seconds)."""
    cls, backend = load_case(case, settings)
    meter = backend.memory_meter()
    meter.prepare_process()
    backend.setup(case)
    step, _, applied, _ = build_transformed(cls, backend, case, settings.seed)
    # Lazy initialisation belongs to no measurement, so that call also records which attention
    # kernels ran (a compiled graph is opaque to the dispatcher: the timed worker reads those).
    compiles = applied.compiles_on_first_call or get_impl(case.impl).compiles_on_first_call
    record_ops = backend.records_aten_ops and not compiles
    if first_call is not None:
        first_call(None)
    began = time.perf_counter()
    ops = attention_ops(step) if record_ops else step()
    backend.synchronize()  # its device work too: the parent's limit scales with this call's time
    if first_call is not None:
        first_call(time.perf_counter() - began)
    meter.start()
    step()
    reading = meter.stop()
    # Here, once per case and after the reading: not in the timed worker, which runs again for
    # every pass (and takes block turns in bench ab).
    from attnbench.engine.patterns import pattern_of  # a picture of the mask, for the report

    approx = None
    if settings.quality == "approx":  # after the reading, in this worker: once per case, never timed
        from attnbench.engine.approx_quality import approx_figures
        from attnbench.workloads.structured_inputs import StructureParams

        approx = approx_figures(cls, cls.make_params(case.params_dict), case, StructureParams(seed=settings.seed))
    return MemoryMeasurement(
        peak_memory_bytes=reading.peak_bytes,
        memory_method=reading.method,
        memory_reason=reading.reason,
        memory_details=reading.details,
        attention_ops=ops if record_ops else None,
        pattern=pattern_of(case),
        approx_quality=approx,
    )


def measure_profile(case: Case, settings: RunSettings) -> dict[str, Any]:
    """The case under its backend's profiler, in a process of its own (never the timed one)."""
    from attnbench.engine.profiling import profile_phase

    return {"profile": profile_phase(case, settings)}


PHASES = {"time": measure_time, "memory": measure_memory, "profile": measure_profile}
QUALITY_PHASES = {"quality": quality_phase, "quality_memory": quality_memory_phase}


def _mark_oom_victim() -> None:
    """If the kernel must kill something for memory, let it be this worker, not the sweep."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def child_main(
    conn: Connection, case: Case | QualityJob, settings: RunSettings, phase: str, turns: BlockTurns | None = None
) -> None:
    """Entry point of the worker process: send back ("ok", result) or ("failed", status, reason, tb),
    in a tuple (entered, left, message), after the (FIRST_CALL, ...) reports of the time and memory phases."""
    entered = time.perf_counter()
    die_with_parent()
    # A group of its own: the executor kills the case's own child processes with it, and a
    # Ctrl-C at the terminal reaches the driver alone, which decides what happens to the case.
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _mark_oom_victim()
    if settings.plugins:
        os.environ[PLUGINS_ENV] = settings.plugins

    def first_call(seconds: float | None) -> None:
        conn.send((FIRST_CALL, seconds))

    try:
        if phase == "time":
            result = measure_time(case, settings, turns, first_call)
        elif phase == "memory":
            result = measure_memory(case, settings, first_call)
        elif phase in QUALITY_PHASES:  # bench quality: `case` is a QualityJob
            result = QUALITY_PHASES[phase](case, settings, first_call)
        else:
            result = PHASES[phase](case, settings)
        message: tuple = ("ok", result)
    except BaseException as exc:
        status = classify(exc)
        reason = f"{type(exc).__name__}: {exc}".strip()
        message = ("failed", status, reason, traceback.format_exc())
    conn.send((entered, time.perf_counter(), message))
    conn.close()
