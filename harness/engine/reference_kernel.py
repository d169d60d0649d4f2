"""The host's reference kernel, timed in the worker around a case's sampling; what the
readings mean and how they are used: attnbench.core.machine_check."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from attnbench.core.machine_check import PAIR_STEPS, REPS, SIZE, STEPS


def _chain(w: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    x = w
    for _ in range(steps):
        x = x @ w
    return x


def _matrix() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    # Orthogonal, so the chain neither overflows nor underflows whatever the number of steps.
    return torch.linalg.qr(torch.randn(SIZE, SIZE, generator=gen))[0]


def reference_seconds(reps: int = REPS) -> float:
    """Median seconds of one run of the reference kernel, on the worker's threads."""
    w = _matrix()
    _chain(w)  # first call: allocation and dispatch caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _chain(w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pair_reader() -> Callable[[], float]:
    """A function that times one short run of the reference kernel (PAIR_STEPS products),
    for timing.sample to call between samples."""
    w = _matrix()
    _chain(w, PAIR_STEPS)  # first call: allocation and dispatch caches

    def read() -> float:
        t0 = time.perf_counter()
        _chain(w, PAIR_STEPS)
        return time.perf_counter() - t0

    return read
