"""BigBird ITC block-sparse attention (Zaheer et al. 2020; Hugging Face ``BigBirdBlockSparseAttention``).

Layout, exactly (``head_masks`` builds it from the same table the fast path gathers by):

- The sequence of n tokens is padded up to N = nb·b, a multiple of the block size b, giving
  nb = ceil(n / b) blocks. Padding keys are never attended; padding queries are dropped.
  Every length is accepted.
- Blocks 0 and nb−1 are global: their queries attend every (real) key, and every query
  attends their keys.
- Every other query block i (1 ≤ i ≤ nb−2) attends
  * the 3 sliding blocks i−1, i, i+1,
  * the 2 global blocks 0 and nb−1 (for i = 1 and i = nb−2 one of them is also a sliding
    block; it is attended once),
  * r random blocks, drawn uniformly without replacement from the blocks it does not
    already attend (those other than 0, i−1, i, i+1, nb−1).
  The random draws come from a CPU ``torch.Generator`` seeded with ``seed``: the same seed
  gives the same layout on every device. They are shared by all batch rows (as in HF).
- ``random_per_head`` (default false): false makes one draw per query block that every head
  shares, so the pattern is one (n, n) mask. True draws the random blocks of each head on its
  own, as HF's ``bigbird_block_sparse_attention`` does (one draw per head from one seeded
  generator). Head 0 always draws what the shared layout draws, so the two settings differ
  only from head 1 on. With per-head draws, ``reference`` applies an (h, n, n) mask, and
  ``reference_mask`` (the case's recorded picture) is head 0's.
- ``causal``: on top of that layout, query i attends key j only if j ≤ i (token level). The
  random draws are the same as without ``causal``; random blocks after the query block are
  then masked entirely, so on average about half of them carry no weight.

The block-sparse path needs each middle block to have r blocks left to draw from, i.e.
nb ≥ 5 + r (n > (4 + r)·b). ``attention`` = "auto" picks full attention when
n ≤ (5 + 2r)·b (HF's rule, 704 at the defaults) and the block-sparse path otherwise;
``resolve_params`` settles it per length so case records say which ran.

Implementation (block-sparse): the two global query blocks of every batch row and head in
one pass; the middle query blocks in runs of a few (at most ``CHUNK_SCORES`` score elements
on a CPU, so a run's scores stay in cache, ``CHUNK_SCORES_ACCELERATOR`` elsewhere, so each
run's kernels outlast their launches; either way memory stays bounded whatever n and B·h).
Without autograd the runs take one batch row and head at a time, each with the whole budget:
with one head in the batch dimension the sliding window below is a view that the products
read in place, where with several it must be copied (measured: the all-heads runs were
23-34% slower at 8K). With autograd a run spans every batch row and head, one product for
all (the copies then also serve backward). A run scores three parts, never concatenated:

* the sliding blocks, gathered for the run's blocks from an overlapping ``unfold`` view of K
  (and of V): blocks i−1, i, i+1 (i−1, i when causal; block nb−2 alone in its own run,
  since its i+1 is the last, global, possibly partial block);
* the global keys, blocks 0 and nb−1 (block 0 only when causal), as one batched product of
  all the run's query rows with a (b + tail, d) matrix per head shared by every block;
* the r random blocks, gathered for the run's blocks by one index of shape (B·h, blocks·r)
  into the (B·h, nb−1) key blocks (so per-head draws cost the same as shared ones).

Duplicated blocks (block 0 as i−1 of block 1), causal future keys (inside the diagonal
block, and random blocks after the query block) are masked in place on the parts; the
parts are normalised together by a log-sum-exp merge (one row maximum over the parts,
exponentials in place without autograd, one row sum), and P·V per part is accumulated in one
run-sized buffer, divided straight into the preallocated result. With autograd (or in half
precision, where scores are normalised in float32) the same steps run out of place. The two
global query blocks are one dense pass over all heads, (≤ 2b) × n per head, linear in n.
Nothing of size n×n, nor nb×nb, is ever built; the largest buffers are a run's scores and
the global rows' scores (B·h·2b·n).

FLOPs (2 per multiply-add, Q·Kᵀ and P·V): ``flops`` is 4·d·B times the exact number of
allowed (query, key) pairs of the layout summed over the heads (padding and causal masking
applied; with causal per-head draws the heads differ), which is ≈ 4nD·b(7+r)
(docs/cost-model.md) for long sequences; ``executed_flops`` counts what the implementation
multiplies: for each middle block its sliding window (3 blocks, 2 for block nb−2; the
repeated block 0 of block 1 included), the b + tail global keys and the r random blocks
(causal: 2 sliding blocks, block 0 and the random blocks, future ones included), and the
global rows' pass. For the "full" fallback (torch's ``scaled_dot_product_attention``, as
``full.sdpa``) both are the dense count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.base import AttentionVariant, Shape, require_int, step_range
from attnbench.workloads.full import SdpaAttention, dense_flops, output_bytes
from attnbench.workloads.reference import causal_mask, dense_reference

ATTENTION_MODES = ("auto", "block_sparse", "full")
SLIDING = 3
GLOBAL = 2
# Slot order of the layout table's columns for a middle query block i.
PREV, SELF, NEXT, FIRST, LAST = range(5)
CAUSAL_SLOTS = (PREV, SELF, FIRST)  # NEXT and LAST lie wholly after a middle block
# Score elements per run of middle query blocks, over all batch rows and heads; either bounds
# a run's buffers whatever n and B·h. On a CPU, small enough that a run's scores stay in cache
# from their product to their use (2 MiB in float32). On an accelerator, large enough that a
# run's batched kernels outlast their launches (64 MiB in float32: 17 runs at n = 64K with
# the defaults and 8 heads).
CHUNK_SCORES = 1 << 19
CHUNK_SCORES_ACCELERATOR = 1 << 24


@dataclass(frozen=True)
class BigBirdParams:
    block: int = 64
    random_blocks: int = 3
    random_per_head: bool = False  # HF draws per head; False shares one draw across heads
    seed: int = 0
    causal: bool = False
    attention: str = "auto"  # auto | block_sparse | full

    def __post_init__(self) -> None:
        require_int("block", self.block, 1)
        require_int("random_blocks", self.random_blocks, 0)
        require_int("seed", self.seed)
        for flag in ("causal", "random_per_head"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")

    @property
    def full_threshold(self) -> int:
        """Lengths up to this use full attention under "auto" (HF: (5 + 2r)·b)."""
        return (SLIDING + GLOBAL + 2 * self.random_blocks) * self.block

    @property
    def min_blocks(self) -> int:
        """Fewest blocks the block-sparse layout needs: every middle block must have r left to draw."""
        return SLIDING + GLOBAL + self.random_blocks

    def mode(self, n: int) -> str:
        """What runs at length n: "full" or "block_sparse". Raises if block_sparse cannot."""
        if self.attention == "auto":
            return "full" if n <= self.full_threshold else "block_sparse"
        if self.attention == "block_sparse" and num_blocks(n, self.block) < self.min_blocks:
            raise ValueError(
                f"attention='block_sparse' needs at least {self.min_blocks} blocks of {self.block} "
                f"(n > {(self.min_blocks - 1) * self.block}), got n={n}; use attention='auto' or 'full'"
            )
        return self.attention

    def draws(self, heads: int) -> int:
        """How many independent random layouts `heads` heads use: each its own, or one shared."""
        return heads if self.random_per_head else 1


def num_blocks(n: int, block: int) -> int:
    return -(-n // block)


@functools.lru_cache(maxsize=64)
def random_blocks(nb: int, r: int, seed: int, heads: int = 1) -> Tensor:
    """(heads, nb−2, r) long, sorted per row: the random key blocks of middle query blocks
    1..nb−2, one independent draw per head, all from one generator seeded with `seed`.

    Row i−1 of a head holds r distinct blocks drawn uniformly from those query block i does
    not already attend. Sequential sampling without replacement, vectorised over heads and
    rows: the x-th block not yet taken is found by stepping x over the taken blocks in
    ascending order. The uniforms are drawn head by head, so head 0 gets exactly the draw of
    `heads` = 1 (the shared layout), whatever `heads` is. Work and memory O(heads·nb·r²);
    the loops run r·(5+r) times whatever n is.
    """
    if nb < SLIDING + GLOBAL + r:
        raise ValueError(f"{nb} blocks are too few for {r} random blocks per row (need {SLIDING + GLOBAL + r})")
    g = torch.Generator().manual_seed(seed)
    M = nb - 2
    i = torch.arange(1, nb - 1).repeat(heads)  # middle query blocks, head after head
    taken = torch.stack([torch.zeros_like(i), i - 1, i, i + 1, torch.full_like(i, nb - 1)], 1)  # (heads·M, 5)
    # Blocks 1 and nb−2 have a sliding block that is also global; a sentinel never skips.
    taken[i == 1, PREV] = nb
    taken[i == nb - 2, NEXT] = nb
    free = nb - (taken < nb).sum(1)  # (heads·M,) blocks left to draw from
    u = torch.rand(heads, r, M, generator=g, dtype=torch.float64)  # draw j of head z: u[z, j]
    chosen = torch.empty(heads * M, 0, dtype=torch.long)
    for j in range(r):
        # x: index among the blocks not yet taken
        x = (u[:, j].reshape(-1) * (free - j)).floor().long().clamp_(max=free - j - 1)
        for t in torch.cat([taken, chosen], 1).sort(1).values.unbind(1):
            x = x + (x >= t).long()
        chosen = torch.cat([chosen, x[:, None]], 1)
    return chosen.sort(1).values.view(heads, M, r)


def block_layout(nb: int, r: int, seed: int, heads: int = 1) -> tuple[Tensor, Tensor]:
    """The layout table of the middle query blocks 1..nb−2, the single source of truth.

    Returns (table, valid): table (heads, nb−2, 5+r) long, the key blocks of query block i
    in slot order [i−1, i, i+1, 0, nb−1, random...] for each of `heads` independent draws;
    valid (nb−2, 5+r) bool, the same for every head, False on a slot that repeats an earlier
    one (block 0 as i−1 for i = 1, block nb−1 as i+1 for i = nb−2), which the fast path
    masks so each key counts once.
    """
    i = torch.arange(1, nb - 1)
    fixed = torch.stack([i - 1, i, i + 1, torch.zeros_like(i), torch.full_like(i, nb - 1)], 1)  # (M, 5)
    rand = random_blocks(nb, r, seed, heads)  # (heads, M, r)
    table = torch.cat([fixed.expand(heads, -1, -1), rand], 2)
    valid = torch.ones(table.shape[1:], dtype=torch.bool)
    valid[0, PREV] = False  # block 0, also slot FIRST
    valid[-1, NEXT] = False  # block nb−1, also slot LAST
    return table, valid


@dataclass
class _Plan:
    """Everything the fast path needs at one length, batch and head count on one device."""

    nb: int
    tail: int  # real tokens in the last block
    chunks: tuple[tuple[int, int, int], ...]  # (first, end, sliding blocks) runs of middle query blocks
    heads: Tensor  # (B·h, 1) long: the row of each batch row and head, for gathering
    offsets: Tensor  # (b,) long: 0..b−1, a block's rows from its first
    rand: Tensor  # (B·h, nb−2, r) long: the random key blocks of middle query blocks 1..nb−2
    future: Tensor | None  # causal: (B·h, nb−2, 1, r, 1) True where a random block lies after the query block
    tril: Tensor | None  # causal: (b, b) True where key j > query i inside the diagonal block
    last_causal: Tensor | None  # causal: (tail, n) True where key j > query i for the last block
    one_head: list[_Plan] = field(default_factory=list)  # no autograd: each head's own plan (_head_plans)


def _chunks(nb: int, per_chunk: int, causal: bool) -> tuple[tuple[int, int, int], ...]:
    """Runs of middle query blocks sharing one score buffer: (first, end, sliding blocks).

    Causal: every middle block scores its blocks i−1, i (2 sliding). Otherwise blocks
    1..nb−3 score i−1, i, i+1 (3) and block nb−2 scores i−1, i only, in a run of its own:
    its block i+1 is the last block, which is global (attended once, through the global
    keys) and may be partial, so a 3-block window would run past the end of K.
    """
    last = nb - 1 if causal else nb - 2  # end of the uniform runs
    runs = [(i, min(i + per_chunk, last), 2 if causal else 3) for i in range(1, last, per_chunk)]
    if not causal:
        runs.append((nb - 2, nb - 1, 2))
    return tuple(runs)


@register_workload
class BigBirdAttention(AttentionVariant):
    """BigBird ITC: sliding, global and random key blocks per query block; see the module docstring."""

    name: ClassVar[str] = "sparse.bigbird"
    family: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "BigBird ITC block-sparse: 3 sliding + 2 global + r random blocks per query block"
    Params: ClassVar[type] = BigBirdParams
    subquadratic: ClassVar[bool] = True
    derived_params: ClassVar[tuple[str, ...]] = ("attention",)
    neutral_params: ClassVar[dict[str, Any]] = {"random_per_head": False}

    def __init__(self, params: BigBirdParams, shape: Shape) -> None:
        super().__init__(params, shape)
        self._plans: dict[tuple, _Plan] = {}

    # --- parameters ------------------------------------------------------------------------
    @classmethod
    def resolve_params(cls, values: dict[str, Any], shape: Shape) -> dict[str, Any]:
        params = cls.make_params(values)
        return {**values, "attention": params.mode(shape.seq_len)}

    @classmethod
    def verify_length(cls, params: BigBirdParams, n: int, cap: int) -> int:
        if params.attention != "block_sparse":
            return min(n, cap)
        shortest = (params.min_blocks - 1) * params.block + 1  # the block-sparse layout needs this much
        return min(n, max(cap, shortest))

    # --- definition ------------------------------------------------------------------------
    def head_masks(self, n: int, heads: int | None = None) -> Tensor | None:
        """(draws, n, n) bool: one mask per independent layout (`heads` of them with
        random_per_head, else 1); None for full attention without causal masking."""
        p = self.params
        if p.mode(n) == "full":
            return causal_mask(n)[None] if p.causal else None
        b, nb = p.block, num_blocks(n, p.block)
        draws = p.draws(self.shape.heads if heads is None else heads)
        table, _ = block_layout(nb, p.random_blocks, p.seed, draws)
        blocks = torch.zeros(draws, nb, nb, dtype=torch.bool)
        blocks[:, 0] = blocks[:, -1] = True  # global query blocks attend everything
        blocks[:, 1:-1].scatter_(2, table, True)
        mask = blocks.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :n, :n]
        return mask & causal_mask(n) if p.causal else mask

    def reference_mask(self, n: int) -> Tensor | None:
        """(n, n): head 0's layout, which is the shared one (per-head draws start with it)."""
        masks = self.head_masks(n, heads=1)
        return None if masks is None else masks[0]

    def input_pattern(self, q: Tensor, k: Tensor) -> Tensor | None:
        """(1, h|1, n, n) bool: each head's own layout with random_per_head (h of them), else
        the one shared by every head; None for full attention without causal masking."""
        n = q.shape[-2]
        masks = self.head_masks(n, heads=q.shape[1])  # (draws, n, n)
        return None if masks is None else masks.view(1, masks.shape[0], n, n)

    def reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Dense float64 attention under each head's own mask ((h, n, n) with per-head draws)."""
        masks = self.head_masks(q.shape[-2], heads=q.shape[1])
        return dense_reference(q, k, v, masks)  # (draws, n, n) broadcasts over (B, h)

    # --- forward ---------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.params.mode(q.shape[-2]) == "full":
            with step_range("bigbird.dense"):  # too short for the block layout
                return F.scaled_dot_product_attention(q, k, v, is_causal=self.params.causal)
        return self._block_sparse(q, k, v)

    def _plan(self, n: int, batch: int, heads: int, device: torch.device) -> _Plan:
        key = (n, batch, heads, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(n, batch, heads, device)
        return plan

    def _make_plan(self, n: int, batch: int, heads: int, device: torch.device) -> _Plan:
        p = self.params
        b, r = p.block, p.random_blocks
        nb = num_blocks(n, b)
        tail = n - (nb - 1) * b
        table, _ = block_layout(nb, r, p.seed, p.draws(heads))
        rand = table[..., SLIDING + GLOBAL :]  # (draws, nb−2, r)
        # One row per batch row and head (z = batch·h + head); batch rows share the heads' draws.
        rand = rand.expand(batch, heads, nb - 2, r).reshape(batch * heads, nb - 2, r)
        future = tril = last_causal = None
        if p.causal:
            future = (rand > torch.arange(1, nb - 1)[:, None])[:, :, None, :, None].to(device)
            tril = torch.ones(b, b, dtype=torch.bool).triu(1).to(device)
            rows = torch.arange((nb - 1) * b, n)[:, None]
            last_causal = (torch.arange(n)[None, :] > rows).to(device)
        budget = CHUNK_SCORES if device.type == "cpu" else CHUNK_SCORES_ACCELERATOR
        chunks = _chunks(nb, _per_chunk(b, r, batch * heads, budget), p.causal)
        z = torch.arange(batch * heads, device=device)[:, None]
        offsets = torch.arange(b, device=device)
        return _Plan(nb, tail, chunks, z, offsets, rand.contiguous().to(device), future, tril, last_causal)

    def _block_sparse(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, h, n, d = q.shape
        BH, b = B * h, self.params.block
        plan = self._plan(n, B, h, q.device)
        nb = plan.nb
        low = q.dtype in (torch.float16, torch.bfloat16)
        # Without autograd, float32/64 scores are exponentiated in place and every output
        # row is written straight into one preallocated result.
        inplace = not low and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        q3 = q.reshape(BH, n, d)
        # Keys and values are read as whole blocks below; the layer scope hands in strided views.
        k3, v3 = (t.reshape(BH, n, d).contiguous() for t in (k, v))
        out = q.new_empty(BH, n, d) if inplace else None
        # Global key blocks 0 and nb−1 (causal: block 0 only), shared by every middle block.
        if self.params.causal:
            kg, vg = k3[:, :b], v3[:, :b]
        else:
            kg, vg = (torch.cat([t[:, :b], t[:, (nb - 1) * b :]], 1) for t in (k3, v3))  # (BH, b + tail, d)
        if out is not None:
            # No autograd: one head at a time. With one head in the batch dimension, a run's
            # overlapping window of K and V is a view that bmm reads in place; with several,
            # (head, block) cannot be one batch dimension of it and the window is copied, three
            # times over: 23-34% slower at 8K, measured against the per-head kernel this replaced.
            # The global rows' scores, (2b, n) a head, stay small and in cache the same way.
            for z, one in enumerate(self._head_plans(plan, q.device)):
                q1, k1, v1, kg1, vg1 = (t[z : z + 1] for t in (q3, k3, v3, kg, vg))
                with step_range("bigbird.global"):
                    self._global(q1, k1, v1, one, out[z : z + 1])
                for lo, hi, w in one.chunks:
                    self._middle(q1, k1, v1, kg1, vg1, one, lo, hi, w, out[z : z + 1, lo * b : hi * b])
            return out.view(B, h, n, d)
        with step_range("bigbird.global"):
            first, last = self._global(q3, k3, v3, plan, None)
        pieces = [first]
        for lo, hi, w in plan.chunks:
            pieces.append(self._middle(q3, k3, v3, kg, vg, plan, lo, hi, w, None))
        pieces.append(last)
        return torch.cat(pieces, 1).view(B, h, n, d)

    def _head_plans(self, plan: _Plan, device: torch.device) -> list[_Plan]:
        """One plan per batch row and head: its own random blocks, in runs sized for one head
        (the same score budget, so more blocks a run and as much memory)."""
        if not plan.one_head:
            p = self.params
            budget = CHUNK_SCORES if device.type == "cpu" else CHUNK_SCORES_ACCELERATOR
            chunks = _chunks(plan.nb, _per_chunk(p.block, p.random_blocks, 1, budget), p.causal)
            zero = torch.zeros(1, 1, dtype=torch.long, device=device)
            for z in range(plan.rand.shape[0]):
                future = None if plan.future is None else plan.future[z : z + 1]
                plan.one_head.append(
                    _Plan(plan.nb, plan.tail, chunks, zero, plan.offsets, plan.rand[z : z + 1], future, plan.tril,
                          plan.last_causal)
                )  # fmt: skip
        return plan.one_head

    def _middle(
        self,
        q3: Tensor,
        k3: Tensor,
        v3: Tensor,
        kg: Tensor,
        vg: Tensor,
        plan: _Plan,
        first: int,
        end: int,
        w: int,
        dest: Tensor | None,
    ) -> Tensor:
        """Middle query blocks first..end−1 of every head: (B·h, c·b, d), into `dest` if given.

        Three score parts, never concatenated: the w sliding blocks, the global keys as one
        batched product for all c·b rows of a head, and the r random blocks gathered for these
        c blocks only. They are normalised together by one row maximum and one sum
        (log-sum-exp merge).
        """
        BH, _, d = q3.shape
        b, r = self.params.block, plan.rand.shape[-1]
        c = end - first
        lo, hi = (first - 1) * b, (end - 2 + w) * b  # keys of blocks first−1 .. end−3+w
        # (BH, c·b, d), pre-scaled; contiguous so that (head, block) is one batch dimension
        # (a no-op but for the layer scope's strided queries).
        qc = (q3[:, first * b : end * b] * (1.0 / math.sqrt(d))).contiguous()
        qb = qc.view(BH * c, b, d)
        with step_range("bigbird.window_global_scores"):
            # Block t's window is blocks t−1 .. t−2+w: an overlapping view, copied for this run
            # only, since (head, block) cannot be one batch dimension of a view.
            k_win = k3[:, lo:hi].unfold(1, w * b, b).reshape(BH * c, d, w * b)
            s_slide = torch.bmm(qb, k_win)  # (BH·c, b, w·b)
            s_glob = torch.bmm(qc, kg.transpose(1, 2))  # (BH, c·b, G)
        v_win = v3[:, lo:hi].unfold(1, w * b, b).transpose(2, 3).reshape(BH * c, w * b, d)
        scores = [s_slide, s_glob.view(BH * c, b, -1)]
        values = [v_win, vg]
        rows = slice(first - 1, end - 1)
        if r:
            with step_range("bigbird.random_gather_scores"):
                idx = plan.rand[:, rows].reshape(BH, c * r)  # each head's own (or the shared) draw
                # The rows of the chosen key blocks in K and V seen as (BH·n, d): index_select
                # of whole rows is several times faster than advanced indexing by (head, block).
                n = q3.shape[1]
                at = ((plan.heads * n + idx * b)[..., None] + plan.offsets).reshape(-1)  # (BH·c·r·b,)
                k_rand = k3.view(BH * n, d).index_select(0, at).view(BH * c, r * b, d)
                scores.append(torch.bmm(qb, k_rand.transpose(1, 2)))  # (BH·c, b, r·b)
                values.append(v3.view(BH * n, d).index_select(0, at).view(BH * c, r * b, d))
        with step_range("bigbird.softmax_output"):
            return self._merge(scores, values, plan, first, rows, c, dest)

    def _merge(
        self,
        scores: list[Tensor],
        values: list[Tensor],
        plan: _Plan,
        first: int,
        rows: slice,
        c: int,
        dest: Tensor | None,
    ) -> Tensor:
        """Masking, the shared log-sum-exp softmax over the score parts and the weighted sum of values.

        scores: sliding (BH·c, b, w·b), global (BH·c, b, G), random (BH·c, b, r·b); values:
        (BH·c, w·b, d), (BH, G, d), (BH·c, r·b, d). Returns (BH, c·b, d).
        """
        b, vg = self.params.block, values[1]
        BH, _, d = vg.shape
        dtype = vg.dtype
        low = dtype in (torch.float16, torch.bfloat16)
        if low:
            scores = [s.float() for s in scores]
        neg = float("-inf")
        if first == 1:
            scores[0].view(BH, c, b, -1)[:, 0, :, :b].fill_(neg)  # query block 1: block 0 is also a global block
        if plan.tril is not None:
            scores[0][:, :, b:].masked_fill_(plan.tril, neg)  # diagonal block: future keys
            if len(scores) > 2:
                r = plan.rand.shape[-1]
                scores[2].view(BH, c, b, r, b).masked_fill_(plan.future[:, rows], neg)
        # Every row holds its own key in the sliding part, so the maximum is finite.
        top = scores[0].amax(-1, keepdim=True)
        for s in scores[1:]:
            top = torch.maximum(top, s.amax(-1, keepdim=True))
        if dest is not None:  # no autograd: exponentiate in place, accumulate in one run buffer
            exps = [s.sub_(top).exp_() for s in scores]
            total = exps[0].sum(-1, keepdim=True)
            for e in exps[1:]:
                total += e.sum(-1, keepdim=True)
            # Straight into the result: `dest` is one head's contiguous rows (_block_sparse).
            o = torch.bmm(exps[0], values[0], out=dest.view(BH * c, b, d))  # (BH·c, b, d)
            o3 = o.view(BH, c * b, d)
            # baddbmm with out= (not baddbmm_): the same kernel, and FlopCounterMode counts it.
            torch.baddbmm(o3, exps[1].view(BH, c * b, -1), vg, out=o3)
            if len(exps) > 2:
                torch.baddbmm(o, exps[2], values[2], out=o)
            return o3.div_(total.view(BH, c * b, 1))
        top = top.detach()  # any shift gives the same softmax; no gradient through it
        exps = [(s - top).exp() for s in scores]
        total = sum(e.sum(-1, keepdim=True) for e in exps)
        if low:
            exps = [e.to(dtype) for e in exps]
        o = torch.bmm(exps[0], values[0]) + torch.bmm(exps[1].view(BH, c * b, -1), vg).view(BH * c, b, d)
        if len(exps) > 2:
            o = o + torch.bmm(exps[2], values[2])
        o = (o.float() / total).to(dtype) if low else o / total
        return o.view(BH, c * b, d)

    def _global(self, q3: Tensor, k3: Tensor, v3: Tensor, plan: _Plan, dest: Tensor | None) -> tuple[Tensor, Tensor]:
        """Query blocks 0 and nb−1 of every head, (BH, b, d) and (BH, tail, d): one dense pass."""
        b, start = self.params.block, (plan.nb - 1) * self.params.block
        scale = 1.0 / math.sqrt(q3.shape[-1])
        first_out, last_out = (None, None) if dest is None else (dest[:, :b], dest[:, start:])
        if plan.tril is not None:  # causal: block 0 sees itself, the last block every earlier key
            first = _dense(q3[:, :b] * scale, k3[:, :b], v3[:, :b], plan.tril, first_out)
            return first, _dense(q3[:, start:] * scale, k3, v3, plan.last_causal, last_out)
        rows = torch.cat([q3[:, :b], q3[:, start:]], 1) * scale  # both see every key: one pass
        if dest is None:
            both = _dense(rows, k3, v3, None, None)
            return both[:, :b], both[:, b:]
        probs = _probs(rows, k3, None, inplace=True)  # (BH, b + tail, n)
        return torch.bmm(probs[:, :b], v3, out=first_out), torch.bmm(probs[:, b:], v3, out=last_out)

    # --- costs -----------------------------------------------------------------------------
    @classmethod
    def _pairs(cls, params: BigBirdParams, n: int, heads: int) -> tuple[int, int]:
        """(allowed query-key pairs of the layout, pairs the block-sparse path multiplies),
        summed over `heads` heads."""
        b, r = params.block, params.random_blocks
        nb = num_blocks(n, b)
        tail = n - (nb - 1) * b
        M = nb - 2
        if not params.causal:
            # Global rows see all n keys; a middle block sees its distinct blocks, the last with `tail` keys.
            # Every head's draw gives the same count.
            distinct = (SLIDING + GLOBAL + r) * M - 2  # blocks 1 and nb−2 have one repeat each
            useful = (b + tail) * n + b * (b * (distinct - M) + tail * M)
            # Middle block i multiplies b·(b + tail) global keys, r·b random ones and its sliding
            # window: 3 blocks (block 1's i−1 repeats block 0 and is masked), 2 for block nb−2.
            executed = (b + tail) * n + M * b * (b + tail + r * b) + b * b * (SLIDING * M - 1)
            return heads * useful, heads * executed
        # Causal: a random block counts only when it lies before its query block, which the
        # draws decide: per head with per-head draws.
        draws = params.draws(heads)
        table, _ = block_layout(nb, r, params.seed, draws)
        rand = table[..., SLIDING + GLOBAL :]
        past_random = int((rand < torch.arange(1, nb - 1)[:, None]).sum()) * (heads // draws)
        # First block: triangle. Last block: queries (nb−1)b..n−1 see j ≤ i.
        first = b * (b + 1) // 2
        last = sum(range((nb - 1) * b + 1, n + 1))
        # Middle block i: i−1 whole, i triangle, block 0 whole unless it is i−1, past random blocks whole.
        middle = M * (b * b + b * (b + 1) // 2) + (M - 1) * b * b
        executed = b * b + tail * n + M * b * (len(CAUSAL_SLOTS) + r) * b
        return heads * (first + last + middle) + past_random * b * b, heads * executed

    @classmethod
    def flops(cls, params: BigBirdParams, shape: Shape) -> float:
        if params.mode(shape.seq_len) == "full":
            return dense_flops(shape, params.causal)
        useful, _ = cls._pairs(params, shape.seq_len, shape.heads)
        return 4.0 * useful * shape.head_dim * shape.batch

    @classmethod
    def executed_flops(cls, params: BigBirdParams, shape: Shape) -> float:
        if params.mode(shape.seq_len) == "full":
            return dense_flops(shape, params.causal)  # fused kernel, counted as full.sdpa does
        _, executed = cls._pairs(params, shape.seq_len, shape.heads)
        return 4.0 * executed * shape.head_dim * shape.batch

    @classmethod
    def _run_elements(cls, params: BigBirdParams, shape: Shape, budget: int) -> tuple[int, int, int, int]:
        """The live buffers of one run of at most `budget` scores, over all batch rows and heads:
        its scores, its gathered keys (or values: sliding windows and random blocks), its scaled
        queries (or its P·V sum), and the global rows' scores."""
        b, r, n, d = params.block, params.random_blocks, shape.seq_len, shape.head_dim
        bh = shape.batch * shape.heads
        blocks = min(num_blocks(n, b) - 2, _per_chunk(b, r, bh, budget))
        width = (len(CAUSAL_SLOTS) if params.causal else SLIDING + GLOBAL) + r
        gathered_blocks = (2 if params.causal else SLIDING) + r
        return bh * blocks * b * width * b, bh * blocks * gathered_blocks * b * d, bh * blocks * b * d, bh * 2 * b * n

    @classmethod
    def working_bytes(cls, params: BigBirdParams, shape: Shape, itemsize: int) -> int:
        if params.mode(shape.seq_len) == "full":
            return output_bytes(shape, itemsize)
        scores, gathered, queries, global_rows = cls._run_elements(params, shape, CHUNK_SCORES)
        # The output, and either one run's scores, gathered keys and values and scaled queries
        # (the smaller, CPU run), or the global rows' scores: they are not alive together.
        run = scores + 2 * gathered + queries
        return max(run, global_rows) * itemsize + output_bytes(shape, itemsize)

    @classmethod
    def peak_bytes_estimate(
        cls, params: BigBirdParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        if params.mode(shape.seq_len) == "full":
            return SdpaAttention.peak_bytes_estimate(params, shape, itemsize, train, sdpa)
        wide = max(itemsize, 4)  # low precision scores are normalised in float32
        n, b, d = shape.seq_len, params.block, shape.head_dim
        bh = shape.batch * shape.heads
        if not train:
            budget = max(CHUNK_SCORES, CHUNK_SCORES_ACCELERATOR)  # the larger run, on any device
            scores, gathered, queries, global_rows = cls._run_elements(params, shape, budget)
            # The output and copies of non-contiguous inputs; then either one run's buffers
            # (its scores and their float32 copy, gathered keys and values, scaled queries, the
            # P·V sum, the global keys) or the global rows' scores and probabilities; with
            # slack for the allocator.
            run = 2 * scores * wide + (2 * gathered + 2 * queries + 2 * bh * b * d) * itemsize
            return 4 * output_bytes(shape, itemsize) + 2 * max(run, 2 * global_rows * wide)
        # Autograd keeps every run's buffers alive until backward, and adds their gradients:
        # count them as one materialised score buffer over all middle blocks.
        nb = num_blocks(n, b)
        width = (len(CAUSAL_SLOTS) if params.causal else SLIDING + GLOBAL) + params.random_blocks
        scores, gathered = (nb - 2) * b * width * b, (nb - 2) * width * b * d
        forward = bh * (3 * scores * wide + 2 * gathered * itemsize + 3 * 2 * b * n * wide)
        forward += 6 * output_bytes(shape, itemsize)
        return 2 * forward + 2 * 3 * output_bytes(shape, itemsize)


def _per_chunk(b: int, r: int, bh: int, budget: int) -> int:
    """Middle query blocks per run: `budget` score elements over all B·h heads at most (at
    least one block)."""
    return max(1, budget // (bh * b * b * (SLIDING + GLOBAL + r)))


def _probs(q: Tensor, k: Tensor, hidden: Tensor | None, inplace: bool) -> Tensor:
    """softmax(q·kᵀ) for pre-scaled q, in float32 or wider; `hidden` (bool) marks keys not attended."""
    scores = q @ k.transpose(-1, -2)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if hidden is not None:
        scores.masked_fill_(hidden, float("-inf"))  # a fresh product: safe in place under autograd
    if inplace:
        return torch.ops.aten._softmax.out(scores, -1, False, out=scores)
    return scores.softmax(-1)


def _dense(q: Tensor, k: Tensor, v: Tensor, hidden: Tensor | None, dest: Tensor | None) -> Tensor:
    """softmax(q·kᵀ) v for pre-scaled (BH, rows, d) q; written into `dest` (no autograd) when given."""
    if dest is not None:
        return torch.bmm(_probs(q, k, hidden, inplace=True), v, out=dest)
    return _probs(q, k, hidden, inplace=False).to(q.dtype) @ v
