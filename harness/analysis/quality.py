"""Quality figures from stored quality.jsonl records: one point per configuration (task, design,
implementation, length), its accuracy over seeds with a 95% CI, its cost, the Pareto front of
cost against accuracy, and LRA's published ordering against the measured one.

Reads records only (attnbench.core.quality_record), never runs anything, never imports torch.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from attnbench.analysis.lra_accuracy import label_for, lra_table, published_order
from attnbench.analysis.quality_stats import KendallTau, SeedSummary, pareto_front, rank_agreement, seed_summary
from attnbench.core.quality_record import QualityRecord


def design_label(variant: str, params: dict[str, Any]) -> str:
    """The design as reports name it: the variant, with what tells two of its configurations apart
    where LRA names them differently (sliding window with and without global tokens)."""
    if variant == "sparse.sliding_window":
        g = params.get("global_tokens", 0)
        return f"{variant} (W={params.get('window')}, g={g})"
    return variant


@dataclass(frozen=True)
class QualityPoint:
    """One configuration's figures over its seeds."""

    config_id: str
    task: str
    variant: str
    params: dict[str, Any]
    label: str
    impl: str
    transform: str
    backend: str
    dtype: str
    seq_len: int
    steps: int
    accuracy: SeedSummary  # over the seeds that trained and were evaluated
    chance: float | None
    seeds: int  # jobs recorded for the configuration
    statuses: dict[str, int]  # status -> jobs
    reasons: tuple[str, ...]  # distinct reasons of jobs that are not ok, or not above chance
    learned: int  # seeds above chance (one-sided binomial p < 0.01)
    step_time_s: float | None  # median over seeds of each seed's median step
    peak_memory_bytes: int | None  # largest over seeds
    train_wall_s: float | None  # mean over seeds
    by_distance: tuple[dict[str, Any], ...]  # per distance bin, summed over seeds: lo, hi, asked, correct
    maps: tuple[str, ...]  # map files, seed by seed
    pareto: bool = False  # on the front of (time per step, accuracy) within its task and length
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def impl_label(self) -> str:
        return self.label if self.impl == "native" else f"{self.label} [{self.impl}]"


def _merge_bins(records: Sequence[QualityRecord]) -> tuple[dict[str, Any], ...]:
    bins: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        for b in r.by_distance or ():
            acc = bins[(b["lo"], b["hi"])]
            acc[0] += b["asked"]
            acc[1] += b["correct"]
    return tuple({"lo": lo, "hi": hi, "asked": a, "correct": c} for (lo, hi), (a, c) in sorted(bins.items()))


def summarize_quality(records: Sequence[QualityRecord]) -> list[QualityPoint]:
    """One point per configuration, in the order the records first name them; the Pareto front
    is marked within each (task, length, backend, dtype)."""
    groups: dict[str, list[QualityRecord]] = {}
    for r in records:
        groups.setdefault(r.config_id, []).append(r)
    points = []
    for config_id, rs in groups.items():
        first = rs[0]
        ok = [r for r in rs if r.status == "ok"]
        steps = [r.step_time_s["median"] for r in ok if r.step_time_s]
        peaks = [r.peak_memory_bytes for r in ok if r.peak_memory_bytes is not None]
        walls = [r.train_wall_s for r in ok if r.train_wall_s is not None]
        reasons = tuple(dict.fromkeys(r.reason for r in rs if r.reason))
        points.append(
            QualityPoint(
                config_id=config_id,
                task=first.task,
                variant=first.variant,
                params=first.params,
                label=design_label(first.variant, first.params),
                impl=first.impl,
                transform=first.transform,
                backend=first.backend,
                dtype=first.dtype,
                seq_len=first.seq_len,
                steps=first.steps,
                accuracy=seed_summary([r.accuracy for r in ok], bounds=(0.0, 1.0)),
                chance=next((r.chance for r in rs if r.chance is not None), None),
                seeds=len(rs),
                statuses=dict(Counter(r.status for r in rs)),
                reasons=reasons,
                learned=sum(1 for r in ok if r.learned),
                step_time_s=statistics.median(steps) if steps else None,
                peak_memory_bytes=max(peaks) if peaks else None,
                train_wall_s=statistics.fmean(walls) if walls else None,
                by_distance=_merge_bins(ok),
                maps=tuple(r.maps for r in rs if r.maps),
            )
        )
    return _mark_pareto(points)


def _mark_pareto(points: list[QualityPoint]) -> list[QualityPoint]:
    where: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(points):
        where[(p.task, p.seq_len, p.backend, p.dtype)].append(i)
    out = list(points)
    for idx in where.values():
        front = pareto_front([(points[i].step_time_s, points[i].accuracy.mean) for i in idx])
        for i, on in zip(idx, front, strict=True):
            out[i] = replace(points[i], pareto=on)
    return out


@dataclass(frozen=True)
class LraAgreement:
    """LRA's published accuracy ordering on one of its tasks against the measured one here."""

    lra_task: str
    task: str  # this project's task
    seq_len: int  # the measured length compared (the longest with at least 3 designs)
    published: dict[str, float]  # label -> accuracy (%)
    measured: dict[str, float]  # label -> mean accuracy (0..1)
    tau: KendallTau | None  # None: fewer than 3 designs in common
    note: str


def lra_agreement(points: Sequence[QualityPoint]) -> list[LraAgreement]:
    """For every LRA task this project reproduces (ListOps), the published ordering of the
    models this project has against the measured mean accuracy of the matching native designs."""
    table = lra_table()
    out = []
    for lra_task, task in table.task_of.items():
        if task is None:
            continue
        ours = [p for p in points if p.task == task and p.impl == "native" and p.accuracy.mean is not None]
        by_len: dict[int, dict[str, float]] = defaultdict(dict)
        for p in ours:
            label = label_for(p.variant, p.params, table)
            if label is not None:
                by_len[p.seq_len][label] = p.accuracy.mean  # type: ignore[assignment]
        usable = [n for n, m in by_len.items() if len(m) >= 3] or list(by_len)
        if not usable:
            continue
        n = max(usable)
        published = published_order(lra_task)
        measured = by_len[n]
        out.append(
            LraAgreement(
                lra_task=lra_task,
                task=task,
                seq_len=n,
                published={k: v for k, v in published.items() if k in measured},
                measured=measured,
                tau=rank_agreement(published, measured),
                note=(
                    "orderings only: LRA trained at up to 2K tokens on TPUs for many steps; "
                    f"here a {ours[0].steps}-step CPU run at n={n}, so only the rank order is comparable"
                ),
            )
        )
    return out
