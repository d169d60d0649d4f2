"""Attention inputs with planted dependencies: each query is built to match one key, near or far.

Random Gaussian q, k give a diffuse full-attention matrix in which no pattern loses much, so
they say little about how well a sparse design approximates full attention. Here every query
i is made to match one "partner" key p(i): with probability ``1 − long_range_share`` a local
one (distance geometric with mean ``local_mean``), else a long-range one (distance uniform in
[``long_min_frac``·n, n − 1]). How much of full attention's mass a variant's pattern keeps, and
how far its output moves, then depend on how that mix meets the pattern (issue 26).

Construction, per batch row and head (keys and values N(0, 1), all from one CPU generator):

- distance t: local ~ Geometric(1/local_mean) on {1, 2, ...}; long ~ uniform on the integers of
  [⌈f·n⌉, n − 1] that query i can reach, i.e. up to max(i, n − 1 − i) (a middle query cannot go
  n − 1 away; where it cannot even reach ⌈f·n⌉, the farther end). Any distance is capped at that
  reach, so a partner is never clamped onto an end: the ends do not become hub keys;
- direction: earlier or later with probability ½; a partner outside [0, n − 1] is reflected
  to the other side of i, which fits. So |p(i) − i| = t and p(i) ≠ i whenever n > 1;
- q_i = strength·√d·k_p / ‖k_p‖² + noise·z_i, z_i ~ N(0, I). After attention's 1/√d the
  partner's score is strength + noise·N(0, 1) and every other key's score has mean 0 (k_j is
  independent of q_i), with standard deviation √(strength²/d + noise²): the partner stands
  ``strength`` above the typical other score.

At length n full attention gives the partner about e^strength / (e^strength + n·e^{σ²/2}) of
its mass (σ² the other scores' variance), so a larger n needs a larger strength for the
partner to dominate: strength 6 at n = 2048 leaves the partner about a tenth, the default 12
(d = 64: σ² ≈ 3.3) about 94%, so full attention is mostly the planted dependency and a pattern
that misses it shows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class StructureParams:
    long_range_share: float = 0.25  # share of queries whose matching key is far away
    local_mean: float = 8.0  # local match distances: geometric with this mean (>= 1)
    long_min_frac: float = 0.25  # long-range distances uniform in [long_min_frac*n, n-1] (as far as query i reaches)
    strength: float = 12.0  # how far the matching key's score stands above the others (score units, after 1/√d)
    noise: float = 1.0  # std of the query's random part (score units)
    seed: int = 0

    def __post_init__(self) -> None:
        # `not (a <= x <= b)` rejects NaN as well as values out of range.
        if not 0.0 <= self.long_range_share <= 1.0:
            raise ValueError(f"long_range_share must be between 0 and 1, got {self.long_range_share}")
        if not self.local_mean >= 1.0 or math.isinf(self.local_mean):
            raise ValueError(f"local_mean must be a finite number >= 1, got {self.local_mean}")
        if not 0.0 < self.long_min_frac < 1.0:
            raise ValueError(f"long_min_frac must be strictly between 0 and 1, got {self.long_min_frac}")
        if not self.strength >= 0.0 or math.isinf(self.strength):
            raise ValueError(f"strength must be a finite number >= 0, got {self.strength}")
        if not self.noise >= 0.0 or math.isinf(self.noise):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StructuredInputs:
    """q, k, v: (B, h, n, d); partner: (B, h, n) int64, the key each query was built to match;
    long_range: (B, h, n) bool, True where that partner was drawn as a long-range one."""

    q: Tensor
    k: Tensor
    v: Tensor
    partner: Tensor
    long_range: Tensor


def long_distance_range(n: int, params: StructureParams) -> tuple[int, int]:
    """(lowest, highest) long-range distance at length n, both inclusive; (0, 0) when n == 1."""
    if n <= 1:
        return 0, 0
    return min(max(1, math.ceil(params.long_min_frac * n)), n - 1), n - 1


def _partners(batch: int, heads: int, n: int, params: StructureParams, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(partner (B, h, n) int64, long_range (B, h, n) bool), drawn from `gen`."""
    size = (batch, heads, n)
    long_range = torch.rand(size, generator=gen, dtype=torch.float64) < params.long_range_share
    # Geometric on {1, 2, ...} with mean local_mean by inversion (torch's geometric_ refuses p = 1).
    u = 1.0 - torch.rand(size, generator=gen, dtype=torch.float64)  # (0, 1]
    p = 1.0 / params.local_mean
    local = 1.0 + (torch.floor(u.log() / math.log1p(-p)) if p < 1.0 else torch.zeros(size, dtype=torch.float64))
    u_far = torch.rand(size, generator=gen, dtype=torch.float64)
    later = torch.rand(size, generator=gen, dtype=torch.float64) < 0.5
    if n == 1:
        return torch.zeros(size, dtype=torch.int64), long_range
    i = torch.arange(n).expand(size)
    reach = torch.maximum(i, n - 1 - i)  # the farthest partner of query i, >= 1
    # Long: uniform over the long distances query i can reach, [lo, min(hi, reach)]. Drawing
    # over all of [lo, hi] and clamping would pile the middle queries' partners on the two ends.
    lo, hi = long_distance_range(n, params)
    cap = reach.clamp(max=hi)
    far = (lo + (u_far * (cap - lo + 1)).floor().to(torch.int64)).clamp(max=cap)  # reach < lo: the farther end
    distance = torch.where(long_range, far, local.clamp(max=n - 1).to(torch.int64)).minimum(reach)
    # A side that does not fit is reflected to the other, which does (distance <= reach).
    sign = torch.where(later, 1, -1)
    partner = i + sign * distance
    return torch.where((partner < 0) | (partner > n - 1), i - sign * distance, partner), long_range


def structured_inputs(
    batch: int, heads: int, seq_len: int, head_dim: int, params: StructureParams, dtype: torch.dtype = torch.float64
) -> StructuredInputs:
    """The inputs and what was planted in them; deterministic from params.seed (own generator,
    never the global RNG). See the module docstring for the construction."""
    for name, value in (("batch", batch), ("heads", heads), ("seq_len", seq_len), ("head_dim", head_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    gen = torch.Generator().manual_seed(params.seed)
    B, h, n, d = batch, heads, seq_len, head_dim
    partner, long_range = _partners(B, h, n, params, gen)
    k = torch.randn(B, h, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(B, h, n, d, generator=gen, dtype=torch.float64)
    z = torch.randn(B, h, n, d, generator=gen, dtype=torch.float64)
    kp = torch.gather(k, 2, partner.unsqueeze(-1).expand(B, h, n, d))  # (B, h, n, d): each query's partner key
    # q·k_p/√d = strength exactly for the planted part: scale k_p by strength·√d/‖k_p‖².
    scale = params.strength * math.sqrt(d) / kp.square().sum(-1, keepdim=True).clamp(min=1e-300)
    q = kp * scale + params.noise * z
    return StructuredInputs(q.to(dtype), k.to(dtype), v.to(dtype), partner, long_range)


def structured_qkv(
    batch: int, heads: int, seq_len: int, head_dim: int, params: StructureParams, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v: (B, h, n, d); partner: (B, h, n) int64 index of the key each query was built to match."""
    s = structured_inputs(batch, heads, seq_len, head_dim, params, dtype)
    return s.q, s.k, s.v, s.partner
