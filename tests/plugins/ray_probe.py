"""Test-only plugins for the Ray executor tests (ATTNBENCH_PLUGINS=tests.plugins.ray_probe).

- `test_gpu`: a backend that asks Ray for a GPU, so on a CPU-only cluster no node offers it.
- `test_pinned`: the CPU backend, but only on nodes that offer the custom resource `pinned`.
- `test.marked_sleep`: correct attention that first leaves a file named after its process id
  in $ATTNBENCH_TEST_MARKERS (holding its backend and length), then sleeps per call, so a
  test can find (and kill) the node running it mid-case.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from attnbench.backends.base import Availability
from attnbench.backends.cpu import CpuBackend
from attnbench.core.cases import Case
from attnbench.core.registry import register_backend, register_workload
from attnbench.workloads.base import Shape
from tests.plugins.faulty import _Faulty

MARKERS_ENV = "ATTNBENCH_TEST_MARKERS"
MARKER_BACKEND_ENV = "ATTNBENCH_TEST_MARKER_BACKEND"


@register_backend
class GpuOnlyBackend(CpuBackend):
    name: ClassVar[str] = "test_gpu"
    summary: ClassVar[str] = "test-only: asks Ray for a GPU"
    ray_resources: ClassVar[dict[str, float]] = {"CPU": 1, "GPU": 1}

    @classmethod
    def availability(cls) -> Availability:
        return Availability(False, "test-only backend that needs a GPU")


@register_backend
class PinnedBackend(CpuBackend):
    name: ClassVar[str] = "test_pinned"
    summary: ClassVar[str] = "test-only: the cpu backend on nodes with the `pinned` resource"
    ray_resources: ClassVar[dict[str, float]] = {"CPU": 1, "attnbench_cpu": 1, "pinned": 1}
    in_available: ClassVar[bool] = False  # only when named

    def setup(self, case: Case) -> dict[str, Any]:
        # The marker names the backend, so a test waiting for this backend's case on the pinned
        # node is not fooled by a cpu-backend case that Ray also placed there.
        os.environ[MARKER_BACKEND_ENV] = self.name
        return super().setup(case)


@dataclass(frozen=True)
class MarkedSleepParams:
    sleep: float = 0.5


@register_workload
class MarkedSleep(_Faulty):
    name: ClassVar[str] = "test.marked_sleep"
    Params: ClassVar[type] = MarkedSleepParams

    @classmethod
    def working_bytes(cls, params: object, shape: Shape, itemsize: int) -> int:
        return 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        folder = os.environ.get(MARKERS_ENV)
        if folder:
            marker = Path(folder) / str(os.getpid())
            if not marker.exists():
                marker.write_text(f"{os.environ.get(MARKER_BACKEND_ENV, 'cpu')} {q.shape[-2]}")
        time.sleep(self.params.sleep)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
