"""A test-only workload whose calls take a set time, to check the slow-case timeout rule
(attnbench.core.settings.RunSettings.limit_after_first_call) with a real worker."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape

_calls = 0  # forward calls in this process: each worker is a fresh one


@dataclass(frozen=True)
class SlowCallsParams:
    first: float = 0.0  # seconds the process's first call sleeps
    then: float = 0.0  # seconds every later call sleeps
    hang: bool = False  # the first call never returns


@register_workload
class SlowCalls(AttentionVariant):
    """Correct attention after a sleep: a slow first call (as a compiling or a big case has),
    then calls of another length."""

    name: ClassVar[str] = "test.slow_calls"
    family: ClassVar[str] = "full"
    summary: ClassVar[str] = "test-only: SDPA after a set sleep per call"
    Params: ClassVar[type] = SlowCallsParams

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        global _calls
        _calls += 1
        if _calls == 1:
            while self.params.hang:
                time.sleep(1)
            time.sleep(self.params.first)
        else:
            time.sleep(self.params.then)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    @classmethod
    def flops(cls, params: object, shape: Shape) -> float:
        return 1.0

    @classmethod
    def working_bytes(cls, params: object, shape: Shape, itemsize: int) -> int:
        return 0
