"""A test-only workload whose cost can be raised by a known fraction, to check that
`bench compare` flags an injected slowdown and stays quiet when nothing changed.

`test.slowdown` is correct attention (torch's SDPA) followed by a fixed amount of
compute-bound filler work: `base_steps` products of 128×128 matrices (about 55 µs each
on one core, so the dispatcher's few µs per op do not dominate, as they did with 64×64).
ATTNBENCH_SLOWDOWN=0.10 adds 10% more of the same products per call. The extra is read
from the environment, not a parameter, so the case_id and workload_hash stay the same: to the comparison it looks
exactly like a code change that made the same case slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from harness.registry import register_workload
from workloads.base import AttentionVariant, Shape

SLOWDOWN_ENV = "ATTNBENCH_SLOWDOWN"
FILLER_SIZE = 128


@dataclass(frozen=True)
class SlowdownParams:
    base_steps: int = 100  # filler products per call; the injected extra is a fraction of these


@register_workload
class Slowdown(AttentionVariant):
    name: ClassVar[str] = "test.slowdown"
    family: ClassVar[str] = "full"
    summary: ClassVar[str] = "test-only: SDPA plus filler work, slower by $ATTNBENCH_SLOWDOWN"
    Params: ClassVar[type] = SlowdownParams

    def __init__(self, params: Any, shape: Shape) -> None:
        super().__init__(params, shape)
        extra = float(os.environ.get(SLOWDOWN_ENV, "0") or 0)
        self.extra = extra
        self.steps = round(params.base_steps * (1 + extra))
        gen = torch.Generator().manual_seed(0)
        # Orthogonal, so repeated products neither blow up nor vanish.
        w = torch.linalg.qr(torch.randn(FILLER_SIZE, FILLER_SIZE, generator=gen))[0]
        self.register_buffer("w", w, persistent=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        # Depends on the input, so no graph compiler (ONNX Runtime) can fold the filler away.
        x = self.w.to(q.dtype) + 0 * q.reshape(-1)[0]
        for _ in range(self.steps):
            x = x @ self.w.to(q.dtype)
        # Tie the filler to the output without changing it (x is finite, times zero).
        return out + 0 * x[0, 0]

    @classmethod
    def flops(cls, params: Any, shape: Shape) -> float:
        return 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim

    @classmethod
    def working_bytes(cls, params: Any, shape: Shape, itemsize: int) -> int:
        return shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize

    @classmethod
    def case_metrics(cls, module: torch.nn.Module) -> dict[str, Any]:
        return {"injected_slowdown": getattr(module, "extra", None), "filler_steps": getattr(module, "steps", None)}
