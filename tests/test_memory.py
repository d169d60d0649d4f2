"""Peak memory: the meter tells materialised scores from fused kernels, and growth rates are right.

Ratios only: absolute figures vary with the allocator and the library, growth rates do not.
"""

from __future__ import annotations

import math

import pytest

from attnbench.core.cases import Case
from attnbench.core.registry import get_workload
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.workloads.base import Shape

MiB = 2**20


@pytest.fixture(scope="module")
def executor() -> LocalExecutor:
    return LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))


def peak(executor: LocalExecutor, variant: str, n: int, **params) -> int:
    defaults = {"full.chunked": {"chunk": 1024, "causal": False}}.get(variant, {"causal": False})
    case = Case(variant, tuple(sorted({**defaults, **params}.items())), "core", "cpu", "float32", "forward",
                1, 8, 64, n)  # fmt: skip
    out = executor.run(case)
    assert out.status == "ok", out.reason
    return out.result.peak_memory_bytes


def test_naive_peaks_at_two_score_buffers_and_sdpa_does_not(executor: LocalExecutor) -> None:
    scores = 8 * 2048**2 * 4  # one (h, n, n) float32 buffer: 128 MiB
    naive = peak(executor, "full.naive", 2048)
    sdpa = peak(executor, "full.sdpa", 2048)
    assert 1.5 * scores < naive < 3 * scores
    assert sdpa < scores / 8
    assert naive > 20 * sdpa


@pytest.mark.slow  # four memory workers up to n=4096: about 14 s; CI runs it (-m slow)
def test_growth_rates(executor: LocalExecutor) -> None:
    naive = peak(executor, "full.naive", 2048) / peak(executor, "full.naive", 1024)
    chunked = peak(executor, "full.chunked", 4096, chunk=256) / peak(executor, "full.chunked", 2048, chunk=256)
    assert 3.6 < naive < 4.4  # quadratic
    assert 1.8 < chunked < 2.2  # linear at a fixed chunk


@pytest.mark.slow  # six workers up to n=32768: about 35 s; CI runs it (-m slow)
@pytest.mark.parametrize("variant", ["sparse.sliding_window", "sparse.lsh", "sparse.bigbird"])
def test_native_sparse_kernels_hold_less_than_their_inputs_at_32k(executor: LocalExecutor, variant: str) -> None:
    # Forward, float32, B=1, h=8, d=64, default parameters: blocks in bounded groups, so the peak
    # above the inputs stays below Q, K and V together, and grows no faster than n.
    cls = get_workload(variant)
    peaks = {}
    for n in (4096, 32768):
        params = cls.resolve_params({**cls.default_params(), "causal": False}, Shape(1, 8, 64, n))
        peaks[n] = peak(executor, variant, n, **params)
    assert peaks[32768] <= 3 * 8 * 32768 * 64 * 4, peaks  # Q, K and V: 192 MiB
    assert math.log(peaks[32768] / peaks[4096]) / math.log(8) <= 1.05, peaks
