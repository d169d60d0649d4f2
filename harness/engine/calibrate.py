"""Measuring a device's peaks for `bench calibrate`: peak matmul rate per dtype and memory
bandwidth, each the best of several timed repetitions at a few sizes (a ceiling is a
maximum, not a typical value), timed with the backend's own clock and synchronisation.
The results are cached per machine fingerprint (attnbench.backends.peaks).

A ceiling measured while other processes ran is too low, and every case then looks closer to
the peak than it is (one stored calibration read 0.116 TFLOP/s float32 on a VM where full.sdpa
itself ran at 0.19 and a quiet calibration read 0.219). So each calibration records the share
of the machine's CPU other processes used while it ran (attnbench.core.cpu_load), and one above
BUSY_SHARE is stored marked busy: kept as evidence, never used as the ceiling, and never in
place of a quiet calibration of the same device.

The first `bench run` on a machine with no calibration for a device it is about to use
measures it once, quickly, in a fresh process (first_run_calibration), unless --no-calibrate
or ATTNBENCH_NO_CALIBRATE says not to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.backends.peaks import is_busy, load_calibration, now_iso, save_calibration
from attnbench.core import cpu_load
from attnbench.core.cases import Case

if TYPE_CHECKING:
    from attnbench.backends.base import Backend
    from attnbench.core.record import CaseRecord, RunRecord

MATMUL_SIZES = {"cpu": (512, 1024, 2048), "cuda": (2048, 4096, 8192), "xla": (1024, 2048, 4096)}
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20, "xla": 256 * 2**20}
REPEATS = 5
# Other processes' share of the CPU above which a calibration is busy. Stricter than bench
# compare's 0.25 (Thresholds.busy_share): a ceiling is a maximum, and every case is divided by it.
BUSY_SHARE = 0.10
NO_CALIBRATE_ENV = "ATTNBENCH_NO_CALIBRATE"  # set (not "0"): bench run never calibrates by itself
FIRST_RUN_TIMEOUT_S = 300.0  # a quick calibration takes seconds; a stuck device must not hold the run


@dataclass(frozen=True)
class Calibration:
    """One device's calibration: the figures, and whether they became its ceiling."""

    key: str  # the device's key in the cache (Backend.peak_key)
    entry: dict[str, Any]  # as stored: figures, method, other_cpu_share, busy, ...
    stored: bool  # False: busy, so the quiet calibration already cached (kept) stays
    kept: dict[str, Any] | None = None


def calibrate(
    backend_cls: type[Backend],
    dtypes: tuple[str, ...],
    threads: int | None,
    quick: bool,
    starting: Callable[[dict[str, Any]], None] = lambda device: None,
    only_if_missing: bool = False,
) -> Calibration | None:
    """Measure the backend's device, cache the figures, and return them (device_name included).
    `starting` is told the device (backend.describe()) before the measuring starts. With
    `only_if_missing`, a device this machine already has a calibration for is left alone (None)."""
    backend = backend_cls()
    settings = backend.setup(Case("calibrate", (), "core", backend.name, dtypes[0], "forward", 1, 1, 1, 1, threads))
    key = backend.peak_key()
    if only_if_missing and key in load_calibration():
        return None
    desc = backend.describe()
    starting(desc)
    busy0, own0, began = cpu_load.busy_seconds(), time.process_time(), time.perf_counter()
    entry = measure_device(backend, dtypes, quick)
    wall = time.perf_counter() - began
    other = cpu_load.other_share(cpu_load.busy_seconds() - busy0, time.process_time() - own0, wall)
    entry.update(
        calibrated_at=now_iso(),
        threads=settings.get("threads"),
        device_name=desc["name"],
        quick=quick,
        measure_s=wall,
        # Other processes' share of the machine's CPU while it measured, and whether that was too much.
        other_cpu_share=other,
        busy_threshold=BUSY_SHARE,
        busy=other is not None and other > BUSY_SHARE,
    )
    kept = load_calibration().get(key)
    if entry["busy"] and kept and not is_busy(kept):
        return Calibration(key, entry, stored=False, kept=kept)
    save_calibration(key, entry)
    return Calibration(key, entry, stored=True)


def _best_rate(timer: Any, step: Any, work: float, repeats: int) -> float:
    """Work per second of the fastest of `repeats` timed calls, after one warm-up call."""
    timer.time(step, 1)
    best = min(timer.time(step, 1) for _ in range(repeats))
    return work / best


def measure_device(backend: Any, dtypes: tuple[str, ...], quick: bool) -> dict[str, Any]:
    import torch

    from attnbench.backends.base import DTYPES

    kind = backend.name
    device = backend.device
    timer = backend.timer()
    sync = getattr(backend, "synchronize", lambda: None)
    sizes = MATMUL_SIZES.get(kind, MATMUL_SIZES["cpu"])
    repeats = 2 if quick else REPEATS
    if quick:
        sizes = sizes[:2]
    flops: dict[str, float] = {}
    per_size: dict[str, dict[str, float]] = {}
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        rates = {}
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)

            def mm(a: Any = a, b: Any = b) -> Any:
                return a @ b

            rates[str(n)] = _best_rate(timer, mm, 2.0 * n**3, repeats)
            del a, b
        per_size[dtype_name] = rates
        flops[dtype_name] = max(rates.values())
    nbytes = COPY_BYTES.get(kind, COPY_BYTES["cpu"]) // (8 if quick else 1)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)

    def copy() -> Any:
        return dst.copy_(src)

    bandwidth = _best_rate(timer, copy, 2.0 * src.numel() * 4, repeats)  # one read and one write per element
    sync()
    return {
        "matmul_flops_per_s": flops,
        "matmul_by_size": per_size,
        "memory_bytes_per_s": bandwidth,
        "method": (
            f"best of {repeats} timed calls ({timer.clock}; {timer.sync}): square matmuls of n={list(sizes)} "
            f"(2n^3 FLOP), and a {nbytes / 2**20:.0f} MiB float32 copy (read + write bytes)"
        ),
    }


# ----------------------------------------------------------------------------- the first run on a machine


def calibration_skipped_by_env() -> bool:
    return os.environ.get(NO_CALIBRATE_ENV, "").strip() not in ("", "0")


def devices_to_calibrate(run: RunRecord, folder: Path) -> dict[str, tuple[str, ...]]:
    """Backend -> dtypes, for each backend of the run that measures a device of its own (its
    `calibrates`) which this machine has no calibration for, with a case left that would start
    a worker: not yet recorded (a resumed run), of a dtype and mode the backend runs, not refused
    for memory. Cheap: no device is touched here (the driver must not hold a device context)."""
    from attnbench.core.cases import Sweep
    from attnbench.core.registry import get_backend
    from attnbench.core.results import CASES_FILE, load_run
    from attnbench.engine.expand import expand
    from attnbench.engine.memory_fit import memory_refusal

    stored = load_calibration()
    done = {c.case_id for c in load_run(folder).cases} if (folder / CASES_FILE).exists() else set()
    wanted: dict[str, list[str]] = {}
    usable: dict[str, bool] = {}
    for case in expand(Sweep.from_json(run.sweep or {})):
        name = case.backend
        if case.case_id in done or case.dtype in wanted.get(name, ()):
            continue
        if name not in usable:
            cls = get_backend(name)
            # The exact key (e.g. cuda:<device name>) needs the device; a key of this backend's will do.
            calibrated = any(k == name or k.startswith(f"{name}:") for k in stored)
            usable[name] = cls.calibrates and not calibrated and cls.availability().available
        if not usable[name]:
            continue
        cls = get_backend(name)
        if case.dtype not in cls.dtypes or case.mode not in cls.modes:
            continue
        try:
            if memory_refusal(case):
                continue
        except Exception:  # an estimate that fails here fails in the worker, said there
            pass
        wanted.setdefault(name, []).append(case.dtype)
    return {name: tuple(dtypes) for name, dtypes in wanted.items()}


def first_run_calibration(run: RunRecord, folder: Path, executor: str) -> list[tuple[str, bool]]:
    """Measure, once, the ceilings of each device the run needs and this machine has no
    calibration for: quick (a few seconds), in a fresh process per device as `bench calibrate`
    is one (the driver never holds a device context, and the workers see the cache). Returns
    the lines to show, each with whether it is a warning; a failure is a warning, never an error.

    Not for Ray (the cases run on the cluster's machines, each with its own cache) nor a side of
    bench ab (the other side runs meanwhile: the machine is busy by design)."""
    from attnbench.engine.turns import INTERLEAVED_ENV

    if executor != "local" or os.environ.get(INTERLEAVED_ENV):
        return []
    try:
        plan = devices_to_calibrate(run, folder)
    except Exception as exc:  # the sweep's own errors are the run's to report
        return [(f"first-run calibration skipped: {_one_line(exc)}", True)]
    return [_calibrate_in_child(name, dtypes) for name, dtypes in plan.items()]


def _calibrate_in_child(backend: str, dtypes: tuple[str, ...]) -> tuple[str, bool]:
    began = time.perf_counter()
    command = [sys.executable, "-m", "attnbench.engine.calibrate", backend, ",".join(dtypes)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FIRST_RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return _failed(backend, f"no result in {FIRST_RUN_TIMEOUT_S:.0f} s")
    except OSError as exc:
        return _failed(backend, _one_line(exc))
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return _failed(backend, last)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return _failed(backend, "the calibrating process gave no result")
    if answer is None:  # calibrated meanwhile, under its exact key
        return f"{backend}: this machine's calibration of its device is used", False
    entry = answer["entry"]
    figures = _figures(backend, entry, seconds)
    if entry.get("busy"):
        return (
            f"{figures}, but other processes used {entry['other_cpu_share']:.0%} of the CPU meanwhile (over "
            f"{BUSY_SHARE:.0%}): kept, not used as the ceiling; run `bench calibrate` when the machine is quiet",
            True,
        )
    return f"{figures} (first run on this machine; --no-calibrate skips)", False


def _figures(backend: str, entry: dict[str, Any], seconds: float) -> str:
    rates = ", ".join(f"{d}: {_num(r / 1e12)} TFLOP/s" for d, r in entry["matmul_flops_per_s"].items())
    return f"calibrated {backend} {rates}, {_num(entry['memory_bytes_per_s'] / 1e9)} GB/s in {seconds:.1f} s"


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def _failed(backend: str, why: str) -> tuple[str, bool]:
    return (
        f"could not calibrate {backend} ({why}); the run goes on without measured ceilings "
        "(`bench calibrate` measures them; --no-calibrate skips this)",
        True,
    )


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def over_ceiling_line(cases: list[CaseRecord]) -> str | None:
    """One line when cases ran faster than their device's stored ceilings (fraction_of_peak's
    over_ceiling), naming the ceilings; None when none did."""
    over: dict[str, int] = {}
    count = 0
    for case in cases:
        frac = case.fraction_of_peak if isinstance(case.fraction_of_peak, dict) else {}
        above = frac.get("over_ceiling") or {}
        if not above:
            continue
        count += 1
        for what in above:
            label = f"{case.backend} {case.dtype} FLOP/s" if what == "flops" else f"{case.backend} bandwidth"
            over[label] = over.get(label, 0) + 1
    if not count:
        return None
    which = ", ".join(f"{label} ({n})" for label, n in sorted(over.items()))
    return (
        f"{count} case(s) ran faster than the stored ceiling ({which}), so their fraction of peak is left out "
        "(fraction_of_peak.reason in cases.jsonl says why); `bench calibrate` on a quiet machine re-measures it"
    )


def _main(argv: list[str]) -> int:
    """The first-run calibration's process: `python -m attnbench.engine.calibrate BACKEND DTYPES`;
    prints the calibration as one JSON line (null: this machine had one already)."""
    from attnbench.core.registry import get_backend, load_plugins

    load_plugins()
    backend, dtypes = argv[0], tuple(argv[1].split(","))
    result = calibrate(get_backend(backend), dtypes, None, quick=True, only_if_missing=True)
    print(json.dumps(None if result is None else {"key": result.key, "entry": result.entry, "stored": result.stored}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
