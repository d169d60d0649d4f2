"""The attention pattern a case record stores (attnbench.engine.patterns), and its stored format
(attnbench.core.pattern_grid): exact densities, the pooled grid, and nothing where there is
nothing to draw."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.pattern_grid import GRID_LEVELS, PATTERN_CELLS, PATTERN_MAX_LEN, PatternGrid
from attnbench.core.registry import get_workload
from attnbench.engine.patterns import pattern_of, pool_mask
from attnbench.workloads.base import Shape
from attnbench.workloads.sparse.sliding_window import SlidingWindowAttention

WINDOW = {"window": 64, "global_tokens": 0, "dilation": 1, "causal": False}


def _case(variant: str, n: int, params: dict[str, Any] | None = None) -> Case:
    cls = get_workload(variant)
    shape = Shape(1, 2, 32, n)
    resolved = cls.resolve_params(dict(params or {}), shape)
    return Case(variant, tuple(sorted(resolved.items())), "core", "cpu", "float32", "forward", 1, 2, 32, n)


def _stored(case: Case) -> PatternGrid:
    """Through JSON, as a record carries it."""
    d = pattern_of(case)
    assert d is not None
    return PatternGrid.from_json(json.loads(json.dumps(d)))


def _level(share: float) -> float:
    """A share as stored: rounded to the nearest of the grid's levels."""
    return round(share * GRID_LEVELS) / GRID_LEVELS


def _band_pairs(n: int, half: int) -> int:
    """Pairs (i, j) with |i − j| ≤ half: n·(2·half + 1) minus the half·(half + 1) cut off at the two ends."""
    return n * (2 * half + 1) - half * (half + 1)


@pytest.mark.parametrize("n", [100, 1024, 1027, PATTERN_MAX_LEN])
def test_sliding_window_density_is_the_analytic_share_of_allowed_pairs(n: int) -> None:
    grid = _stored(_case("sparse.sliding_window", n, WINDOW))
    assert grid.n == n and not grid.input_dependent
    assert grid.density == _band_pairs(n, 32) / n**2


@pytest.mark.parametrize(
    ("n", "cell", "cells"),
    [
        (100, 1, 100),  # short: one position per cell, no pooling
        (256, 1, 256),
        (1024, 4, 256),  # a multiple of the cell
        (1027, 5, 206),  # not one: the last row and column of cells are padded with unattended pairs
        (PATTERN_MAX_LEN, 16, PATTERN_CELLS),
    ],
)
def test_grid_shape_and_cell_size(n: int, cell: int, cells: int) -> None:
    grid = _stored(_case("sparse.sliding_window", n, WINDOW))
    assert (grid.cell, grid.cells, grid.extent) == (cell, cells, cell * cells)
    assert grid.extent >= n > grid.extent - cell
    shares = grid.shares()
    assert len(shares) == cells and all(len(row) == cells for row in shares)
    assert cells <= PATTERN_CELLS


@pytest.mark.parametrize("n", [1000, 1024, 1027])
def test_the_grid_is_the_masks_average_pooling_over_zero_padded_cells(n: int) -> None:
    """The same picture the report drew when it rebuilt masks itself: avg_pool2d of the padded mask."""
    case = _case("sparse.bigbird", n, {"block": 16})
    cls = get_workload(case.variant)
    mask = cls(cls.make_params(case.params_dict), Shape(1, 2, 32, n)).reference_mask(n)
    grid = _stored(case)
    pad = (-n) % grid.cell
    padded = torch.nn.functional.pad(mask.to(torch.float32), (0, pad, 0, pad))[None, None]
    pooled = torch.nn.functional.avg_pool2d(padded, grid.cell)[0, 0]
    assert torch.allclose(torch.tensor(grid.shares()), pooled, atol=0.5 / GRID_LEVELS + 1e-6)
    assert grid.density == int(mask.sum()) / n**2


def test_bigbird_with_per_head_draws_records_head_0s_pattern() -> None:
    """Per-head random blocks make one mask per head; the record keeps head 0's, which is the
    shared layout (per-head draws start with it)."""
    per_head = _stored(_case("sparse.bigbird", 1024, {"block": 16, "random_per_head": True}))
    shared = _stored(_case("sparse.bigbird", 1024, {"block": 16}))
    assert per_head.to_json() == shared.to_json() and not per_head.input_dependent


def test_the_edge_cells_count_their_padding_as_unattended() -> None:
    mask = torch.ones(10, 10, dtype=torch.bool)
    grid = pool_mask(mask)  # 10 positions, one per cell: nothing to pad
    assert grid.density == 1.0 and set(grid.levels) == {GRID_LEVELS}
    n = 257  # cell 2: 129 cells, the last row and column half outside the mask
    grid = pool_mask(torch.ones(n, n, dtype=torch.bool))
    shares = grid.shares()
    assert (grid.cell, grid.cells) == (2, 129)
    assert shares[0][0] == 1.0 and shares[0][-1] == _level(0.5) and shares[-1][-1] == _level(0.25)


def test_the_runs_parameters_are_used_not_the_defaults() -> None:
    narrow = _stored(_case("sparse.sliding_window", 1024, WINDOW))
    default = _stored(_case("sparse.sliding_window", 1024))
    assert narrow.density < default.density


def test_variants_that_attend_every_pair_store_nothing() -> None:
    assert pattern_of(_case("full.sdpa", 1024)) is None  # its mask method returns None when not causal
    han = Case("hierarchical.han", (), "layer", "cpu", "float32", "forward", 1, 2, 32, 1024)
    assert pattern_of(han) is None  # no mask method at all: nothing is built


def test_a_causal_dense_variant_has_a_pattern_too() -> None:
    grid = _stored(_case("full.sdpa", 512, {"causal": True}))
    assert grid.density == (512 * 513 // 2) / 512**2


def test_lengths_above_the_maximum_store_nothing() -> None:
    assert pattern_of(_case("sparse.sliding_window", PATTERN_MAX_LEN + 1, WINDOW)) is None


def test_an_input_dependent_pattern_says_so() -> None:
    grid = _stored(_case("sparse.lsh", 256))
    assert grid.input_dependent and 0 < grid.density < 1


def test_a_mask_that_cannot_be_built_is_recorded_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: SlidingWindowAttention, n: int) -> torch.Tensor:
        raise RuntimeError("no mask today")

    monkeypatch.setattr(SlidingWindowAttention, "reference_mask", broken)
    stored = pattern_of(_case("sparse.sliding_window", 512, WINDOW))
    assert stored == {"n": 512, "error": "RuntimeError: no mask today"}
    with pytest.raises(ValueError, match="no mask today"):
        PatternGrid.from_json(stored)


def test_the_stored_form_is_small_and_checked_when_read() -> None:
    d = pattern_of(_case("sparse.sliding_window", PATTERN_MAX_LEN, WINDOW))
    assert d is not None and len(json.dumps(d)) < 4096  # a band compresses to well under a KB or two
    assert set(d) == {"n", "cell", "cells", "density", "input_dependent", "encoding", "grid"}
    assert PatternGrid.from_json(d).to_json() == d
    for broken in ({**d, "encoding": "png"}, {**d, "grid": "not base64!"}, {**d, "cell": 8}, {"n": 4}):
        with pytest.raises(ValueError):
            PatternGrid.from_json(broken)


def test_pooling_the_largest_mask_is_cheap() -> None:
    """It runs in the worker after every timed case up to PATTERN_MAX_LEN; generous for a busy 2-core VM."""
    import time

    mask = torch.rand(PATTERN_MAX_LEN, PATTERN_MAX_LEN, generator=torch.Generator().manual_seed(0)) < 0.1
    pool_mask(mask)  # warm
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        pool_mask(mask)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.25, best


def test_only_square_bool_masks_are_pooled() -> None:
    for bad in (torch.ones(4, 4), torch.ones(4, 5, dtype=torch.bool), torch.ones(2, 4, 4, dtype=torch.bool)):
        with pytest.raises(ValueError, match="bool mask"):
            pool_mask(bad)


def test_the_memory_worker_stores_the_pattern_once_per_case() -> None:
    """Through the executor: the case's record gets the pattern from its memory worker, while a
    later timing pass (passes > 1) computes none (it would only be thrown away)."""
    from attnbench.core.settings import RunSettings
    from attnbench.engine.executors.local import LocalExecutor

    case = _case("sparse.sliding_window", 256, WINDOW)
    executor = LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))
    try:
        first, later = executor.run(case), executor.run_pass(case)
    finally:
        executor.abandon()
    assert first.status == "ok" and later.status == "ok", (first.reason, later.reason)
    assert first.result.pattern == pattern_of(case)
    assert later.result.pattern is None
