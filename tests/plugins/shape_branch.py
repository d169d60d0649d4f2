"""A workload with a length-dependent branch, like a blocked kernel's padding step.

Block-local attention: queries attend to keys of their own 64-token block. A length that
is not a multiple of 64 is padded first; traced at a multiple, the padding branch is
never taken, so an exporter can bake in a graph that only works at multiples. The ONNX
Runtime backend must notice at a length that is not a multiple before it times anything.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape

BLOCK = 64


@register_workload
class PaddedBlocks(AttentionVariant):
    name: ClassVar[str] = "test.padded_blocks"
    family: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "test-only: block-local attention over 64-token blocks, padding the last block"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (B, h, n, d) each
        B, h, n, d = q.shape
        pad = (-n) % BLOCK
        if pad:  # never taken when traced at a multiple of BLOCK
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        m = n + pad
        qb, kb, vb = (t.reshape(B, h, m // BLOCK, BLOCK, d) for t in (q, k, v))  # (B, h, m/64, 64, d)
        scores = qb @ kb.transpose(-1, -2) / math.sqrt(d)  # (B, h, m/64, 64, 64)
        if pad:
            real = (torch.arange(m, device=q.device) < n).reshape(m // BLOCK, 1, BLOCK)  # keys that exist
            scores = scores.masked_fill(~real, float("-inf"))
        out = (scores.softmax(-1) @ vb).reshape(B, h, m, d)
        return out[:, :, :n]

    def reference_mask(self, n: int) -> Tensor:
        block = torch.arange(n) // BLOCK
        return block[:, None] == block[None, :]

    @classmethod
    def flops(cls, params: object, shape: Shape) -> float:
        return 4.0 * shape.batch * shape.heads * shape.seq_len * BLOCK * shape.head_dim

    @classmethod
    def working_bytes(cls, params: object, shape: Shape, itemsize: int) -> int:
        return shape.batch * shape.heads * shape.seq_len * (BLOCK + 4 * shape.head_dim) * itemsize
