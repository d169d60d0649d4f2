"""Workloads that misbehave on purpose, to check the worker and the sweep survive them."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape


class _Faulty(AttentionVariant):
    family: ClassVar[str] = "full"
    summary: ClassVar[str] = "test-only"

    @classmethod
    def flops(cls, params: object, shape: Shape) -> float:
        return 1.0

    @classmethod
    def working_bytes(cls, params: object, shape: Shape, itemsize: int) -> int:
        return 0


@register_workload
class Raises(_Faulty):
    name: ClassVar[str] = "test.raises"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise ValueError("deliberate failure in forward")


@register_workload
class Hangs(_Faulty):
    name: ClassVar[str] = "test.hangs"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        while True:
            time.sleep(1)


@register_workload
class EatsMemory(_Faulty):
    """Grows without bound, slowly enough that the parent's memory guard sees it."""

    name: ClassVar[str] = "test.eats_memory"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        hoard = []
        while True:
            hoard.append(torch.ones(32 * 2**20 // 4))  # 32 MiB, touched
            time.sleep(0.005)


@register_workload
class TorchOom(_Faulty):
    name: ClassVar[str] = "test.torch_oom"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.empty(2**50, dtype=torch.float32)  # 4 PiB: the allocator refuses


@register_workload
class SelfKill(_Faulty):
    name: ClassVar[str] = "test.self_kill"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


@register_workload
class Segfault(_Faulty):
    name: ClassVar[str] = "test.segfault"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        ctypes.string_at(0)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class SleepyParams:
    sleep: float = 0.05


@register_workload
class Sleepy(_Faulty):
    """Correct attention that also sleeps per call: slow cases for interrupt/resume tests."""

    name: ClassVar[str] = "test.sleepy"
    Params: ClassVar[type] = SleepyParams

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        time.sleep(self.params.sleep)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


_swallowed = False


@register_workload
class SwallowsInterrupt(Sleepy):
    """Correct, but the first time the driver asks its cost, a Ctrl-C arrives and is swallowed,
    as a C extension can swallow one (torch's numpy check did): the run must stop anyway."""

    name: ClassVar[str] = "test.swallows_interrupt"

    @classmethod
    def flops(cls, params: object, shape: Shape) -> float:
        global _swallowed
        if not _swallowed and multiprocessing.parent_process() is None:  # the driver, not a worker
            _swallowed = True
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the handler runs here
            except KeyboardInterrupt:
                pass
        return 1.0


@register_workload
class FailsAfterTwoWorkers(_Faulty):
    """Correct in the first two worker processes to build it (pass 1's timing and memory
    workers), failing in any later one: a case that breaks in a later pass of a run.
    The processes are counted as files in $ATTNBENCH_FLAKY_DIR."""

    name: ClassVar[str] = "test.fails_in_later_pass"

    def __init__(self, params: object, shape: Shape) -> None:
        super().__init__(params, shape)
        folder = os.environ["ATTNBENCH_FLAKY_DIR"]
        open(os.path.join(folder, str(os.getpid())), "a").close()
        self.fail = len(os.listdir(folder)) > 2

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.fail:
            raise ValueError("deliberate failure after the first pass")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
