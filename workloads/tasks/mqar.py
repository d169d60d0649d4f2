"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology").

Vocabulary: keys are tokens [0, num_keys), values the next num_values tokens, filler (noise)
the next num_filler; the three ranges are disjoint, so a key token never appears by chance.

A sequence of n tokens starts with ``num_kv_pairs`` pairs ``k1 v1 k2 v2 ...`` (keys distinct
within a sequence, values drawn independently and uniformly, so two keys may share a value).
``num_queries`` distinct keys of those pairs appear once more after the pairs; every other
position holds filler. The target at a query position is the key's value as a class in
[0, num_values); nothing is asked elsewhere. ``distances`` at a query is its position minus
the position of the key in its pair.

Query positions follow Zoology's power law: slot s = 1 .. n - 2·num_kv_pairs after the pairs
is drawn with weight s^(power_a - 1) (without replacement), so with the default power_a = 0.01
most queries sit soon after the pairs and a long tail reaches the end; power_a = 1 is uniform.
Two differences from Zoology's generator, both because the model here is bidirectional and
reads the answer at the query itself: a query may sit at any position after the pairs (Zoology
uses every second one, leaving room for the answer token of a causal model), and filler comes
from its own range (Zoology's noise is drawn from the whole vocabulary, keys included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from attnbench.workloads.shape import require_int
from attnbench.workloads.tasks.base import IGNORE, RecallTask, TaskBatch, require_number


@dataclass(frozen=True)
class MqarParams:
    num_keys: int = 64
    num_values: int = 64
    num_filler: int = 32
    num_kv_pairs: int = 8
    num_queries: int = 8  # distinct keys asked, at most num_kv_pairs
    power_a: float = 0.01  # query slot s drawn with weight s^(power_a - 1); 1 = uniform

    def __post_init__(self) -> None:
        for name in ("num_keys", "num_values", "num_filler", "num_kv_pairs", "num_queries"):
            require_int(name, getattr(self, name), 1)
        require_number("power_a", self.power_a, 0.0, math.inf, low_open=True)
        if self.num_kv_pairs > self.num_keys:
            raise ValueError(
                f"num_kv_pairs={self.num_kv_pairs} needs as many distinct keys, got num_keys={self.num_keys}"
            )
        if self.num_queries > self.num_kv_pairs:
            raise ValueError(
                f"num_queries={self.num_queries} asks distinct keys, so at most num_kv_pairs={self.num_kv_pairs}"
            )


class MqarTask(RecallTask):
    """Multi-query associative recall; chance = 1 / num_values (values are uniform)."""

    name: ClassVar[str] = "mqar"
    summary: ClassVar[str] = "multi-query associative recall (Zoology): recall each queried key's value"
    Params: ClassVar[type] = MqarParams

    def __init__(self, params: MqarParams, seq_len: int) -> None:
        super().__init__(params, seq_len)
        need = 2 * params.num_kv_pairs + params.num_queries
        if need > seq_len:
            raise ValueError(
                f"mqar: {params.num_kv_pairs} pairs and {params.num_queries} queries need "
                f"2*{params.num_kv_pairs}+{params.num_queries} = {need} <= n positions, got n={seq_len}"
            )

    def generate(self, batch: int, generator: torch.Generator) -> TaskBatch:
        self._check_batch(batch)
        p, n, g = self.params, self.seq_len, generator
        pairs, queries = p.num_kv_pairs, p.num_queries
        context = 2 * pairs
        # Distinct keys per row: the first `pairs` of a random permutation of the key range.
        keys = torch.rand(batch, p.num_keys, generator=g).argsort(dim=1)[:, :pairs]
        values = torch.randint(p.num_values, (batch, pairs), generator=g)
        tokens = torch.randint(p.num_filler, (batch, n), generator=g) + (p.num_keys + p.num_values)
        tokens[:, 0:context:2] = keys
        tokens[:, 1:context:2] = values + p.num_keys

        asked = torch.rand(batch, pairs, generator=g).argsort(dim=1)[:, :queries]  # which pairs are queried
        space = n - context
        weights = torch.arange(1, space + 1, dtype=torch.float64) ** (p.power_a - 1.0)
        slots = torch.multinomial(weights.expand(batch, space), queries, replacement=False, generator=g)
        positions = context + slots

        tokens.scatter_(1, positions, keys.gather(1, asked))
        targets = torch.full((batch, n), IGNORE, dtype=torch.int64)
        targets.scatter_(1, positions, values.gather(1, asked))
        distances = torch.full((batch, n), -1, dtype=torch.int64)
        distances.scatter_(1, positions, positions - 2 * asked)
        return TaskBatch(tokens=tokens, targets=targets, distances=distances)
