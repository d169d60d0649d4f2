"""The dense float64 reference every variant is checked against."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dense_reference(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None) -> Tensor:
    """softmax(QK^T/sqrt(d) masked) V in float64; rows with no allowed key give zeros.

    q, k, v: (B, h, n, d); allowed: (n, n) or broadcastable to (B, h, n, n), True = may attend.
    """
    return dense_probabilities(q, k, allowed) @ v.to(torch.float64)


def dense_probabilities(q: Tensor, k: Tensor, allowed: Tensor | None = None) -> Tensor:
    """softmax(QK^T/sqrt(d) masked) in float64, (B, h, n, n); fully masked rows are zeros."""
    q, k = (t.to(torch.float64) for t in (q, k))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, n, n)
    if allowed is not None:
        allowed = allowed.to(scores.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(probs, nan=0.0)  # fully masked rows


def causal_mask(n: int) -> Tensor:
    """(n, n) bool: query i attends keys j <= i."""
    return torch.ones(n, n, dtype=torch.bool).tril()
