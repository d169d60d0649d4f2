"""Synthetic stored runs for the report tests, with known answers.

The numbers follow exact formulas, so a test can assert a crossover or a slope to the
digit; everything about them says "synthetic" (suite, host, device) so no report made
from them can be mistaken for a measurement. Real runs live beside them in
tests/fixtures/report/ (see its README).

    python -m tests.report_fixtures tests/fixtures/report/synthetic-gpu   # regenerate the committed one
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

from attnbench.core.record import CASE_SCHEMA, RUN_SCHEMA
from attnbench.core.results import CASES_FILE, RUN_FILE

LENGTHS = (512, 1024, 2048, 4096, 8192)
HEADS, HEAD_DIM = 8, 64
POWER_W = 300.0  # energy per call = power × time
PEAKS = {
    "source": "calibrated",
    "reason": None,
    "matmul_flops_per_s": {"float32": 20e12, "float16": 100e12},
    "memory_bytes_per_s": 2e12,
}


def sdpa_time(n: int) -> float:
    return 1e-9 * n * n


def window_time(n: int) -> float:
    # speedup of the window over sdpa = n / 2000: the crossover is at n = 2000 exactly
    return 2e-6 * n


BIGBIRD_SPEEDUP = {512: 1.2, 1024: 0.9, 2048: 1.5, 4096: 2.0, 8192: 2.5}  # wins, loses once, then wins for good


def run_dict(run_id: str, host: str, backend: str, device: str, peaks: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "schema": RUN_SCHEMA,
        "run_id": run_id,
        "suite": "synthetic",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:10:00+00:00",
        "status": "complete",
        "argv": ["synthetic test fixture: tests/report_fixtures.py"],
        "git": {"commit": "0" * 40, "dirty": False},
        "host": {"hostname": host, "cpu": "synthetic", "physical_cores": 8, "memory_bytes": 2**36},
        "packages": {"torch": "synthetic"},
        "devices": [{"backend": backend, "name": device, "kind": "gpu", "peaks": peaks}],
    }


@functools.cache
def _stored_pattern(variant: str, params_json: str, n: int) -> dict[str, Any] | None:
    """What the worker stores as the case's `pattern`, built by the same code (once per process)."""
    from attnbench.core.cases import Case
    from attnbench.engine.patterns import pattern_of  # imports torch, only when a run is written

    params = tuple(sorted(json.loads(params_json).items()))
    return pattern_of(Case(variant, params, "core", "cuda", "float32", "forward", 1, HEADS, HEAD_DIM, n))


def case(
    run_id: str,
    backend: str,
    device: str,
    variant: str,
    n: int,
    seconds: float | None,
    status: str = "ok",
    reason: str | None = None,
    stable: bool = True,
    params: dict[str, Any] | None = None,
    energy: bool = True,
    dtype: str = "float32",
) -> dict[str, Any]:
    flops = 4.0 * n * n * HEAD_DIM * HEADS
    min_bytes = 4 * 4 * n * HEADS * HEAD_DIM  # q, k, v and the output, float32
    rec: dict[str, Any] = {
        "schema": CASE_SCHEMA,
        "run_id": run_id,
        "case_id": f"{variant}-{backend}-n{n}-synthetic",
        "variant": variant,
        "family": variant.split(".")[0],
        "params": params if params is not None else {"causal": False},
        "derived_params": [],
        "scope": "core",
        "backend": backend,
        "device": device,
        "dtype": dtype,
        "mode": "forward",
        "batch": 1,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "seq_len": n,
        "status": status,
        "reason": reason,
        "time_s": None,
        "compile_s": None,
        "tokens_per_s": None,
        "flops": flops,
        "flops_per_s": None,
        "peak_memory_bytes": None,
        "memory_method": "synthetic",
        "analytic_min_bytes": min_bytes,
        "energy_j": None,
        "energy_method": None,
        "energy_reason": None if energy else "synthetic: no counter",
        "stable": None,
    }
    if status == "ok" and seconds is not None:
        spread = 0.02 if stable else 0.3
        rec.update(
            time_s={
                "median": seconds,
                "mean": seconds,
                "stdev": seconds * spread / 2,
                "min": seconds * (1 - spread),
                "max": seconds * (1 + spread),
                "iqr": seconds * spread,
                "ci95_low": seconds * (1 - spread / 2),
                "ci95_high": seconds * (1 + spread / 2),
                "n": 20,
                "samples": [seconds] * 20,
            },
            tokens_per_s=n / seconds,
            flops_per_s=flops / seconds,
            bytes_per_s=min_bytes / seconds,
            peak_memory_bytes=8 * n * n if variant == "full.naive" else 64 * n * HEADS,
            stable=stable,
        )
        if energy:
            rec["energy_j"] = POWER_W * seconds
            rec["energy_method"] = "synthetic"
            rec["energy_per_token_j"] = POWER_W * seconds / n
        pattern = _stored_pattern(variant, json.dumps(rec["params"], sort_keys=True), n)
        if pattern is not None:  # as the record writes it: no key where there is nothing to draw
            rec["pattern"] = dict(pattern)
        if PEAKS["matmul_flops_per_s"].get(dtype):
            rec["fraction_of_peak"] = {
                "flops": rec["flops_per_s"] / PEAKS["matmul_flops_per_s"][dtype],
                "bytes": rec["bytes_per_s"] / PEAKS["memory_bytes_per_s"],
                "source": "calibrated",
                "reason": None,
            }
    return rec


def synthetic_cases(run_id: str, backend: str, device: str, scale: float = 1.0, energy: bool = True) -> list[dict]:
    out = []
    for n in LENGTHS:
        out.append(case(run_id, backend, device, "full.sdpa", n, scale * sdpa_time(n), energy=energy))
        out.append(
            case(
                run_id,
                backend,
                device,
                "sparse.sliding_window",
                n,
                scale * window_time(n),
                params={"window": 64, "global_tokens": 0, "dilation": 1, "causal": False},
                stable=n != 1024,  # one unstable point, drawn hollow
                energy=energy,
            )
        )
        bb = {"block": 64, "random_blocks": 3, "seed": 0, "causal": False, "attention": "block_sparse"}
        if n == 4096:
            out.append(
                case(run_id, backend, device, "sparse.bigbird", n, None, "error", "RuntimeError: synthetic", params=bb)
            )
        else:
            t = scale * sdpa_time(n) / BIGBIRD_SPEEDUP[n]
            out.append(case(run_id, backend, device, "sparse.bigbird", n, t, params=bb, energy=energy))
        if n <= 2048:
            out.append(case(run_id, backend, device, "full.naive", n, scale * 3 * sdpa_time(n), energy=energy))
        elif n == 4096:
            out.append(
                case(
                    run_id,
                    backend,
                    device,
                    "full.naive",
                    n,
                    None,
                    "oom",
                    "worker resident memory 9.10 GiB exceeded the limit of 8.00 GiB and was stopped",
                )
            )
        else:
            out.append(
                case(
                    run_id,
                    backend,
                    device,
                    "full.naive",
                    n,
                    None,
                    "skipped",
                    "full.naive ran out of memory at n=4096 (case full.naive-cuda-n4096-synthetic), "
                    "so longer lengths are skipped",
                )
            )
    return out


def write_run(
    folder: Path,
    run_id: str = "20260101-000000-synthetic-gpu0",
    host: str = "synthetic-host",
    backend: str = "cuda",
    device: str = "Synthetic GPU (test fixture)",
    peaks: dict[str, Any] | None = PEAKS,
    scale: float = 1.0,
    energy: bool = True,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps(run_dict(run_id, host, backend, device, peaks), indent=2) + "\n")
    with open(folder / CASES_FILE, "w") as f:
        for rec in synthetic_cases(run_id, backend, device, scale, energy):
            f.write(json.dumps(rec) + "\n")
    return folder


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "report"
REAL_CPU = FIXTURES / "cpu-sparse-act"
REAL_CPU_ORT = FIXTURES / "cpu-vs-onnxruntime"
SYNTHETIC = FIXTURES / "synthetic-gpu"
_rendered: dict[tuple[str, ...], Path] = {}


def rendered_report(*runs: Path) -> Path:
    """`bench report RUNS --out <temp>` once per test process (figures take seconds to draw),
    shared by the test modules that inspect the same report."""
    import atexit
    import shutil
    import tempfile

    from attnbench.cli.main import main

    key = tuple(str(r) for r in runs)
    if key not in _rendered:
        tmp = Path(tempfile.mkdtemp(prefix="attnbench-report-"))
        atexit.register(shutil.rmtree, tmp, True)
        out = tmp / "report"
        rc = main(["report", *key, "--out", str(out)])
        assert rc == 0
        _rendered[key] = out
    return _rendered[key]


if __name__ == "__main__":
    write_run(Path(sys.argv[1]))
