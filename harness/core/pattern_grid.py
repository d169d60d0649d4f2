"""The attention-pattern picture a case record stores in its `pattern` field, torch-free.

attnbench.engine.patterns pools a variant's reference mask into at most PATTERN_CELLS ×
PATTERN_CELLS cells and writes it through `PatternGrid.to_json`; the report reads it back with
`PatternGrid.from_json` and draws it without rebuilding anything.

The grid is stored as 8-bit levels (level k = share k/255 of the cell's pairs attended), zlib-
compressed and base64-encoded. As JSON numbers a 256 × 256 grid would take 130-400 KB per case;
8 bits are all matplotlib's 256-colour maps can show, and sparse masks are mostly empty cells,
which zlib shrinks to a few KB. The exact share of attended pairs is kept apart, in `density`.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PATTERN_MAX_LEN = 4096  # patterns are stored up to this length: the mask is n × n booleans
PATTERN_CELLS = 256  # pooled to at most this many cells a side (each holds the attended share)
GRID_ENCODING = "u8-zlib-base64"  # what `grid` holds, named in the record so a reader can check
GRID_LEVELS = 255  # level k stands for the share k / GRID_LEVELS


@dataclass(frozen=True)
class PatternGrid:
    """A variant's attention mask at length n, pooled into square cells of `cell` positions."""

    n: int
    cell: int
    density: float  # exact share of the n² (query, key) pairs attended
    input_dependent: bool  # True: the mask depends on the inputs; this is an example input's
    levels: bytes  # cells × cells, row-major (query cells down, key cells across)

    @property
    def cells(self) -> int:
        return -(-self.n // self.cell)

    @property
    def extent(self) -> int:
        """Positions the grid covers a side: n, rounded up to whole cells (the last ones padded empty)."""
        return self.cells * self.cell

    def shares(self) -> list[list[float]]:
        """The attended share of each cell, rows of queries."""
        c = self.cells
        return [[level / GRID_LEVELS for level in self.levels[r * c : (r + 1) * c]] for r in range(c)]

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "cell": self.cell,
            "cells": self.cells,
            "density": self.density,
            "input_dependent": self.input_dependent,
            "encoding": GRID_ENCODING,
            "grid": base64.b64encode(zlib.compress(self.levels, 9)).decode("ascii"),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PatternGrid:
        """The stored picture; ValueError saying why when there is none to draw (a failure the
        worker recorded as {"n", "error"}, or a value this reader does not understand)."""
        if "error" in d:
            raise ValueError(str(d["error"]))
        if d.get("encoding") != GRID_ENCODING:
            raise ValueError(f"unknown pattern encoding {d.get('encoding')!r}")
        try:
            levels = zlib.decompress(base64.b64decode(d["grid"], validate=True))
            grid = cls(int(d["n"]), int(d["cell"]), float(d["density"]), bool(d["input_dependent"]), levels)
        except (KeyError, TypeError, binascii.Error, zlib.error) as exc:
            raise ValueError(f"malformed pattern ({type(exc).__name__}: {exc})") from None
        if grid.n < 1 or grid.cell < 1 or len(levels) != grid.cells**2:
            raise ValueError(f"malformed pattern ({len(levels)} cells for n={grid.n}, cell={grid.cell})")
        return grid
