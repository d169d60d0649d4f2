"""`flex`: torch's FlexAttention (``torch.nn.attention.flex_attention``), compiled, with a
``BlockMask`` built from the variant's own pattern.

What runs. One ``torch.compile(flex_attention)`` per process (static shapes: each length
compiles once), called with a ``BlockMask`` whose ``mask_mod`` is the variant's definition
written as a function of (batch, head, query, key) indices:

- ``full.naive``, ``full.sdpa``, ``full.chunked``: every key, or ``kv ≤ q`` when causal.
- ``sparse.sliding_window``: the band ``|q − kv| ≤ r·W/2`` with ``(q − kv) mod r = 0``, the g
  global rows and columns, ``kv ≤ q`` everywhere when causal (``reference_mask``'s rule). In the
  layer scope with g > 0 the g global rows are then recomputed with Longformer's own global
  projections, by the variant's own ``_global_rows``, as the native layer does.
- ``sparse.bigbird``: the variant's block table (``block_layout``: sliding, global and random
  blocks; one table per head with ``random_per_head``, indexed by the head in ``mask_mod``),
  ``kv ≤ q`` when causal. Below HF's threshold (``attention`` = "full") it is dense, as native.
- ``sparse.lsh``: hashed with the variant's own ``lsh_buckets``, each round's positions sorted
  by (bucket, position); the sorted queries, unit-length keys and values are gathered, all
  rounds at once (rounds folded into the head dimension), and flex runs the static pattern of
  the sorted sequence: a chunk sees itself and the previous chunk (wrapping; a single chunk
  only itself). A ``score_mod`` gives a query's own position SELF_SCORE and, when causal, masks
  keys at later original positions (read from the captured sort order). The rounds' outputs are
  unsorted and combined by the softmax of their log-sum-exps, as the native kernel does (the
  gathers, the unsorting and the merge are compiled too, around the kernel). On
  CUDA flex returns that log-sum-exp. Compiled flex on a CPU returns none (inference only, no
  ``return_lse`` in torch 2.5 to 2.13), so there each round gets one extra "anchor" key
  (index n) whose score the ``score_mod`` sets per query to a_i = −‖q_i‖ − 1, below every real
  score (|q_i·k̂_j| ≤ ‖q_i‖ for unit-length keys), and whose value is a one-hot extra channel:
  its weight p = A/(Z + A) comes back in that channel, so Z/A = (1 − p)/p, the round's output
  is the real part divided by 1 − p and its log-sum-exp is a_i + log((1 − p)/p), with no
  cancellation (p ≤ 1/2 whenever the row has a real key; p = 1 exactly when it has none but
  itself, causal, and then it takes its own value, as native does). Where the row's largest
  score is so far above a_i that p underflows (‖q_i‖ above about 40 in float32), the output is
  still exact and that row's log-sum-exp is computed directly over its window. The anchor costs
  one more key tile per query tile (about 1.4x a round's kernel time, measured at 8K). With one
  round no log-sum-exp is needed and no anchor is added.
- ``hierarchical.transformer_xl``: queries q + u, the segment-with-memory mask
  ``i − M − (i mod L) ≤ j ≤ i``, and the relative-position term (q_i + v)·W_R R_{i−j} as a
  ``score_mod`` reading a (B, h, n, M + L) table computed once per call (the native module's
  own W_R R, ``shared_positions``), scaled with the content term by 1/√d.

Building the BlockMask. ``create_block_mask`` evaluates the mask_mod over every (query, key)
pair, (n, n) at once: seconds at 8K and memory quadratic in n. Here each pattern also names the
(query block, key block) tiles it can touch at all (a cheap superset from its structure: the
band's reach, the block table, the chunk relation), and the mask_mod is evaluated on those
tiles only, giving the same partial and full blocks (tests compare the two). The seconds this
takes at the case's length, in ``build`` and so outside the timed region, are recorded as
``block_mask_s``, with ``block_sparsity``, the fraction of tiles flex skips.

Compilation happens on the first call at each length, which the warm-up keeps out of steady
state; the CPU backend's compile_s counts preparation only, so the first call's seconds at the
case's length are recorded here as ``compile_s`` (under ``workload_metrics``).

Limits (``supports`` says which, before anything runs; the rest raise ``Unsupported``):
CPU and CUDA backends only (inductor compiles it; ONNX Runtime runs an exported graph, torch-xla
compiles through XLA). Compiled flex on a CPU is inference only and float32/float16/bfloat16
only, so train mode and float64 are unsupported there. Transformer-XL's ``per_segment`` and
``train_step = "segment"`` are ways of running segment by segment, which one flex call over
the sequence does not do, and its detached memory in training (SG(·) per pair) has no form in
flex. Adaptive and HAN variants have no single attention pattern for flex to compute.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from attnbench.core.errors import Unsupported
from attnbench.core.registry import register_impl
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.impls.base import Implementation
from attnbench.workloads.shape import Shape

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from attnbench.workloads.base import AttentionVariant

BLOCK = 128  # flex's default sparse block (_DEFAULT_SPARSE_BLOCK_SIZE)
# A pattern made of its own blocks (BigBird's blocks, LSH's chunks) uses them as flex's tiles
# when they are a multiple of this and at most MAX_OWN_BLOCK: its tiles are then whole (no
# mask evaluated in them); at 8K, BigBird's 64-token blocks ran about 3x faster than 128 tiles.
OWN_BLOCK_MULTIPLE = 16
MAX_OWN_BLOCK = 256
# Mask evaluation: at most this many (query, key) elements per batch of tiles.
TILE_ELEMENTS = 1 << 22
CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what inductor's CPU flex template takes
FULL_VARIANTS = ("full.naive", "full.sdpa", "full.chunked")
BUILT = (*FULL_VARIANTS, "sparse.sliding_window", "sparse.bigbird", "sparse.lsh", "hierarchical.transformer_xl")
NOT_EXPRESSIBLE = {
    "adaptive.act": "flex has no form of adaptive.act: per-token halting changes the queries each step",
    "adaptive.universal": (
        "flex has no form of adaptive.universal: it repeats a whole layer (attention, FFN, "
        "transition) per step; time its attention design with flex instead"
    ),
    "hierarchical.han": (
        "flex has no form of hierarchical.han: its attention is pooling against learned context "
        "vectors over encoders, not one (q, k, v) pattern"
    ),
}
BACKEND_REASONS = {
    "onnxruntime": "flex needs torch.compile's inductor; onnxruntime exports the graph",
    "xla": "flex needs torch.compile's inductor; torch-xla compiles the graph through XLA",
}
ANCHOR_MARGIN = 1.0  # the LSH anchor's score: −‖q_i‖ − 1, below every real score q_i·k̂_j ≥ −‖q_i‖
ONLY_SELF = 0.75  # anchor weight above this: the row had no real key (it is ≤ 1/2 otherwise)
# Anchor weights below this many times the smallest normal number have lost precision (or are
# zero): those rows take their log-sum-exp directly.
UNDERFLOW_MARGIN = 2.0**20
ROUND_LSE = {
    "single": "none needed (one round)",
    "lse": "returned by flex",
    "anchor": "anchor key (compiled flex on CPU returns no log-sum-exp)",
}


# --- availability ---------------------------------------------------------------------------------
def _has_flex() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def _cxx() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx and shutil.which(cxx):
        return cxx
    return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except Exception:  # any failure to probe triton means: not usable
        return False


def compiler_missing(device: str) -> str | None:
    """Why inductor cannot compile flex for this device here, or None."""
    if device == "cpu":
        return (
            None
            if _cxx()
            else "torch.compile (inductor) needs a C++ compiler on CPU; none found (g++, c++, clang++, $CXX)"
        )
    return None if _has_triton() else "torch.compile (inductor) needs triton on CUDA; it is not installed"


# --- the compiled callables, one of each per process ------------------------------------------------
@functools.cache
def _compiled_flex() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _lsh_attend(
    q: Tensor,
    v: Tensor,
    pos: Tensor,
    anchor: Tensor | None,
    anchor_q: Tensor | None,
    block_mask: BlockMask,
    n: int,
    rounds: int,
    self_score: float,
    causal: bool,
    mode: str,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """All rounds at once (rounds folded into the heads: hh = round·h + head), in sorted order:
    (outputs (B, R·h, n, d), their log-sum-exps (B, R·h, n) or None, rows whose anchor weight
    underflowed or None). pos (B, R·h, n): the original position of each sorted slot.

    mode "single": one round, no log-sum-exp; "lse": flex returns it; "anchor": key n is the
    anchor, score `anchor` (B, R·h, n) (−‖q_i‖ − 1, at least float32; `anchor_q` the same in the
    inputs' dtype, for the score_mod: both computed by the caller, since inductor's CPU flex
    template takes no captured buffer computed in its own graph), value the one-hot channel d;
    see the module docstring. The score_mod gives a query's own
    position self_score and, when causal, masks later original positions."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    from attnbench.workloads.sparse.lsh import _keys

    B, h, _, d = q.shape
    H = rounds * h
    index = pos[..., None].expand(B, H, n, d)

    def rounds_of(t: Tensor) -> Tensor:  # (B, h, n, d) once per round, (B, R·h, n, d): fused into the gather
        return t.unsqueeze(1).expand(B, rounds, h, n, d).reshape(B, H, n, d)

    qs, ks, vs = (torch.gather(rounds_of(t), 2, index) for t in (q, _keys(q), v))
    if mode == "anchor":
        one = vs.new_zeros(B, H, 1, d + 1)
        one[..., d] = 1
        keys = torch.cat([ks, ks.new_zeros(B, H, 1, d)], dim=2)  # (B, H, n + 1, d)
        values = torch.cat([torch.cat([vs, vs.new_zeros(B, H, n, 1)], dim=3), one], dim=2)  # (B, H, n + 1, d + 1)
    else:
        keys, values = ks, vs

    def score_mod(score: Tensor, b: Tensor, hh: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qi, ki = q_idx.clamp(max=n - 1), kv_idx.clamp(max=n - 1)  # padded slots and the anchor
        if causal:
            score = torch.where(pos[b, hh, ki] > pos[b, hh, qi], -float("inf"), score)
        score = torch.where(q_idx == kv_idx, self_score, score)
        if anchor_q is not None:
            score = torch.where(kv_idx == n, anchor_q[b, hh, qi], score)
        return score

    if mode == "lse":
        o, aux = flex_attention(
            qs, keys, values, score_mod=score_mod, block_mask=block_mask, scale=1.0, return_aux=AuxRequest(lse=True)
        )
        return o, aux.lse, None
    got = flex_attention(qs, keys, values, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    if anchor_q is None or anchor is None:
        return got, None, None
    tiny = torch.finfo(anchor.dtype).tiny
    weight = got[..., d].to(anchor.dtype)  # (B, H, n): the anchor's share, A / (Z + A)
    real = (1.0 - weight).clamp(min=tiny)  # Z / (Z + A)
    alone = weight > ONLY_SELF  # no key but the query itself: exactly 1, else at most 1/2
    o = torch.where(alone[..., None], vs, got[..., :d] / real.to(got.dtype)[..., None])
    lse = torch.where(alone, self_score, anchor + torch.log(real / weight.clamp(min=tiny)))
    # Rows whose largest score is so far above the anchor that its weight underflowed (‖q_i‖
    # above ~40 in float32): their output is exact (the anchor took nothing), their log-sum-exp
    # is taken over their window by the caller.
    lost = (weight < torch.finfo(got.dtype).tiny * UNDERFLOW_MARGIN) & ~alone
    return o, lse, lost


@functools.cache
def _compiled_lsh() -> Callable[..., Any]:
    return torch.compile(_lsh_attend, dynamic=False)


def _lsh_merge(o: Tensor, lse: Tensor | None, inv: Tensor, rounds: int) -> Tensor:
    """Unsort (inv: the sorted slot of each original position) and combine the rounds by the
    softmax of their log-sum-exps: (B, R·h, n, d) -> (B, h, n, d)."""
    B, H, n, d = o.shape
    out = torch.gather(o, 2, inv[..., None].expand(B, H, n, d)).view(B, rounds, H // rounds, n, d)
    if lse is None:
        return out[:, 0]
    lse = torch.gather(lse, 2, inv).view(B, rounds, H // rounds, n)
    weights = torch.softmax(lse.to(_wide(lse.dtype)), dim=1).to(out.dtype)[..., None]  # (B, R, h, n, 1)
    return (weights * out).sum(dim=1)


@functools.cache
def _compiled_merge() -> Callable[..., Tensor]:
    return torch.compile(_lsh_merge, dynamic=False)


def _xl_attend(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, block_mask: BlockMask, scale: float, n: int, kmax: int
) -> Tensor:
    """flex with Transformer-XL's position term: bias (B, h, n, kmax) holds the scaled
    (q_i + v)·W_R R for distances kmax − 1 … 0."""
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        col = (kmax - 1 - (q_idx - kv_idx)).clamp(0, kmax - 1)  # masked pairs read any column
        return score + bias[b, h, q_idx.clamp(max=n - 1), col]

    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


@functools.cache
def _compiled_xl() -> Callable[..., Tensor]:
    return torch.compile(_xl_attend, dynamic=False)


# --- block masks from a pattern ---------------------------------------------------------------------
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Pattern:
    """A mask_mod and the tiles it can touch.

    mask_mod(b, h, q, kv) -> bool, written with broadcasting tensor ops (flex calls it with
    scalars, the builder with (tiles, rows, cols) grids). candidates(QB, KB) -> (heads, QB, KB)
    bool: a superset of the tiles holding any allowed pair. known_full, optional, the same shape:
    tiles known to be wholly allowed (inside the sequence), which are then not evaluated."""

    mask_mod: MaskMod
    heads: int
    candidates: Callable[[int, int], Tensor]
    known_full: Callable[[int, int], Tensor] | None = None
    block: int = BLOCK


def tile_size(own: int) -> int:
    """flex's tile for a pattern made of blocks of `own` tokens: those blocks, where they suit."""
    return own if own % OWN_BLOCK_MULTIPLE == 0 and own <= MAX_OWN_BLOCK else BLOCK


def _tile_bounds(count: int, block: int) -> tuple[Tensor, Tensor]:
    """(count, 1) first and last token of each tile row/column, before clipping to the length."""
    lo = torch.arange(count)[:, None] * block
    return lo, lo + block - 1


def build_block_mask(pattern: Pattern, n_q: int, n_kv: int) -> tuple[BlockMask, dict[str, Any]]:
    """The BlockMask create_block_mask would build for this mask_mod, on the CPU, with its figures.

    Only candidate tiles are evaluated, in batches of TILE_ELEMENTS pairs; a tile is full when
    every pair of it lies in the sequence and is allowed, partial when some are, as in
    create_block_mask (so tiles reaching past the end are never full)."""
    from torch.nn.attention.flex_attention import BlockMask

    bs = pattern.block
    QB, KB = -(-n_q // bs), -(-n_kv // bs)
    cand = pattern.candidates(QB, KB).expand(pattern.heads, QB, KB)
    full = torch.zeros(pattern.heads, QB, KB, dtype=torch.bool)
    partial = torch.zeros_like(full)
    if pattern.known_full is not None:
        inside = torch.ones(QB, KB, dtype=torch.bool)
        if n_q % bs:
            inside[-1] = False
        if n_kv % bs:
            inside[:, -1] = False
        full = pattern.known_full(QB, KB).expand_as(full) & inside & cand
        cand = cand & ~full
    tiles = cand.nonzero()  # (T, 3): head, query block, key block
    r = torch.arange(bs)
    zero = torch.zeros((), dtype=torch.long)
    step = max(1, TILE_ELEMENTS // (bs * bs))
    for start in range(0, tiles.shape[0], step):
        h, qb, kb = tiles[start : start + step].unbind(1)
        q = (qb * bs)[:, None, None] + r[None, :, None]  # (T, bs, 1)
        kv = (kb * bs)[:, None, None] + r[None, None, :]  # (T, 1, bs)
        allowed = pattern.mask_mod(zero, h[:, None, None], q, kv) & (q < n_q) & (kv < n_kv)
        count = allowed.sum((1, 2))
        full[h, qb, kb] = count == bs * bs
        partial[h, qb, kb] = (count > 0) & (count < bs * bs)

    def ordered(dense: Tensor) -> tuple[Tensor, Tensor]:
        num = dense.sum(-1, dtype=torch.int32)[None]  # (1, H, QB)
        idx = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[None]
        return num, idx

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    mask = BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=bs, mask_mod=pattern.mask_mod, seq_lengths=(n_q, n_kv)
    )
    used = int(partial.sum() + full.sum())
    figures = {
        "block_size": bs,
        "block_sparsity": 1.0 - used / (pattern.heads * QB * KB),
        "tiles_partial": int(partial.sum()),
        "tiles_full": int(full.sum()),
        "tiles_evaluated": int(tiles.shape[0]),
    }
    return mask, figures


def _overlap(units: int, unit: int, tiles: int, block: int, n: int) -> Tensor:
    """(units, tiles) float: 1 where unit i (tokens [i·unit, (i+1)·unit) ∩ [0, n)) meets tile t."""
    lo = torch.arange(units) * unit
    hi = torch.clamp(lo + unit, max=n) - 1
    t_lo = torch.arange(tiles) * block
    return ((lo[:, None] <= t_lo[None, :] + block - 1) & (hi[:, None] >= t_lo[None, :])).float()


def _unit_candidates(allowed_units: Tensor, unit: int, block: int, n: int) -> Callable[[int, int], Tensor]:
    """Candidates of a pattern defined on units of `unit` tokens: allowed_units (H, U, U) bool."""

    def candidates(QB: int, KB: int) -> Tensor:
        units = allowed_units.shape[-1]
        oq, ok = _overlap(units, unit, QB, block, n), _overlap(units, unit, KB, block, n)
        return (oq.T @ allowed_units.float() @ ok) > 0

    return candidates


def _causal_tiles(QB: int, KB: int, block: int) -> Tensor:
    _, q_hi = _tile_bounds(QB, block)
    k_lo, _ = _tile_bounds(KB, block)
    return q_hi >= k_lo.T


# --- the patterns ---------------------------------------------------------------------------------
def dense_pattern(causal: bool) -> Pattern:
    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return kv <= q if causal else (q >= 0) & (kv >= 0)

    def candidates(QB: int, KB: int) -> Tensor:
        return _causal_tiles(QB, KB, BLOCK) if causal else torch.ones(QB, KB, dtype=torch.bool)

    def known_full(QB: int, KB: int) -> Tensor:
        if not causal:
            return torch.ones(QB, KB, dtype=torch.bool)
        q_lo, _ = _tile_bounds(QB, BLOCK)
        _, k_hi = _tile_bounds(KB, BLOCK)
        return q_lo >= k_hi.T  # wholly below the diagonal

    return Pattern(mask_mod, 1, candidates, known_full)


def sliding_window_pattern(params: Any) -> Pattern:
    """reference_mask's rule: band ±r·W/2 every r-th key, g global rows and columns, causal."""
    r, g, causal = params.dilation, params.global_tokens, params.causal
    reach = params.window // 2 * r

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        diff = q - kv
        band = diff.abs() <= reach
        if r > 1:
            band = band & (diff.abs() % r == 0)
        if causal:
            band = band & (diff >= 0)
        if not g:
            return band
        allowed = band | (q < g) | (kv < g)
        return allowed & (kv <= q) if causal else allowed

    def candidates(QB: int, KB: int) -> Tensor:
        q_lo, q_hi = _tile_bounds(QB, BLOCK)
        k_lo, k_hi = _tile_bounds(KB, BLOCK)
        k_lo, k_hi = k_lo.T, k_hi.T
        near = (k_lo <= q_hi + (0 if causal else reach)) & (k_hi >= q_lo - reach)
        if g:
            glob = (q_lo < g) | (k_lo < g)
            near = near | (glob & (k_lo <= q_hi) if causal else glob)
        return near

    def known_full(QB: int, KB: int) -> Tensor:
        q_lo, q_hi = _tile_bounds(QB, BLOCK)
        k_lo, k_hi = _tile_bounds(KB, BLOCK)
        k_lo, k_hi = k_lo.T, k_hi.T
        if r > 1:  # a dilated band holds every r-th key: never a whole tile
            inside = torch.zeros(QB, KB, dtype=torch.bool)
        else:
            low = k_hi <= q_lo if causal else (q_hi - k_lo <= reach)
            inside = low & (k_hi - q_lo <= reach) & (q_hi - k_lo <= reach)
            if causal:
                inside = inside & (k_hi <= q_lo)
        if g:
            rows = (q_hi < g) & ((k_hi <= q_lo) if causal else True)
            cols = (k_hi < g) & ((k_hi <= q_lo) if causal else True)
            inside = inside | rows | cols
        return inside

    return Pattern(mask_mod, 1, candidates, known_full)


def bigbird_pattern(params: Any, n: int, heads: int, block: int = BLOCK, device: str = "cpu") -> Pattern:
    """The variant's block table (block_layout, the single source of truth): one per head with
    random_per_head. Dense (causal or not) below the threshold where the variant runs dense."""
    from attnbench.workloads.sparse.bigbird import block_layout, num_blocks

    if params.mode(n) == "full":
        return dense_pattern(params.causal)
    b, nb, causal = params.block, num_blocks(n, params.block), params.causal
    draws = params.draws(heads)
    table, _ = block_layout(nb, params.random_blocks, params.seed, draws)
    blocks = torch.zeros(draws, nb, nb, dtype=torch.bool)
    blocks[:, 0] = blocks[:, -1] = True  # the global query blocks attend everything
    blocks[:, 1:-1].scatter_(2, table, True)
    per_head = draws > 1
    table_on = blocks.to(device)  # what mask_mod reads: where flex runs

    def mask_mod(bi: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        # Clamped: flex also asks about the padding past n in the last tile.
        allowed = table_on[h if per_head else 0, (q // b).clamp(max=nb - 1), (kv // b).clamp(max=nb - 1)]
        return allowed & (kv <= q) if causal else allowed

    unit = _unit_candidates(blocks, b, block, n)

    def candidates(QB: int, KB: int) -> Tensor:
        cand = unit(QB, KB)
        return cand & _causal_tiles(QB, KB, block) if causal else cand

    return Pattern(mask_mod, draws, candidates, block=block)


def lsh_pattern(n: int, chunk: int, anchor: bool, block: int = BLOCK) -> Pattern:
    """The sorted sequence's chunks: a chunk sees itself and the previous one (wrapping; one
    chunk only itself). With `anchor` every query also sees key n, the anchor."""
    K = -(-n // chunk)

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        cq, ck = q // chunk, kv // chunk
        allowed = ck == cq
        if K > 1:
            allowed = allowed | (ck == (cq + K - 1) % K)
        return allowed | (kv == n) if anchor else allowed

    units = torch.eye(K, dtype=torch.bool)
    if K > 1:
        units = units | units.roll(-1, dims=1)  # chunk i sees chunk i − 1 (mod K)
    unit = _unit_candidates(units[None], chunk, block, n)

    def candidates(QB: int, KB: int) -> Tensor:
        cand = unit(QB, min(KB, -(-n // block)))
        if cand.shape[-1] < KB:  # the anchor's own tile
            cand = torch.cat([cand, torch.zeros(1, QB, KB - cand.shape[-1], dtype=torch.bool)], -1)
        if anchor:
            cand[..., n // block] = True
        return cand

    return Pattern(mask_mod, 1, candidates, block=block)


def xl_pattern(params: Any) -> Pattern:
    """Transformer-XL: query i sees keys i − M − (i mod L) … i."""
    L, M = params.segment, params.memory

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return (kv <= q) & (kv >= q - q % L - M)

    def candidates(QB: int, KB: int) -> Tensor:
        _, q_hi = _tile_bounds(QB, BLOCK)
        k_lo, k_hi = _tile_bounds(KB, BLOCK)
        pos = torch.arange(QB * BLOCK)
        lowest = (pos - pos % L - M).view(QB, BLOCK).amin(1, keepdim=True)  # earliest key of the tile's rows
        return (q_hi >= k_lo.T) & (lowest <= k_hi.T)

    return Pattern(mask_mod, 1, candidates)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions, else the dtype itself (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


# --- the modules ------------------------------------------------------------------------------------
class FlexCore(nn.Module):
    """(B, h, n, d) q, k, v -> (B, h, n, d) through compiled flex_attention.

    Holds the variant's own module (`native`) for its parameters and helpers, the BlockMasks it
    built (per length, heads, kind of mask and device) and the figures case_metrics reports."""

    def __init__(self, native: nn.Module, shape: Shape) -> None:
        super().__init__()
        self.native = native
        self.shape = shape
        self._masks: dict[tuple[int, int, Any, str], BlockMask] = {}
        self._mask_figures: dict[tuple[int, Any], dict[str, Any]] = {}
        self._used: dict[int, Any] = {}  # length -> the kind of mask its last call used
        self._first_call_s: dict[tuple[int, str, str], float] = {}
        self.notes: dict[str, Any] = {}

    @property
    def params(self) -> Any:
        """The variant's parameters: the layers around an attention read them (LongformerLayer)."""
        return self.native.params

    # --- what a subclass says ------------------------------------------------------------------
    def pattern(self, n: int, heads: int, kind: Any, device: str = "cpu") -> Pattern:
        """The pattern at length n; tensors its mask_mod reads live on `device`."""
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def pattern_heads(self, h: int) -> int:
        """Heads with a pattern of their own: 1 when every head shares one."""
        return 1

    def mask_kind(self, device: torch.device) -> Any:
        """Which of the subclass's masks this device needs (LSH: with or without the anchor)."""
        return None

    def mask_length(self, n: int, kind: Any) -> int:
        """The key length of the BlockMask at sequence length n."""
        return n

    # --- shared --------------------------------------------------------------------------------
    def block_mask(self, n: int, heads: int, device: torch.device) -> BlockMask:
        """Built on the CPU once per (length, heads, kind), timed, and copied to the device."""
        kind = self.mask_kind(device)
        self._used[n] = kind
        key = (n, heads, kind, str(device))
        mask = self._masks.get(key)
        if mask is None:
            host_key = (n, heads, kind, "cpu")
            host = self._masks.get(host_key)
            if host is None:
                t0 = time.perf_counter()
                host, figures = build_block_mask(self.pattern(n, heads, kind), n, self.mask_length(n, kind))
                figures["block_mask_s"] = time.perf_counter() - t0
                self._mask_figures.setdefault((n, kind), figures)
                self._masks[host_key] = host
            if device.type == "cpu":
                mask = host
            else:  # the tiles copied, and a mask_mod reading tensors on the device
                mask = host.to(device)
                mask.mask_mod = self.pattern(n, heads, kind, str(device)).mask_mod
            self._masks[key] = mask
        return mask

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
        if q.device.type == "cpu":
            if q.dtype not in CPU_DTYPES:
                dtype = str(q.dtype).removeprefix("torch.")
                raise Unsupported(f"compiled flex_attention on CPU takes float32, float16 or bfloat16, not {dtype}")
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *self.parameters())):
                raise Unsupported(
                    f"compiled flex_attention on CPU is inference only (no backward in torch {torch.__version__})"
                )
        key = (q.shape[-2], str(q.dtype), str(q.device))
        if key in self._first_call_s:
            return self.attend(q, k, v, **kwargs)
        import torch._inductor.config as inductor_config

        # The first call at a length compiles: in this process (under a forked worker a compile
        # pool would be a second generation of workers, for a case-sized graph), and timed.
        with inductor_config.patch(compile_threads=1):
            t0 = time.perf_counter()
            out = self.attend(q, k, v, **kwargs)
            if q.device.type == "cuda":
                torch.cuda.synchronize(q.device)
            self._first_call_s[key] = time.perf_counter() - t0
        return out

    def metrics(self) -> dict[str, Any]:
        """The block mask's figures and the first call's seconds at the case's length."""
        n = self.shape.seq_len
        figures: dict[str, Any] = dict(self._mask_figures.get((n, self._used.get(n)), {}))
        first = [s for (length, _, _), s in self._first_call_s.items() if length == n]
        if first:
            figures["compile_s"] = first[-1]
        return {**figures, **self.notes}


class FlexMasked(FlexCore):
    """flex with a BlockMask alone: full attention, sliding window, BigBird."""

    def __init__(self, native: nn.Module, shape: Shape, make: Callable[[int, int, str], Pattern]) -> None:
        super().__init__(native, shape)
        self._make = make

    def pattern(self, n: int, heads: int, kind: Any, device: str = "cpu") -> Pattern:
        return self._make(n, heads, device)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
        _, h, n, d = q.shape
        mask = self.block_mask(n, self.pattern_heads(h), q.device)
        return _compiled_flex()(q, k, v, block_mask=mask, scale=1.0 / math.sqrt(d))


class FlexBigBird(FlexMasked):
    def pattern_heads(self, h: int) -> int:
        return self.native.params.draws(h) if self.native.params.mode(self.shape.seq_len) != "full" else 1


class FlexSlidingWindow(FlexMasked):
    """Longformer: in the layer scope with global tokens the layer hands in (Q_g, K_g, V_g), its
    global projections; the g global rows are then the native module's own dense pass over them."""

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, global_qkv: tuple[Tensor, Tensor, Tensor] | None = None, **kw: Any
    ) -> Tensor:
        out = super().attend(q, k, v)
        if global_qkv is None:
            return out
        from attnbench.workloads.sparse.sliding_window import _layout

        native = self.native
        rows = native._global_rows(*global_qkv, _layout(native.params, q.shape[-2]))  # (B, h, g, d)
        if torch.is_grad_enabled() and out.requires_grad:
            return torch.cat([rows, out[:, :, rows.shape[2] :]], dim=2)
        out[:, :, : rows.shape[2]] = rows
        return out


class FlexLSH(FlexCore):
    """Reformer LSH: hash, sort, flex on the sorted chunks, unsort, combine the rounds."""

    # Devices where compiled flex returns no log-sum-exp, so several rounds need the anchor key.
    anchor_devices: tuple[str, ...] = ("cpu",)

    def mask_kind(self, device: torch.device) -> bool:
        """True: the mask has the anchor key."""
        return self.native.params.hashes > 1 and device.type in self.anchor_devices

    def pattern(self, n: int, heads: int, kind: bool, device: str = "cpu") -> Pattern:
        chunk = self.native.params.chunk
        return lsh_pattern(n, chunk, anchor=kind, block=tile_size(chunk))

    def mask_length(self, n: int, kind: bool) -> int:
        return n + 1 if kind else n

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
        from attnbench.workloads.sparse.lsh import _fill_values, lsh_buckets

        del k  # shared QK, as the variant
        p = self.native.params
        B, h, n, _ = q.shape
        R = p.hashes
        with torch.no_grad():
            buckets = lsh_buckets(q, self.native.factors(n), R, p.seed)  # (B, h, R, n)
            order = torch.sort(buckets, dim=-1, stable=True).indices  # by (bucket, position)
            del buckets
            pos = order.transpose(1, 2).reshape(B, R * h, n)  # sorted head hh = round·h + head
            slots = torch.arange(n, device=q.device).expand(B, R * h, n)
            inv = torch.empty_like(pos).scatter_(2, pos, slots)  # the sorted slot of each position
        mode = "single" if R == 1 else "anchor" if self.mask_kind(q.device) else "lse"
        self.notes["round_lse"] = ROUND_LSE[mode]
        self_score = _fill_values(q.dtype)[0]
        mask = self.block_mask(n, 1, q.device)
        anchor = None
        if mode == "anchor":  # −‖q_i‖ − 1 of each sorted slot: below every real score of its row
            with torch.no_grad():
                norms = q.to(_wide(q.dtype)).norm(dim=-1).repeat(1, R, 1)  # (B, R·h, n)
                anchor = torch.gather(norms, 2, pos).neg_().sub_(ANCHOR_MARGIN)
        anchor_q = None if anchor is None else anchor.to(q.dtype)
        o, lse, lost = _compiled_lsh()(q, v, pos, anchor, anchor_q, mask, n, R, self_score, p.causal, mode)
        if lost is not None and bool(lost.any()):
            lse = lse.masked_scatter(lost, self._window_lse(q, pos, lost, self_score))
        return _compiled_merge()(o, lse, inv, R)

    def _window_lse(self, q: Tensor, pos: Tensor, rows: Tensor, self_score: float) -> Tensor:
        """The log-sum-exp of the sorted slots `rows` ((B, R·h, n) bool) over their windows,
        directly: (rows,) in row-major order, as masked_scatter takes it."""
        from attnbench.workloads.sparse.lsh import _keys

        h, n = q.shape[1], q.shape[2]
        c = self.native.params.chunk
        K = -(-n // c)
        wide = _wide(q.dtype)
        b, hh, t = rows.nonzero().unbind(1)  # (m,) each
        head = hh % h
        offsets = torch.arange(c, device=t.device)
        slots = (t // c)[:, None] * c + offsets  # (m, c): the own chunk, then the previous one
        if K > 1:
            slots = torch.cat([slots, ((t // c - 1) % K)[:, None] * c + offsets], 1)
        valid = slots < n
        slots = slots.clamp(max=n - 1)
        at, keys_at = pos[b, hh, t], pos[b[:, None], hh[:, None], slots]  # original positions
        keys = _keys(q)[b[:, None], head[:, None], keys_at]  # (m, w, d)
        scores = torch.einsum("md,mwd->mw", q[b, head, at].to(wide), keys.to(wide))
        scores = torch.where(slots == t[:, None], self_score, scores)
        if self.native.params.causal:
            valid = valid & (keys_at <= at[:, None])
        return torch.where(valid, scores, -float("inf")).logsumexp(-1)


class FlexTransformerXL(FlexCore):
    """Transformer-XL: content term by flex on q + u, the relative position term by score_mod."""

    def pattern(self, n: int, heads: int, kind: Any, device: str = "cpu") -> Pattern:
        return xl_pattern(self.native.params)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
        from attnbench.workloads.hierarchical import max_keys

        native = self.native
        p = native.params
        if p.detach_memory and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise Unsupported(
                "flex cannot detach Transformer-XL's memory per (query, key) pair (SG(·)) in training; "
                "use detach_memory=false"
            )
        n, d = q.shape[-2:]
        scale = 1.0 / math.sqrt(d)
        kmax = max_keys(n, p.segment, p.memory)
        r = native.shared_positions(n, q)  # (h, kmax, d): W_R R for distances kmax − 1 … 0
        bias = ((q + native.v.to(q.dtype)[:, None, :]) @ r.transpose(-1, -2)) * scale  # (B, h, n, kmax)
        qu = q + native.u.to(q.dtype)[:, None, :]
        mask = self.block_mask(n, 1, q.device)
        return _compiled_xl()(qu, k, v, bias, mask, scale, n, kmax)


# --- the implementation ------------------------------------------------------------------------------
def _core(variant: type[AttentionVariant], native: nn.Module, shape: Shape) -> FlexCore:
    params = native.params
    name = variant.name
    if name in FULL_VARIANTS:
        return FlexMasked(native, shape, lambda n, heads, device: dense_pattern(params.causal))
    if name == "sparse.sliding_window":
        return FlexSlidingWindow(native, shape, lambda n, heads, device: sliding_window_pattern(params))
    if name == "sparse.bigbird":
        return FlexBigBird(
            native, shape, lambda n, heads, device: bigbird_pattern(params, n, heads, tile_size(params.block), device)
        )
    if name == "sparse.lsh":
        return FlexLSH(native, shape)
    if name == "hierarchical.transformer_xl":
        return FlexTransformerXL(native, shape)
    raise Unsupported(f"flex has no pattern for {name}")


def _find_core(module: nn.Module) -> FlexCore | None:
    return next((m for m in module.modules() if isinstance(m, FlexCore)), None)


@register_impl
class FlexImpl(Implementation):
    name = "flex"
    summary = "torch.compile(flex_attention) with a BlockMask of the variant's own pattern"
    # Its first call at a length compiles. Under a TorchDispatchMode (the memory worker's aten
    # op recorder) dynamo does not compile and flex's higher-order op has no rule: a harness
    # must not record aten ops around that call, as for the torch.compile transforms.
    compiles_on_first_call: ClassVar[bool] = True

    @classmethod
    def availability(cls) -> str | None:
        if not _has_flex():
            return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (torch >= 2.5 has)"
        if _cxx() is None and not _has_triton():
            return "torch.compile (inductor) cannot compile here: no C++ compiler (CPU) and no triton (CUDA)"
        return None

    @classmethod
    def supports(cls, variant: type[AttentionVariant], params: Any, scope: str, backend: str) -> str | None:
        if backend in BACKEND_REASONS:
            return BACKEND_REASONS[backend]
        if backend not in ("cpu", "cuda"):
            return f"flex runs on the cpu and cuda backends (torch.compile's inductor), not {backend}"
        missing = compiler_missing(backend)
        if missing:
            return missing
        if variant.name in NOT_EXPRESSIBLE:
            return NOT_EXPRESSIBLE[variant.name]
        if variant.name not in BUILT:
            return f"flex has no pattern for {variant.name} (it has one for {', '.join(BUILT)})"
        if variant.name == "hierarchical.transformer_xl":
            if params.per_segment:
                return (
                    "flex computes Transformer-XL in one call over the sequence; per_segment's repeated "
                    "W_R·R and memory projections are a segment-by-segment schedule it does not run"
                )
            if params.train_step != "sequence":
                return "flex has no form of train_step=segment (one segment's forward and backward at a time)"
        return None

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        if scope == "core":
            core = _core(variant, variant(params, shape), shape)
            module: nn.Module = core
        else:
            # The native layer, built as native builds it (same weights), around the flex core.
            module = variant.build(params, shape, scope)
            holder = getattr(module, "layer", module)  # LongformerLayer wraps a PreNormLayer
            native = getattr(holder, "attention", None)
            if not isinstance(native, variant):
                raise Unsupported(f"flex cannot place its attention in {type(module).__name__}")
            core = _core(variant, native, shape)
            holder.attention = core
        # Built now, outside the timed region, and timed (block_mask_s).
        core.block_mask(shape.seq_len, core.pattern_heads(shape.heads), torch.device("cpu"))
        return module

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        core = _find_core(module)
        return {} if core is None else core.metrics()

    @classmethod
    def peak_estimate(
        cls,
        variant: type[AttentionVariant],
        params: Any,
        shape: Shape,
        scope: str,
        itemsize: int,
        mode: str,
        sdpa: SdpaChoice = MATH,
    ) -> int | None:
        """The native case's estimate plus what flex adds: its output, and for LSH the gathered
        rounds and their outputs, for Transformer-XL the (B, h, n, M + L) position table."""
        base = variant.case_peak_estimate(params, shape, scope, itemsize, mode, sdpa)
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        one = B * h * n * d * itemsize
        extra = 2 * one
        if variant.name == "sparse.lsh":
            extra += params.hashes * (3 * one + 3 * B * h * n * (d + 1) * itemsize + B * h * n * 8 * 2)
        elif variant.name == "hierarchical.transformer_xl":
            extra += 2 * B * h * n * (params.segment + params.memory) * max(itemsize, 4)
        return base + extra
