"""Needle retrieval at a chosen distance: where the dependency length makes a pattern fail.

Vocabulary: keys are tokens [0, num_keys), values the next num_values tokens, filler the
next num_filler; the ranges are disjoint.

A sequence of n tokens is filler except: the needle, a key K followed by its value V at
positions p and p + 1; ``num_distractors`` other pairs ``K' V'`` with keys distinct from K and
from each other, at random positions that overlap nothing else; and the query, K again at the
last position n - 1. K thus appears exactly twice. The target at n - 1 is V as a class in
[0, num_values); nothing is asked elsewhere. The distance d = (n - 1) - p is ``distance``
when that is set (not 0), else uniform in [distance_min, distance_max] per example
(distance_max = 0 means n - 2). d >= 2 keeps V before the query; d <= n - 2 keeps the
needle off position 0, which the global tokens of sparse patterns would see from everywhere.
``distances`` holds d at n - 1.

Distractors are placed greedily in a random order of start positions; n >= 3·num_distractors + 5
guarantees they fit wherever the needle is (a maximal packing of pairs leaves at most one
free cell between two pairs, so each of the two stretches beside the needle takes at least a
third of its length minus one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from attnbench.workloads.shape import require_int
from attnbench.workloads.tasks.base import IGNORE, RecallTask, TaskBatch

MIN_DISTANCE = 2


@dataclass(frozen=True)
class RetrievalParams:
    num_keys: int = 32
    num_values: int = 32
    num_filler: int = 32
    distance_min: int = MIN_DISTANCE
    distance_max: int = 0  # 0 = n - 2
    distance: int = 0  # 0 = drawn from [distance_min, distance_max]; else every example uses it
    num_distractors: int = 4

    def __post_init__(self) -> None:
        for name in ("num_keys", "num_values", "num_filler"):
            require_int(name, getattr(self, name), 1)
        require_int("num_distractors", self.num_distractors, 0)
        require_int("distance_min", self.distance_min, MIN_DISTANCE)
        for name in ("distance_max", "distance"):
            value = getattr(self, name)
            require_int(name, value, 0)
            if value == 1:
                raise ValueError(f"{name} must be 0 or >= {MIN_DISTANCE}, got 1")
        if self.distance_max and self.distance_max < self.distance_min:
            raise ValueError(f"distance_max={self.distance_max} is below distance_min={self.distance_min}")
        if self.num_keys < self.num_distractors + 1:
            raise ValueError(
                f"num_distractors={self.num_distractors} needs num_keys >= {self.num_distractors + 1} "
                f"(the needle's key and distinct distractor keys), got {self.num_keys}"
            )


class RetrievalTask(RecallTask):
    """Needle lookup at distance d; chance = 1 / num_values (values are uniform)."""

    name: ClassVar[str] = "retrieval"
    summary: ClassVar[str] = "needle retrieval: the last token repeats a key planted d tokens back; answer its value"
    Params: ClassVar[type] = RetrievalParams

    def __init__(self, params: RetrievalParams, seq_len: int) -> None:
        super().__init__(params, seq_len)
        n, limit = seq_len, seq_len - 2
        need = 3 * params.num_distractors + 5
        if n < need:
            raise ValueError(
                f"retrieval: num_distractors={params.num_distractors} needs n >= 3*{params.num_distractors}+5 = {need},"
                f" got n={n}"
            )
        for name in ("distance", "distance_max"):
            if getattr(params, name) > limit:
                raise ValueError(f"retrieval: {name}={getattr(params, name)} exceeds n-2 = {limit} (n={n})")
        if params.distance_min > limit:
            raise ValueError(f"retrieval: distance_min={params.distance_min} exceeds n-2 = {limit} (n={n})")

    @property
    def distance_range(self) -> tuple[int, int]:
        """The distances drawn, both ends included."""
        p = self.params
        if p.distance:
            return p.distance, p.distance
        return p.distance_min, p.distance_max or self.seq_len - 2

    def generate(self, batch: int, generator: torch.Generator) -> TaskBatch:
        self._check_batch(batch)
        p, n, g = self.params, self.seq_len, generator
        low, high = self.distance_range
        dist = torch.randint(low, high + 1, (batch,), generator=g)
        needle = (n - 1) - dist
        keys = torch.rand(batch, p.num_keys, generator=g).argsort(dim=1)[:, : p.num_distractors + 1]
        values = torch.randint(p.num_values, (batch, p.num_distractors + 1), generator=g)
        tokens = torch.randint(p.num_filler, (batch, n), generator=g) + (p.num_keys + p.num_values)
        order = torch.rand(batch, n - 2, generator=g).argsort(dim=1)  # candidate distractor starts 0 .. n-3

        starts = []
        for row_order, at in zip(order.tolist(), needle.tolist(), strict=True):
            taken = bytearray(n)
            taken[at] = taken[at + 1] = taken[n - 1] = 1
            row: list[int] = []
            for s in row_order:
                if len(row) == p.num_distractors:
                    break
                if not taken[s] and not taken[s + 1]:
                    taken[s] = taken[s + 1] = 1
                    row.append(s)
            starts.append(row)
        start = torch.tensor(starts, dtype=torch.int64).reshape(batch, p.num_distractors)
        tokens.scatter_(1, start, keys[:, 1:])
        tokens.scatter_(1, start + 1, values[:, 1:] + p.num_keys)

        rows = torch.arange(batch)
        tokens[rows, needle] = keys[:, 0]
        tokens[rows, needle + 1] = values[:, 0] + p.num_keys
        tokens[:, n - 1] = keys[:, 0]
        targets = torch.full((batch, n), IGNORE, dtype=torch.int64)
        targets[:, n - 1] = values[:, 0]
        distances = torch.full((batch, n), -1, dtype=torch.int64)
        distances[:, n - 1] = dist
        return TaskBatch(tokens=tokens, targets=targets, distances=distances)
