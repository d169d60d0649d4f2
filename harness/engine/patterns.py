"""A case's attention pattern, pooled into a small picture the record stores (its `pattern`).

The memory worker calls `pattern_of` after its reading (once per case: the timed worker runs
again for every pass), so the report can draw which keys each query
attends without importing torch or rebuilding a variant. The picture is the variant's own
definition (its `reference_mask`), never a measurement; attnbench.core.pattern_grid holds the
stored format.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attnbench.core.cases import Case
from attnbench.core.pattern_grid import GRID_LEVELS, PATTERN_CELLS, PATTERN_MAX_LEN, PatternGrid
from attnbench.core.registry import get_workload
from attnbench.workloads.base import AttentionVariant, Shape

__all__ = ["pattern_of", "pool_mask"]


def pattern_of(case: Case) -> dict[str, Any] | None:
    """The stored picture of the case's mask; None where there is nothing to draw: the
    variant attends every pair (no reference mask) or the length is above PATTERN_MAX_LEN.

    A mask that cannot be built or pooled gives {"n", "error"} instead of raising: the case
    was measured, and its record must not be lost to a picture.
    """
    n = case.seq_len
    if n > PATTERN_MAX_LEN:
        return None
    try:
        cls = get_workload(case.variant)
        if cls.reference_mask is AttentionVariant.reference_mask:
            return None  # the base class's: every query sees every key, and no module need be built
        module = cls(cls.make_params(case.params_dict), Shape(case.batch, case.heads, case.head_dim, n))
        with torch.no_grad():
            mask = module.reference_mask(n)
        if mask is None:
            return None
        # Input-dependent variants (LSH) define `pattern(q)`; their reference mask is a seeded example input's.
        return pool_mask(mask, input_dependent=hasattr(cls, "pattern")).to_json()
    except Exception as exc:
        return {"n": n, "error": f"{type(exc).__name__}: {exc}"}


def pool_mask(mask: torch.Tensor, input_dependent: bool = False) -> PatternGrid:
    """An (n, n) bool mask averaged over square cells of ceil(n / PATTERN_CELLS) positions.

    The same picture as average-pooling the mask, zero-padded to whole cells: each cell's share
    is its attended pairs over cell², so edge cells count their padding as unattended. Summed in
    small integers, not floats: at n = 4096 about three times cheaper, and exact.
    """
    n = mask.shape[-1]
    if mask.dim() != 2 or mask.shape[0] != n or mask.dtype != torch.bool:
        raise ValueError(f"a pattern needs an (n, n) bool mask, got {tuple(mask.shape)} {mask.dtype}")
    cell = max(1, math.ceil(n / PATTERN_CELLS))
    cells = math.ceil(n / cell)
    m = mask.detach().to("cpu").contiguous().view(torch.uint8)
    pad = cells * cell - n
    if pad:
        m = torch.nn.functional.pad(m, (0, pad, 0, pad))
    # a cell's rows first (at most `cell` pairs per column), then its columns (at most cell²)
    rows = m.view(cells, cell, cells * cell).sum(1, dtype=torch.int16)
    counts = rows.view(cells, cells, cell).sum(-1, dtype=torch.int32)
    area = cell * cell
    levels = (counts * GRID_LEVELS + area // 2) // area  # the share, rounded to the nearest level
    density = int(counts.sum()) / (n * n)
    return PatternGrid(n, cell, density, input_dependent, bytes(levels.to(torch.uint8).flatten().tolist()))
