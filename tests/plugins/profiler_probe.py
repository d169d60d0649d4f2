"""A workload that counts the calls made while a torch profiler was recording.

`bench run --profile` must never profile a timed call: the time worker's record shows how
many of its calls ran under a profiler (zero), and the profile worker's trace shows its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape, step_range


@register_workload
class ProfilerProbe(AttentionVariant):
    name: ClassVar[str] = "test.profiler_probe"
    family: ClassVar[str] = "full"
    summary: ClassVar[str] = "test-only: dense attention that counts calls made under a profiler"

    def __init__(self, params: object, shape: Shape) -> None:
        super().__init__(params, shape)
        self.calls = 0
        self.profiled_calls = 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (B, h, n, d) each
        self.calls += 1
        self.profiled_calls += int(torch.autograd._profiler_enabled())
        with step_range("probe.attention"):
            return F.scaled_dot_product_attention(q, k, v)

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        return {"calls": module.calls, "profiled_calls": module.profiled_calls}

    @classmethod
    def flops(cls, params: object, shape: Shape) -> float:
        return 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim

    @classmethod
    def working_bytes(cls, params: object, shape: Shape, itemsize: int) -> int:
        return 4 * shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize
