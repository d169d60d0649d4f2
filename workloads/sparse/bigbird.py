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

Implementation (block-sparse): one batch row and head at a time, the middle query blocks
are taken in runs of a few (``CHUNK_SCORES`` score elements at most, so a run's scores stay
in cache from their product to their use). A run scores three parts, never concatenated,
and K and V are never copied whole:

* the sliding blocks through an overlapping ``unfold`` view of K (and of V), fed straight
  to ``bmm``: blocks i−1, i, i+1 (i−1, i when causal; block nb−2 alone in its own run,
  since its i+1 is the last, global, possibly partial block);
* the global keys, blocks 0 and nb−1 (block 0 only when causal), as one plain matrix
  product of all the run's query rows with a (b + tail, d) matrix shared by every block;
* the r random blocks, gathered by ``index_select`` for the run's blocks only.

Duplicated blocks (block 0 as i−1 of block 1), causal future keys (inside the diagonal
block, and random blocks after the query block) are masked in place on the parts; the
parts are normalised together by a log-sum-exp merge (one row maximum over the parts,
exponentials in place without autograd, one row sum), and P·V per part is accumulated
straight into the preallocated result. With autograd (or in half precision, where scores
are normalised in float32) the same steps run out of place. The two global query blocks
are a dense pass per head, (≤ 2b) × n, linear in n. Nothing of size n×n, nor nb×nb, is
ever built, and the largest buffers are a run's scores and one head's global rows.

FLOPs (2 per multiply-add, Q·Kᵀ and P·V): ``flops`` is 4·D·B times the exact number of
allowed (query, key) pairs of the layout (padding and causal masking applied), which is
≈ 4nD·b(7+r) (docs/cost-model.md) for long sequences; ``executed_flops`` counts what the
implementation multiplies: for each middle block its sliding window (3 blocks, 2 for block
nb−2; the repeated block 0 of block 1 included), the b + tail global keys and the r random
blocks (causal: 2 sliding blocks, block 0 and the random blocks, future ones included),
and the global rows' pass. For the "full" fallback (torch's
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

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape, require_int, step_range
from attnbench.workloads.full import NaiveAttention, dense_flops, output_bytes
from attnbench.workloads.reference import causal_mask

ATTENTION_MODES = ("auto", "block_sparse", "full")
SLIDING = 3
GLOBAL = 2
# Slot order of the layout table's columns for a middle query block i.
PREV, SELF, NEXT, FIRST, LAST = range(5)
CAUSAL_SLOTS = (PREV, SELF, FIRST)  # NEXT and LAST lie wholly after a middle block
# Score elements per run of middle query blocks: small enough that the run's scores stay in
# cache from their product to their use, large enough that per-run overhead stays small.
CHUNK_SCORES = 1 << 19


@dataclass(frozen=True)
class BigBirdParams:
    block: int = 64
    random_blocks: int = 3
    seed: int = 0
    causal: bool = False
    attention: str = "auto"  # auto | block_sparse | full

    def __post_init__(self) -> None:
        require_int("block", self.block, 1)
        require_int("random_blocks", self.random_blocks, 0)
        require_int("seed", self.seed)
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
    chunks: tuple[tuple[int, int, int], ...]  # (first, end, sliding blocks) runs of middle query blocks
    rand: Tensor  # (nb−2, r) long: the random key blocks of middle query blocks 1..nb−2
    future: Tensor | None  # causal: (nb−2, 1, r, 1) True where a random block lies after the query block
    tril: Tensor | None  # causal: (b, b) True where key j > query i inside the diagonal block
    last_causal: Tensor | None  # causal: (tail, n) True where key j > query i for the last block


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
            with step_range("bigbird.dense"):  # too short for the block layout
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
        rand = table[:, SLIDING + GLOBAL :]
        future = tril = last_causal = None
        if p.causal:
            future = (rand > torch.arange(1, nb - 1)[:, None])[:, None, :, None].to(device)
            tril = torch.ones(b, b, dtype=torch.bool).triu(1).to(device)
            rows = torch.arange((nb - 1) * b, n)[:, None]
            last_causal = (torch.arange(n)[None, :] > rows).to(device)
        chunks = _chunks(nb, _per_chunk(b, r), p.causal)
        return _Plan(nb, tail, chunks, rand.contiguous().to(device), future, tril, last_causal)

    def _block_sparse(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, h, n, d = q.shape
        b = self.params.block
        plan = self._plan(n, q.device)
        nb = plan.nb
        low = q.dtype in (torch.float16, torch.bfloat16)
        # Without autograd, float32/64 scores are exponentiated in place and every output
        # row is written straight into one preallocated result.
        inplace = not low and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        q3 = q.reshape(B * h, n, d)
        # Keys and values are read as whole blocks below; the layer scope hands in strided views.
        k3, v3 = (t.reshape(B * h, n, d).contiguous() for t in (k, v))
        out = q.new_empty(B * h, n, d) if inplace else None
        heads = []
        for z in range(B * h):
            qz, kz, vz = q3[z] * (1.0 / math.sqrt(d)), k3[z], v3[z]  # queries pre-scaled
            # Global key blocks 0 and nb−1 (causal: block 0 only), shared by every middle block.
            if self.params.causal:
                kg, vg = kz[:b], vz[:b]
            else:
                kg, vg = (torch.cat([t[:b], t[(nb - 1) * b :]]) for t in (kz, vz))
            kr = kz[: (nb - 1) * b].view(nb - 1, b * d)  # random blocks are never the last one
            vr = vz[: (nb - 1) * b].view(nb - 1, b * d)
            with step_range("bigbird.global"):
                first, last = self._global(qz, kz, vz, plan, out[z] if inplace else None)
            pieces = [first]
            for lo, hi, w in plan.chunks:
                dest = out[z, lo * b : hi * b].view(hi - lo, b, d) if inplace else None
                pieces.append(self._middle(qz, kz, vz, kg, vg, kr, vr, plan, lo, hi, w, dest))
            pieces.append(last)
            if not inplace:
                heads.append(torch.cat([t.reshape(-1, d) for t in pieces]))
        result = out if inplace else torch.stack(heads)
        return result.view(B, h, n, d)

    def _middle(
        self,
        qz: Tensor,
        kz: Tensor,
        vz: Tensor,
        kg: Tensor,
        vg: Tensor,
        kr: Tensor,
        vr: Tensor,
        plan: _Plan,
        first: int,
        end: int,
        w: int,
        dest: Tensor | None,
    ) -> Tensor:
        """Middle query blocks first..end−1 of one head (qz pre-scaled): (c, b, d), into `dest` if given.

        Three score parts, never concatenated: the w sliding blocks through an unfolded
        (overlapping, uncopied) view of K, the global keys as one plain matrix product for
        all c·b rows, and the r random blocks gathered for these c blocks only. They are
        normalised together by one row maximum and one sum (log-sum-exp merge).
        """
        b, d = self.params.block, qz.shape[-1]
        c = end - first
        lo, hi = (first - 1) * b, (end - 2 + w) * b  # keys of blocks first−1 .. end−3+w
        qc = qz[first * b : end * b].view(c, b, d)
        with step_range("bigbird.window_global_scores"):
            s_slide = torch.bmm(qc, kz[lo:hi].unfold(0, w * b, b))  # (c, b, w·b)
            s_glob = torch.mm(qc.view(c * b, d), kg.t())  # (c·b, G)
        values = [vz[lo:hi].unfold(0, w * b, b).transpose(1, 2), vg]
        rows = slice(first - 1, end - 1)
        scores = [s_slide, s_glob.view(c, b, -1)]
        if plan.rand.shape[1]:
            with step_range("bigbird.random_gather_scores"):
                idx = plan.rand[rows].reshape(-1)
                s_rand = torch.bmm(qc, kr.index_select(0, idx).view(c, -1, d).transpose(1, 2))  # (c, b, r·b)
                scores.append(s_rand)
                values.append(vr.index_select(0, idx).view(c, -1, d))
        with step_range("bigbird.softmax_output"):
            return self._merge(scores, values, s_glob, vg, plan, first, rows, c, dest)

    def _merge(
        self,
        scores: list[Tensor],
        values: list[Tensor],
        s_glob: Tensor,
        vg: Tensor,
        plan: _Plan,
        first: int,
        rows: slice,
        c: int,
        dest: Tensor | None,
    ) -> Tensor:
        """Masking, the shared log-sum-exp softmax over the score parts and the weighted sum of values."""
        b, d, dtype = self.params.block, vg.shape[-1], vg.dtype
        low = dtype in (torch.float16, torch.bfloat16)
        if low:
            scores = [s.float() for s in scores]
        neg = float("-inf")
        if first == 1:
            scores[0][0, :, :b].fill_(neg)  # query block 1: block 0 is also a global block
        if plan.tril is not None:
            scores[0][:, :, b:].masked_fill_(plan.tril, neg)  # diagonal block: future keys
            if len(scores) > 2:
                scores[2].view(c, b, -1, b).masked_fill_(plan.future[rows], neg)
        # Every row holds its own key in the sliding part, so the maximum is finite.
        top = scores[0].amax(-1, keepdim=True)
        for s in scores[1:]:
            top = torch.maximum(top, s.amax(-1, keepdim=True))
        if dest is not None:  # no autograd: exponentiate in place, accumulate into the result
            exps = [s.sub_(top).exp_() for s in scores]
            total = exps[0].sum(-1, keepdim=True)
            for e in exps[1:]:
                total += e.sum(-1, keepdim=True)
            o = torch.bmm(exps[0], values[0], out=dest)
            o.view(c * b, d).addmm_(s_glob, vg)  # s_glob holds the exponentials of scores[1]
            if len(exps) > 2:
                o.baddbmm_(exps[2], values[2])
            return o.div_(total)
        top = top.detach()  # any shift gives the same softmax; no gradient through it
        exps = [(s - top).exp() for s in scores]
        total = sum(e.sum(-1, keepdim=True) for e in exps)
        if low:
            exps = [e.to(dtype) for e in exps]
        o = torch.bmm(exps[0], values[0]) + (exps[1].view(c * b, -1) @ vg).view(c, b, d)
        if len(exps) > 2:
            o = o + torch.bmm(exps[2], values[2])
        return (o.float() / total).to(dtype) if low else o / total

    def _global(self, qz: Tensor, kz: Tensor, vz: Tensor, plan: _Plan, dest: Tensor | None) -> tuple[Tensor, Tensor]:
        """Query blocks 0 and nb−1 of one head (qz pre-scaled), (b, d) and (tail, d): a dense pass."""
        b, start = self.params.block, (plan.nb - 1) * self.params.block
        first_out, last_out = (None, None) if dest is None else (dest[:b], dest[start:])
        if plan.tril is not None:  # causal: block 0 sees itself, the last block every earlier key
            first = _dense(qz[:b], kz[:b], vz[:b], plan.tril, first_out)
            return first, _dense(qz[start:], kz, vz, plan.last_causal, last_out)
        rows = torch.cat([qz[:b], qz[start:]])  # both see every key: one pass
        if dest is None:
            both = _dense(rows, kz, vz, None, None)
            return both[:b], both[b:]
        probs = _probs(rows, kz, None, inplace=True)
        return torch.mm(probs[:b], vz, out=first_out), torch.mm(probs[b:], vz, out=last_out)

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
            # Middle block i multiplies b·(b + tail) global keys, r·b random ones and its sliding
            # window: 3 blocks (block 1's i−1 repeats block 0 and is masked), 2 for block nb−2.
            executed = (b + tail) * n + M * b * (b + tail + r * b) + b * b * (SLIDING * M - 1)
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
    def _run_elements(cls, params: BigBirdParams, shape: Shape) -> tuple[int, int, int]:
        """One head at a time, the live buffers: a run's scores, a run's gathered keys (or
        values), and the global rows' scores; all per batch row and head."""
        b, r, n = params.block, params.random_blocks, shape.seq_len
        nb = num_blocks(n, b)
        blocks = min(nb - 2, _per_chunk(b, r))
        width = (len(CAUSAL_SLOTS) if params.causal else SLIDING + GLOBAL) + r
        return blocks * b * width * b, blocks * r * b * shape.head_dim, 2 * b * n

    @classmethod
    def working_bytes(cls, params: BigBirdParams, shape: Shape, itemsize: int) -> int:
        if params.mode(shape.seq_len) == "full":
            return output_bytes(shape, itemsize)
        scores, gathered, global_rows = cls._run_elements(params, shape)
        # One run's scores and gathered keys and values, one head's global-row scores and
        # scaled queries, plus the output.
        head_q = shape.seq_len * shape.head_dim
        return (scores + 2 * gathered + global_rows + head_q) * itemsize + output_bytes(shape, itemsize)

    @classmethod
    def peak_bytes_estimate(cls, params: BigBirdParams, shape: Shape, itemsize: int, train: bool) -> int:
        if params.mode(shape.seq_len) == "full":
            return NaiveAttention.peak_bytes_estimate(params, shape, itemsize, train)
        wide = max(itemsize, 4)  # low precision scores are normalised in float32
        n, b, d = shape.seq_len, params.block, shape.head_dim
        if not train:
            scores, gathered, global_rows = cls._run_elements(params, shape)
            # The output, copies of non-contiguous inputs, and one head's buffers (a run's scores
            # and their float32 copy, gathered keys and values, global keys, global-row scores
            # and probabilities, scaled queries), with slack for the allocator.
            head = (2 * scores + 2 * global_rows) * wide + (2 * gathered + 4 * b * d + 2 * n * d) * itemsize
            return 4 * output_bytes(shape, itemsize) + 3 * head
        # Autograd keeps every run's buffers of every head alive until backward, and adds
        # their gradients: count them as one materialised score buffer over all middle blocks.
        bh = shape.batch * shape.heads
        nb = num_blocks(n, b)
        width = (len(CAUSAL_SLOTS) if params.causal else SLIDING + GLOBAL) + params.random_blocks
        scores, gathered = (nb - 2) * b * width * b, (nb - 2) * width * b * d
        forward = bh * (3 * scores * wide + 2 * gathered * itemsize + 3 * 2 * b * n * wide)
        forward += 6 * output_bytes(shape, itemsize)
        return 2 * forward + 2 * 3 * output_bytes(shape, itemsize)


def _per_chunk(b: int, r: int) -> int:
    """Middle query blocks per run: CHUNK_SCORES score elements at most (at least one block)."""
    return max(1, CHUNK_SCORES // (b * b * (SLIDING + GLOBAL + r)))


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
    """softmax(q·kᵀ) v for pre-scaled q; written into `dest` (no autograd) when given."""
    if dest is not None:
        return torch.mm(_probs(q, k, hidden, inplace=True), v, out=dest)
    return _probs(q, k, hidden, inplace=False).to(q.dtype) @ v
