"""Run folders with chosen samples, written in the result contract, for history/compare tests.

The files are real (run.json + cases.jsonl through attnbench.core.record and
attnbench.core.results.RunWriter) and are read by the real readers; only the numbers are
chosen, seeded, so statistics tests cannot flake.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.core.record import CASE_SCHEMA, RUN_SCHEMA, CaseRecord, RunRecord
from attnbench.core.results import RunWriter, load_run
from attnbench.core.stats import summarize

HOST = {
    "hostname": "bench-host-1",
    "os": "Linux-6.1-x86_64",
    "python": "3.11.7",
    "cpu": "Test CPU 9000",
    "arch": "x86_64",
    "physical_cores": 2,
    "logical_cores": 2,
    "affinity_cores": 2,
    "memory_bytes": 16 * 2**30,
}
PACKAGES = {"attnbench": "0.1.0", "torch": "2.6.0", "numpy": "2.1.0", "onnxruntime": None}


@dataclass
class Case:
    case_id: str
    samples: list[float] | None
    peak_memory_bytes: int | None = 10 * 2**20
    workload_hash: str | None = "h0"
    status: str = "ok"
    variant: str = "full.sdpa"
    seq_len: int = 512
    energy_j: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of its record (passes, machine_check, ...)


def noisy(median: float, n: int, rel_sigma: float, seed: int) -> list[float]:
    """Log-normal samples around `median` (timing noise is multiplicative and skewed)."""
    rng = random.Random(seed)
    return [median * rng.lognormvariate(0.0, rel_sigma) for _ in range(n)]


def record(run_id: str, c: Case) -> dict[str, Any]:
    ok = c.status == "ok"
    stats = summarize(c.samples).to_json() if ok and c.samples else None
    rec: dict[str, Any] = {
        "schema": CASE_SCHEMA,
        "run_id": run_id,
        "case_id": c.case_id,
        "variant": c.variant,
        "family": c.variant.split(".")[0],
        "params": {"causal": True},
        "scope": "core",
        "backend": "cpu",
        "device": HOST["cpu"],
        "dtype": "float32",
        "mode": "forward",
        "batch": 1,
        "heads": 8,
        "head_dim": 64,
        "seq_len": c.seq_len,
        "threads": None,
        "status": c.status,
        "reason": None if ok else f"deliberate {c.status}",
        "time_s": stats,
        "compile_s": 0.0 if ok else None,
        "tokens_per_s": c.seq_len / stats["median"] if stats else None,
        "flops": 1e9,
        "flops_per_s": 1e9 / stats["median"] if stats else None,
        "peak_memory_bytes": c.peak_memory_bytes if ok else None,
        "memory_method": "test" if ok else None,
        "energy_j": c.energy_j,
        "energy_method": None,
        "energy_reason": None if c.energy_j is not None else "no counter in tests",
        "stable": True if ok else None,
        "calls_per_sample": 1,
        "clock": "time.perf_counter",
        **c.extra,
    }
    if c.workload_hash is not None:
        rec["workload_hash"] = c.workload_hash
    return rec


def write_run(
    folder: Path,
    run_id: str,
    cases: list[Case],
    suite: str = "synthetic",
    started_at: str = "2026-11-01T00:00:00+00:00",
    host: dict[str, Any] | None = None,
    packages: dict[str, Any] | None = None,
    status: str = "complete",
    argv: list[str] | None = None,
    run_extra: dict[str, Any] | None = None,
) -> Path:
    run = {
        "schema": RUN_SCHEMA,
        "run_id": run_id,
        "suite": suite,
        "started_at": started_at,
        "finished_at": started_at if status == "complete" else None,
        "status": status,
        "argv": argv or ["bench", "run", "--suite", suite],
        "git": {"commit": "abc123", "dirty": False},
        "host": {**HOST, **(host or {})},
        "packages": {**PACKAGES, **(packages or {})},
        "devices": [{"backend": "cpu", "name": HOST["cpu"], "kind": "cpu"}],
        "settings": {"max_time_per_case": 1.0},
        **(run_extra or {}),
    }
    writer = RunWriter.create(folder, RunRecord.from_json(run))
    for c in cases:
        writer.append(CaseRecord.from_json(record(run_id, c)))
    writer.close()
    load_run(folder)  # what the tests write must pass the real reader
    return folder
