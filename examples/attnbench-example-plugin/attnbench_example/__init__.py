"""An example attnbench plugin: one attention variant and one backend, found through entry points."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from attnbench.backends.cpu import CpuBackend
from attnbench.core.cases import Case
from attnbench.workloads.base import AttentionVariant, Shape


class StridedAttention(AttentionVariant):
    """Each query attends to every 4th key and to itself (a fixed strided pattern)."""

    name: ClassVar[str] = "example.strided"
    family: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "example plugin: every 4th key plus the diagonal, computed densely"
    stride: ClassVar[int] = 4

    def reference_mask(self, n: int) -> Tensor:
        j = torch.arange(n)
        return (j[None, :] % self.stride == 0) | torch.eye(n, dtype=torch.bool)  # (n, n)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (B, h, n, d) each
        n, d = q.shape[-2], q.shape[-1]
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, n, n): an example, not a sparse kernel
        scores = scores.masked_fill(~self.reference_mask(n).to(q.device), float("-inf"))
        return scores.softmax(-1) @ v

    @classmethod
    def flops(cls, params: Any, shape: Shape) -> float:
        return 4.0 * shape.batch * shape.heads * shape.seq_len**2 * shape.head_dim

    @classmethod
    def working_bytes(cls, params: Any, shape: Shape, itemsize: int) -> int:
        return 2 * shape.batch * shape.heads * shape.seq_len**2 * itemsize


class SingleThreadCpu(CpuBackend):
    """The host CPU with one thread, whatever the case asks: a backend of the plugin's own."""

    name: ClassVar[str] = "example-cpu-single"
    summary: ClassVar[str] = "example plugin: torch eager on one CPU thread"
    in_available: ClassVar[bool] = False  # the same CPU as `cpu`: run it when named

    def setup(self, case: Case) -> dict[str, Any]:
        torch.set_num_threads(1)
        return {"threads": torch.get_num_threads(), "pinned_by": "attnbench-example-plugin"}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backend": self.name}
