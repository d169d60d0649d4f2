"""A workload whose graph changes on every call, so a lazy backend recompiles while being timed."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape


@register_workload
class Recompiles(AttentionVariant):
    name: ClassVar[str] = "test.recompiles"
    family: ClassVar[str] = "full"
    summary: ClassVar[str] = "test-only: dense attention plus a zero whose shape changes every call"

    def __init__(self, params: object, shape: Shape) -> None:
        super().__init__(params, shape)
        self.calls = 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (B, h, n, d) each
        self.calls += 1
        zero = torch.zeros(self.calls % 5 + 1, device=q.device, dtype=q.dtype).sum()  # a new shape: a new graph
        return F.scaled_dot_product_attention(q, k, v) + zero

    @classmethod
    def flops(cls, params: object, shape: Shape) -> float:
        return 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim

    @classmethod
    def working_bytes(cls, params: object, shape: Shape, itemsize: int) -> int:
        return 4 * shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize
