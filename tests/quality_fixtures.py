"""Quality run folders with chosen numbers, written in the result contract (run.json, an empty
cases.jsonl, quality.jsonl through attnbench.core.quality_record, maps/), and a `bench run
--quality approx` run; read by the real readers. The numbers and what follows from them are in
tests/test_report_quality.py's docstring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnbench.core.quality_record import QualityRecord, append_quality
from tests.synthetic_runs import Case, noisy, write_run

RUN_ID = "20261201-000000-quality-smoke-q001"
LISTOPS = {  # variant -> (params, accuracies over seeds 0..2, ms per step)
    "sparse.sliding_window": ({"window": 16, "global_tokens": 0, "causal": False}, (0.40, 0.50, 0.60), 10.0),
    "sparse.bigbird": ({"block": 64, "causal": False}, (0.55, 0.60, 0.65), 20.0),
    "hierarchical.han": ({"sentence": 64}, (0.20, 0.30, 0.40), 30.0),
    "full.sdpa": ({"causal": False}, (0.60, 0.70, 0.80), 40.0),
    "sparse.lsh": ({"buckets": 4, "causal": False}, (0.80, 0.85, 0.90), 60.0),
}


def record(
    task: str,
    variant: str,
    params: dict[str, Any],
    seed: int,
    accuracy: float | None,
    step_ms: float | None,
    n: int = 128,
    chance: float = 0.1,
    **extra: Any,
) -> QualityRecord:
    config = f"{task}-{variant}-n{n}-" + "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    ok = extra.get("status", "ok") == "ok"
    return QualityRecord(
        job_id=f"{config}-s{seed}",
        config_id=config,
        task=task,
        task_params={},
        case_id=f"{variant}-cpu-n{n}",
        variant=variant,
        params=params,
        impl="native",
        transform="none",
        backend="cpu",
        dtype="float32",
        seq_len=n,
        batch=8,
        model={"layers": 2, "model_dim": 64, "heads": 4},
        seed=seed,
        steps=50,
        lr=1e-3,
        **{"status": "ok", **extra},
        accuracy=accuracy,
        chance=chance,
        asked=200 if ok else None,
        learned=(accuracy or 0) > 0.2 if ok else None,
        step_time_s={"median": step_ms / 1e3} if step_ms is not None else None,
        peak_memory_bytes=(2 + seed) * 2**20 if ok else None,
        train_wall_s=1.0 if ok else None,
    )


def tiny_map(task: str, variant: str, seed: int) -> dict[str, Any]:
    """One layer, two heads, 8 × 8 cells pooled 2 × 2 from n=16: a diagonal band."""
    head = [[0.5 if abs(i - j) <= 1 else 0.0 for j in range(8)] for i in range(8)]
    return {
        "task": task,
        "variant": variant,
        "impl": "native",
        "seq_len": 16,
        "seed": seed,
        "pool": 2,
        "asked_positions": [15],
        "answers": [3],
        "predicted": [5],
        "layers": [{"layer": 0, "heads": [head, head]}],
    }


def write_quality_run(folder: Path, run_id: str = RUN_ID, maps: bool = True) -> Path:
    """A `bench quality` run folder: run.json, an empty cases.jsonl, quality.jsonl and maps/."""
    write_run(folder, run_id, [], suite="quality-smoke", argv=["bench", "quality"])
    for variant, (params, accs, ms) in LISTOPS.items():
        for seed, acc in enumerate(accs):
            append_quality(folder, record("listops", variant, params, seed, acc, ms, chance=0.14))
    # retrieval at two lengths, with dependency distances; full.sdpa with maps, one lsh seed diverged
    bins = [{"lo": 1, "hi": 2, "asked": 10, "correct": 9}, {"lo": 2, "hi": 4, "asked": 10, "correct": 5}]
    for n in (16, 32):
        for seed in range(2):
            rel = f"maps/retrieval-full.sdpa-n{n}-s{seed}.json"
            if maps:
                (folder / "maps").mkdir(exist_ok=True)
                (folder / rel).write_text(json.dumps(tiny_map("retrieval", "full.sdpa", seed)))
            append_quality(
                folder,
                record(
                    "retrieval",
                    "full.sdpa",
                    {"causal": False},
                    seed,
                    0.7,
                    5.0 * n / 16,
                    n=n,
                    by_distance=bins,
                    maps=rel if maps else None,
                ),
            )
        append_quality(folder, record("retrieval", "sparse.lsh", {"buckets": 4}, 0, 0.3, 7.0, n=n, by_distance=bins))
        append_quality(
            folder,
            record(
                "retrieval",
                "sparse.lsh",
                {"buckets": 4},
                1,
                None,
                None,
                n=n,
                status="diverged",
                reason="the training loss was nan at step 7; not evaluated",
            ),
        )
    return folder


def _approx(rel_err: float, mass: float) -> dict[str, Any]:
    return {
        "seq_len": 256,
        "heads": 4,
        "generator": {},
        "reference": "full",
        "rel_err": rel_err,
        "cosine": 1 - rel_err / 2,
        "pattern_mass": mass,
        "partner_recall": mass,
        "long_range_mass": mass / 2,
        "pattern_mass_reason": None,
        "note": None,
    }


def write_approx_run(folder: Path) -> Path:
    """A `bench run --quality approx` run: full 4 ms exact, sliding window 1 ms with error 0.3,
    bigbird 2 ms with error 0.5 (slower and worse than sliding window), han without figures."""
    designs = [
        ("full.sdpa", 4e-3, _approx(0.0, 1.0)),
        ("sparse.sliding_window", 1e-3, _approx(0.3, 0.8)),
        ("sparse.bigbird", 2e-3, _approx(0.5, 0.6)),
        ("hierarchical.han", 3e-3, {"unavailable": "hierarchical.han has no core attention to compare"}),
    ]
    cases = [
        Case(f"{v}-n256", noisy(t, 20, 0.01, i), variant=v, seq_len=256, extra={"approx_quality": a})
        for i, (v, t, a) in enumerate(designs)
    ]
    return write_run(folder, "20261201-000000-default-a001", cases, suite="default")
