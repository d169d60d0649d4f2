"""A test-only workload whose cost can be raised by a known fraction, to check that
`bench compare` flags an injected slowdown and stays quiet when nothing changed.

`test.slowdown` is correct attention (torch's SDPA) followed by more of the same attention
as filler: `base_steps` further SDPA calls, each fed the previous one's output, so the cost
is attention's own mix of matrix products, softmax and memory traffic. It is deliberately
not the host's reference kernel (attnbench.engine.reference_kernel: chained 128×128 matrix products),
which an earlier version of this filler was: a workload identical to the reference would
make host-relative timing look perfect by construction. ATTNBENCH_SLOWDOWN=0.10 adds 10%
more calls (0.01: 1%). The extra is read from the environment, not a parameter, so the
case_id and workload_hash stay the same: to the comparison it looks exactly like a code
change that made the same case slower.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape

SLOWDOWN_ENV = "ATTNBENCH_SLOWDOWN"


@dataclass(frozen=True)
class SlowdownParams:
    base_steps: int = 100  # filler attention calls per call; the injected extra is a fraction of these


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

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, N, D)
        # Each call depends on the last, so nothing can be skipped or folded away.
        x = out
        for _ in range(self.steps):
            x = torch.nn.functional.scaled_dot_product_attention(x, k, v)
        # Tie the filler to the output without changing it (x is a convex mix of v: finite).
        return out + 0 * x.reshape(-1)[0]

    @classmethod
    def flops(cls, params: Any, shape: Shape) -> float:
        return 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim

    @classmethod
    def working_bytes(cls, params: Any, shape: Shape, itemsize: int) -> int:
        return shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize

    @classmethod
    def case_metrics(cls, module: torch.nn.Module) -> dict[str, Any]:
        return {"injected_slowdown": getattr(module, "extra", None), "filler_calls": getattr(module, "steps", None)}
