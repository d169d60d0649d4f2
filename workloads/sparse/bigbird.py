"""BigBird ITC block-sparse attention (Zaheer et al. 2020; Hugging Face ``BigBirdBlockSparseAttention``).

Layout, exactly (``reference_mask`` builds it from the same table the fast path gathers by):

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
  The random draws are made once per (nb, r, seed) by a CPU ``torch.Generator`` seeded with
  ``seed``: the same seed gives the same layout on every device. One draw per query block is
  shared by all heads and all batch rows (HF draws per head and layer; sharing keeps the
  pattern one (n, n) mask, as ``reference_mask`` promises).
- ``causal``: on top of that layout, query i attends key j only if j ≤ i (token level). The
  random draws are the same as without ``causal``; random blocks after the query block are
  then masked entirely, so on average about half of them carry no weight.

The block-sparse path needs each middle block to have r blocks left to draw from, i.e.
nb ≥ 5 + r (n > (4 + r)·b). ``attention`` = "auto" picks full attention when
n ≤ (5 + 2r)·b (HF's rule, 704 at the defaults) and the block-sparse path otherwise;
``resolve_params`` settles it per length so case records say which ran.

Implementation (block-sparse): the key and value blocks of every middle query block are
gathered, by one block-level ``index_select`` over the layout table, into (B·h·(nb−2),
S·b, d) with S = 5 + r slots (3 + r when causal: block i+1 and the last block lie wholly in
the future of a middle block and are not gathered); one batched matmul gives the scores,
duplicated slots, padding and (causal) future keys are masked in place on small slices,
softmax runs in float32 for low-precision inputs, and one batched matmul gives the output.
The two global query blocks are a small dense pass, (2b × n), linear in n. Nothing of
size n×n, nor nb×nb, is ever built.

FLOPs (2 per multiply-add, Q·Kᵀ and P·V): ``flops`` is 4·D·B times the exact number of
allowed (query, key) pairs of the layout (padding and causal masking applied), which is
≈ 4nD·b(7+r) (REFERENCES.md) for long sequences; ``executed_flops`` counts what the
implementation multiplies: (nb−2)·b·S·b pairs for the middle blocks (duplicates, padding,
causal future included) and the global rows' pass. For the "full" fallback (torch's
``scaled_dot_product_attention``, as ``full.sdpa``) both are the dense count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.registry import register_workload
from workloads.base import AttentionVariant, Shape
from workloads.full import NaiveAttention, dense_flops, output_bytes
from workloads.reference import causal_mask

ATTENTION_MODES = ("auto", "block_sparse", "full")
SLIDING = 3
GLOBAL = 2
# Slot order of the layout table's columns for a middle query block i.
PREV, SELF, NEXT, FIRST, LAST = range(5)
CAUSAL_SLOTS = (PREV, SELF, FIRST)  # NEXT and LAST lie wholly after a middle block


@dataclass(frozen=True)
class BigBirdParams:
    block: int = 64
    random_blocks: int = 3
    seed: int = 0
    causal: bool = False
    attention: str = "auto"  # auto | block_sparse | full

    def __post_init__(self) -> None:
        if not _is_int(self.block) or self.block < 1:
            raise ValueError(f"block must be a positive integer, got {self.block!r}")
        if not _is_int(self.random_blocks) or self.random_blocks < 0:
            raise ValueError(f"random_blocks must be a non-negative integer, got {self.random_blocks!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be true or false, got {self.causal!r}")
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


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def num_blocks(n: int, block: int) -> int:
    return -(-n // block)


@functools.lru_cache(maxsize=64)
def random_blocks(nb: int, r: int, seed: int) -> Tensor:
    """(nb−2, r) long, sorted per row: the random key blocks of middle query blocks 1..nb−2.

    Row i−1 holds r distinct blocks drawn uniformly from those query block i does not already
    attend. Sequential sampling without replacement, vectorised over rows: the x-th block not
    yet taken is found by stepping x over the taken blocks in ascending order. Work and memory
    O(nb·r²); the loops run r·(5+r) times whatever n is.
    """
    if nb < SLIDING + GLOBAL + r:
        raise ValueError(f"{nb} blocks are too few for {r} random blocks per row (need {SLIDING + GLOBAL + r})")
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(1, nb - 1)  # middle query blocks
    taken = torch.stack([torch.zeros_like(i), i - 1, i, i + 1, torch.full_like(i, nb - 1)], 1)  # (M, 5)
    # Blocks 1 and nb−2 have a sliding block that is also global; a sentinel never skips.
    taken[0, PREV] = nb
    taken[-1, NEXT] = nb
    free = nb - (taken < nb).sum(1)  # (M,) blocks left to draw from
    chosen = torch.empty(len(i), 0, dtype=torch.long)
    for j in range(r):
        u = torch.rand(len(i), generator=g, dtype=torch.float64)
        x = (u * (free - j)).floor().long().clamp_(max=free - j - 1)  # index among the blocks not taken
        for t in torch.cat([taken, chosen], 1).sort(1).values.unbind(1):
            x = x + (x >= t).long()
        chosen = torch.cat([chosen, x[:, None]], 1)
    return chosen.sort(1).values


def block_layout(nb: int, r: int, seed: int) -> tuple[Tensor, Tensor]:
    """The layout table of the middle query blocks 1..nb−2, the single source of truth.

    Returns (table, valid): table (nb−2, 5+r) long, the key blocks of query block i in slot
    order [i−1, i, i+1, 0, nb−1, random...]; valid (nb−2, 5+r) bool, False on a slot that
    repeats an earlier one (block 0 as i−1 for i = 1, block nb−1 as i+1 for i = nb−2), which
    the fast path masks so each key counts once.
    """
    i = torch.arange(1, nb - 1)
    fixed = torch.stack([i - 1, i, i + 1, torch.zeros_like(i), torch.full_like(i, nb - 1)], 1)
    table = torch.cat([fixed, random_blocks(nb, r, seed)], 1)
    valid = torch.ones_like(table, dtype=torch.bool)
    valid[0, PREV] = False  # block 0, also slot FIRST
    valid[-1, NEXT] = False  # block nb−1, also slot LAST
    return table, valid


@dataclass
class _Plan:
    """Everything the fast path needs at one length on one device, computed once."""

    nb: int
    tail: int  # real tokens in the last block
    index: Tensor  # (M·S,) key blocks to gather, slot by slot
    slots: int
    future: Tensor | None  # causal: (M, 1, r, 1) True where a random block lies after the query block
    tril: Tensor | None  # causal: (b, b) True where key j > query i inside the diagonal block
    last_causal: Tensor | None  # causal: (tail, n) True where key j > query i for the last block


@register_workload
class BigBirdAttention(AttentionVariant):
    """BigBird ITC: sliding, global and random key blocks per query block; see the module docstring."""

    name: ClassVar[str] = "sparse.bigbird"
    family: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "BigBird ITC block-sparse: 3 sliding + 2 global + r random blocks per query block"
    Params: ClassVar[type] = BigBirdParams
    subquadratic: ClassVar[bool] = True
    derived_params: ClassVar[tuple[str, ...]] = ("attention",)

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
    def reference_mask(self, n: int) -> Tensor | None:
        p = self.params
        if p.mode(n) == "full":
            return causal_mask(n) if p.causal else None
        b, nb = p.block, num_blocks(n, p.block)
        table, _ = block_layout(nb, p.random_blocks, p.seed)
        blocks = torch.zeros(nb, nb, dtype=torch.bool)
        blocks[0] = blocks[-1] = True  # global query blocks attend everything
        blocks[1:-1].scatter_(1, table, True)
        mask = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[:n, :n]
        return mask & causal_mask(n) if p.causal else mask

    # --- forward ---------------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.params.mode(q.shape[-2]) == "full":
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.params.causal)
        return self._block_sparse(q, k, v)

    def _plan(self, n: int, device: torch.device) -> _Plan:
        key = (n, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(n, device)
        return plan

    def _make_plan(self, n: int, device: torch.device) -> _Plan:
        p = self.params
        b, r = p.block, p.random_blocks
        nb = num_blocks(n, b)
        tail = n - (nb - 1) * b
        table, _ = block_layout(nb, r, p.seed)
        future = tril = last_causal = None
        if p.causal:
            table = torch.cat([table[:, CAUSAL_SLOTS], table[:, GLOBAL + SLIDING :]], 1)
            middle = torch.arange(1, nb - 1)[:, None]
            future = (table[:, len(CAUSAL_SLOTS) :] > middle)[:, None, :, None].to(device)
            tril = torch.ones(b, b, dtype=torch.bool).triu(1).to(device)
            rows = torch.arange((nb - 1) * b, n)[:, None]
            last_causal = (torch.arange(n)[None, :] > rows).to(device)
        return _Plan(nb, tail, table.reshape(-1).to(device), table.shape[1], future, tril, last_causal)

    def _block_sparse(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, h, n, d = q.shape
        p = self.params
        b = p.block
        plan = self._plan(n, q.device)
        nb, tail, S = plan.nb, plan.tail, plan.slots
        M = nb - 2
        scale = 1.0 / math.sqrt(d)
        low = q.dtype in (torch.float16, torch.bfloat16)
        neg = float("-inf")

        # Middle query blocks 1..nb−2: always whole, so no padding on the query side.
        qm = (q[:, :, b : (nb - 1) * b] * scale).reshape(B * h * M, b, d)
        pad = nb * b - n
        kp, vp = (F.pad(t, (0, 0, 0, pad)) if pad else t for t in (k, v))
        kg = kp.reshape(B * h, nb, b * d).index_select(1, plan.index).view(B * h * M, S * b, d)
        vg = vp.reshape(B * h, nb, b * d).index_select(1, plan.index).view(B * h * M, S * b, d)
        scores = torch.bmm(qm, kg.transpose(1, 2))  # (B·h·M, b, S·b)
        del qm, kg
        sv = scores.view(B * h, M, b, S, b)
        sv[:, 0, :, PREV].fill_(neg)  # query block 1: block 0 is also slot FIRST
        if p.causal:
            sv[:, :, :, SELF].masked_fill_(plan.tril, neg)
            sv[:, :, :, len(CAUSAL_SLOTS) :].masked_fill_(plan.future, neg)
        else:
            sv[:, M - 1, :, NEXT].fill_(neg)  # query block nb−2: block nb−1 is also slot LAST
            if tail < b:
                sv[:, :, :, LAST, tail:].fill_(neg)  # padding keys
        if low:
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        elif scores.requires_grad:
            probs = scores.softmax(-1)
        else:  # nothing to differentiate: normalise in place, saving a score-sized buffer
            probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        del scores, sv
        middle = torch.bmm(probs, vg).view(B, h, M * b, d)
        del probs, vg

        # Global query blocks 0 and nb−1: a dense pass over the real keys, (≤ 2b) × n.
        first_q = q[:, :, :b] * scale
        last_q = q[:, :, (nb - 1) * b :] * scale
        if p.causal:
            first = _dense(first_q, k[:, :, :b], v[:, :, :b], plan.tril, low)
            last = _dense(last_q, k, v, plan.last_causal, low)
        else:
            both = _dense(torch.cat([first_q, last_q], 2), k, v, None, low)
            first, last = both[:, :, :b], both[:, :, b:]
        return torch.cat([first, middle, last], 2)  # (B, h, n, d)

    # --- costs -----------------------------------------------------------------------------
    @classmethod
    def _pairs(cls, params: BigBirdParams, n: int) -> tuple[int, int]:
        """(allowed query-key pairs of the layout, pairs the block-sparse path multiplies)."""
        b, r = params.block, params.random_blocks
        nb = num_blocks(n, b)
        tail = n - (nb - 1) * b
        M = nb - 2
        if not params.causal:
            # Global rows see all n keys; a middle block sees its distinct blocks, the last with `tail` keys.
            distinct = (SLIDING + GLOBAL + r) * M - 2  # blocks 1 and nb−2 have one repeat each
            useful = (b + tail) * n + b * (b * (distinct - M) + tail * M)
            executed = (b + tail) * n + M * b * (SLIDING + GLOBAL + r) * b
            return useful, executed
        table, _ = block_layout(nb, r, params.seed)
        rand = table[:, SLIDING + GLOBAL :]
        past_random = int((rand < torch.arange(1, nb - 1)[:, None]).sum())
        # First block: triangle. Last block: queries (nb−1)b..n−1 see j ≤ i.
        first = b * (b + 1) // 2
        last = sum(range((nb - 1) * b + 1, n + 1))
        # Middle block i: i−1 whole, i triangle, block 0 whole unless it is i−1, past random blocks whole.
        middle = M * (b * b + b * (b + 1) // 2) + (M - 1) * b * b + past_random * b * b
        executed = b * b + tail * n + M * b * (len(CAUSAL_SLOTS) + r) * b
        return first + last + middle, executed

    @classmethod
    def flops(cls, params: BigBirdParams, shape: Shape) -> float:
        if params.mode(shape.seq_len) == "full":
            return dense_flops(shape, params.causal)
        useful, _ = cls._pairs(params, shape.seq_len)
        return 4.0 * useful * shape.model_dim * shape.batch

    @classmethod
    def executed_flops(cls, params: BigBirdParams, shape: Shape) -> float:
        if params.mode(shape.seq_len) == "full":
            return dense_flops(shape, params.causal)  # fused kernel, counted as full.sdpa does
        _, executed = cls._pairs(params, shape.seq_len)
        return 4.0 * executed * shape.model_dim * shape.batch

    @classmethod
    def _score_elements(cls, params: BigBirdParams, shape: Shape) -> tuple[int, int, int]:
        """Per batch row and head: middle scores, gathered keys (or values), global-row scores."""
        b, n = params.block, shape.seq_len
        nb = num_blocks(n, b)
        slots = (len(CAUSAL_SLOTS) if params.causal else SLIDING + GLOBAL) + params.random_blocks
        return (nb - 2) * b * slots * b, (nb - 2) * slots * b * shape.head_dim, 2 * b * n

    @classmethod
    def working_bytes(cls, params: BigBirdParams, shape: Shape, itemsize: int) -> int:
        if params.mode(shape.seq_len) == "full":
            return output_bytes(shape, itemsize)
        scores, gathered, _ = cls._score_elements(params, shape)
        # One score buffer and the gathered keys and values, plus the output.
        return shape.batch * shape.heads * (scores + 2 * gathered) * itemsize + output_bytes(shape, itemsize)

    @classmethod
    def peak_bytes_estimate(cls, params: BigBirdParams, shape: Shape, itemsize: int, train: bool) -> int:
        if params.mode(shape.seq_len) == "full":
            return NaiveAttention.peak_bytes_estimate(params, shape, itemsize, train)
        scores, gathered, global_rows = cls._score_elements(params, shape)
        wide = max(itemsize, 4)  # low precision softmax runs in float32
        bh = shape.batch * shape.heads
        # Scores and probabilities (and the float32 copy), gathered K and V, global rows twice,
        # padded K and V, scaled queries, middle output and the final output.
        forward = bh * (3 * scores * wide + 2 * gathered * itemsize + 3 * global_rows * wide)
        forward += 6 * output_bytes(shape, itemsize)
        inputs = 3 * output_bytes(shape, itemsize)
        # Training keeps the forward's buffers alive and adds their gradients.
        return 2 * forward + 2 * inputs if train else forward


def _dense(q: Tensor, k: Tensor, v: Tensor, hidden: Tensor | None, low: bool) -> Tensor:
    """softmax(q·kᵀ) v for pre-scaled q; `hidden` (broadcastable bool) marks keys not attended."""
    scores = q @ k.transpose(-1, -2)
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) if low else scores.softmax(-1)
    return probs @ v
