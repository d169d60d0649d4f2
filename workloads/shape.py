"""Shapes, parameter checks and the constants every variant shares; no torch, so the engine
and the tests can use them without building a module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAMILIES = ("full", "sparse", "adaptive", "hierarchical")
SCOPES = ("core", "layer")
MODES = ("forward", "train")

# FlashAttention benchmark convention: forward+backward costs 3.5x forward for attention.
TRAIN_FLOP_FACTOR_ATTENTION = 3.5
# Matmuls: backward computes two products (input and weight grads) per forward product.
TRAIN_FLOP_FACTOR_LINEAR = 3.0
FFN_MULT = 4


def require_int(name: str, value: Any, minimum: int | None = None) -> None:
    """Parameter check shared by variants' Params: an int (a bool is not one), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    head_dim: int
    seq_len: int

    @property
    def model_dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class NoParams:
    pass
