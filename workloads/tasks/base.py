"""The synthetic-task base class and the batch it yields (`bench quality`).

A task draws token sequences with per-position targets for a small classifier that reads
out a class at every position; the loss and the accuracy count only positions whose target
is not ``IGNORE``. Each task also carries a brute-force solver, so tests can check that
every drawn target follows from the tokens alone (nothing leaks from the generator).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

# torch.nn.functional.cross_entropy's default ignore_index: positions where nothing is asked.
IGNORE = -100


@dataclass(frozen=True)
class TaskBatch:
    """B sequences of n tokens. ``distances`` says, per asked position, how far the token(s) the
    answer depends on lie (-1 where nothing is asked, or where a task has no such distance)."""

    tokens: Tensor  # (B, n) int64 in [0, vocab_size)
    targets: Tensor  # (B, n) int64: IGNORE, or a class in [0, num_classes)
    distances: Tensor  # (B, n) int64


class Task(ABC):
    """One synthetic task at one sequence length. Subclasses set the class attributes."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type]

    def __init__(self, params: Any, seq_len: int) -> None:
        if not isinstance(params, self.Params):
            raise ValueError(f"{self.name}: params must be {self.Params.__name__}, got {type(params).__name__}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"{self.name}: seq_len must be a positive integer, got {seq_len!r}")
        self.params = params
        self.seq_len = seq_len

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @abstractmethod
    def chance(self) -> float:
        """Accuracy per asked position of the best guess that ignores the input."""

    @abstractmethod
    def generate(self, batch: int, generator: torch.Generator) -> TaskBatch:
        """Draw `batch` examples; the same generator state gives the same batch."""

    @abstractmethod
    def solve(self, tokens: Tensor) -> Tensor:
        """(B, n) targets computed from the tokens alone, IGNORE where nothing is asked."""

    @classmethod
    def make_params(cls, values: dict[str, Any]) -> Any:
        known = [f.name for f in dataclasses.fields(cls.Params)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} for task {cls.name}; known: {', '.join(known)}")
        return cls.Params(**values)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.Params())

    def _check_batch(self, batch: int) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{self.name}: batch must be a positive integer, got {batch!r}")


def require_number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    """Parameter check for floats: a real number (not a bool) in [low, high], or (low, high] if low_open."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


def recall_targets(tokens: Tensor, num_keys: int, num_values: int) -> Tensor:
    """Brute-force solver shared by the recall tasks (keys are tokens [0, num_keys), values the
    next num_values tokens): a key token that already occurred earlier in the row is a query, and
    its answer is the value token right after that key's first occurrence."""
    rows = tokens.tolist()
    out = [[IGNORE] * len(row) for row in rows]
    for b, row in enumerate(rows):
        first: dict[int, int] = {}
        for i, token in enumerate(row):
            if token >= num_keys:
                continue
            if token not in first:
                first[token] = i
                continue
            answer = row[first[token] + 1]
            if not num_keys <= answer < num_keys + num_values:
                raise ValueError(f"position {first[token] + 1} of row {b} holds {answer}, not a value token")
            out[b][i] = answer - num_keys
    return torch.tensor(out, dtype=torch.int64).reshape(tokens.shape)


class RecallTask(Task):
    """A task whose sequences hold keys, values and filler from disjoint ranges (mqar, retrieval):
    the vocabulary, the classes (the values), chance and the solver are the same for both."""

    @property
    def vocab_size(self) -> int:
        p = self.params
        return p.num_keys + p.num_values + p.num_filler

    @property
    def num_classes(self) -> int:
        return self.params.num_values

    def chance(self) -> float:
        return 1.0 / self.params.num_values

    def solve(self, tokens: Tensor) -> Tensor:
        return recall_targets(tokens, self.params.num_keys, self.params.num_values)
