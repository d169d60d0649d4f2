"""One case timed in several passes over the sweep (RunSettings.passes), merged into one result.

Why passes: a cloud VM's speed drifts over seconds (attnbench.core.machine_check), so one worker
sampling a case for a few seconds sees one stretch of it, and the next run of the same
code may see another. Spreading a case's samples over the run's length, in fresh
processes, puts the host's variation inside each run's samples, where the comparison's
statistics can see it, instead of between runs, where they cannot.

Pass 1 does everything (verification, timing, energy, memory); later passes only time.
The merged record's time_s summarises every sample; `passes` lists each pass's own figures.

A case's record reaches cases.jsonl when its last pass ends, so each finished pass is
first appended to passes.jsonl in the run folder: a driver that dies between passes loses
nothing, and `bench run --resume` continues those cases from their next pass.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from attnbench.core import machine_check
from attnbench.core.record import Measurement
from attnbench.core.results import append_line
from attnbench.core.stats import UNSTABLE_IQR_RATIO, converged, is_stable, summarize
from attnbench.core.strict_json import dumps
from attnbench.engine.executors.base import Outcome

PASSES_FILE = "passes.jsonl"


def save_pass(folder: Path, case_id: str, number: int, outcome: Outcome, wall_s: float) -> None:
    """Append one finished pass of a case to the run folder's passes.jsonl, synced to disk."""
    saved = {**dataclasses.asdict(dataclasses.replace(outcome, result=None)), "result": outcome.result.to_json()}
    line = dumps({"case_id": case_id, "pass": number, "wall_s": wall_s, "outcome": saved}, default=str)
    append_line(folder / PASSES_FILE, line)


def saved_passes(folder: Path) -> dict[str, tuple[list[Outcome], float]]:
    """case_id -> (its passes in order, wall seconds), from passes.jsonl; a torn last line is
    what a killed driver leaves, and is dropped."""
    path = folder / PASSES_FILE
    out: dict[str, tuple[list[Outcome], float]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        outcomes, wall = out.get(entry["case_id"], ([], 0.0))
        if entry["pass"] == len(outcomes) + 1:
            outcome = Outcome(**entry["outcome"])
            outcome.result = Measurement.from_json(outcome.result)
            outcomes.append(outcome)
            out[entry["case_id"]] = (outcomes, wall + entry["wall_s"])
    return out


def pass_summary(number: int, outcome: Outcome) -> dict[str, Any]:
    """What a record keeps of one pass (CaseRecord.passes)."""
    r: Measurement = outcome.result
    samples = r.time_s.samples
    return {
        "pass": number,
        "n": len(samples),
        "median_s": r.time_s.median,
        "min_s": min(samples),
        "calls_per_sample": r.calls_per_sample,
        "blocks": r.block_samples,  # bench ab: samples per block turn (attnbench.engine.turns)
        "cpus": (r.turns or {}).get("cpus"),  # bench ab: the CPUs both sides' workers were pinned to
        "stop_reason": r.stop_reason,
        "other_cpu_share": outcome.worker.get("other_cpu_share"),
        "wall_s": outcome.worker.get("wall_s"),
    }


def merge(outcomes: list[Outcome], target_rel_ci: float) -> Outcome:
    """The first pass's outcome with the samples, stability and notes of all passes."""
    first = outcomes[0]
    if len(outcomes) == 1:
        return first
    results: list[Measurement] = [o.result for o in outcomes]
    stats = summarize([s for r in results for s in r.time_s.samples])
    ok = converged(stats, target_rel_ci)
    notes = []
    for number, r in enumerate(results, start=1):
        # Each pass's own CI target is moot (the merged samples are judged below); other notes stay.
        notes += [f"pass {number}: {n}" for n in r.notes if "CI" not in n and "samples" not in n]
    if not ok:
        notes.insert(0, f"median CI ±{stats.ci_half_width_rel:.1%} did not reach ±{target_rel_ci:.1%}")
    if stats.iqr_rel > UNSTABLE_IQR_RATIO:
        notes.insert(0, f"IQR/median {stats.iqr_rel:.1%} over {UNSTABLE_IQR_RATIO:.0%} across the passes")
    blocks = [r.block_samples for r in results]
    turns = [r.turns for r in results]
    merged_turns = results[0].turns
    if all(turns):
        shares = [t["other_cpu_share"] for t in turns if t.get("other_cpu_share") is not None]  # type: ignore[union-attr]
        merged_turns = {
            **{k: sum(t[k] for t in turns) for k in ("blocks", "waited_s", "turn_s")},  # type: ignore[index]
            "other_cpu_share": max(shares) if shares else None,
        }
    result = dataclasses.replace(
        results[0],
        time_s=stats,
        converged=ok,
        stable=is_stable(stats, ok),
        stop_reason=f"{len(outcomes)} passes; pass 1: {results[0].stop_reason}",
        notes=notes,
        machine_check=machine_check.merge([r.machine_check for r in results]),
        passes=[pass_summary(i, o) for i, o in enumerate(outcomes, start=1)],
        block_samples=[n for b in blocks for n in b] if all(blocks) else None,  # type: ignore[union-attr]
        turns=merged_turns,
    )
    worker = dict(first.worker)
    shares = [o.worker.get("other_cpu_share") for o in outcomes]
    shares = [s for s in shares if isinstance(s, (int, float))]
    if shares:  # the busiest pass: a comparison distrusts a case measured on a busy machine
        worker["other_cpu_share"] = max(shares)
    worker["passes_wall_s"] = [o.worker.get("wall_s") for o in outcomes]
    return Outcome(first.status, first.reason, result, first.traceback, worker, first.node)
