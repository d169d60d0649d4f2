"""Peak memory: the meter tells materialised scores from fused kernels, and growth rates are right.

Ratios only: absolute figures vary with the allocator and the library, growth rates do not.
"""

from __future__ import annotations

import pytest

from attnbench.core.cases import Case
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor

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
