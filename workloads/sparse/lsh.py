"""Reformer LSH attention (Kitaev et al. 2020), as in the paper, trax and Hugging Face.

Definition (what `forward` computes and `reference` defines, per batch element and head):

- Shared query/key. In the ``core`` scope the variant receives (q, k, v), uses ``q`` as
  the shared QK input and ignores ``k``; in the ``layer`` scope the fused projection's
  query slice feeds it the same way (in training k's gradient is zero: the harness asks
  autograd for unused inputs' gradients as zeros). Queries are used as they are; keys are the
  queries at unit length, k̂_j = q_j / √(mean(q_j²) + 1e-6) / √d, and the scores are
  s_ij = q_i·k̂_j with no further 1/√d. This is trax's ``attend`` for shared QK
  (``length_normalized(k)`` then ``k / sqrt(d)``) and Hugging Face's ``_len_and_dim_norm``
  (``_len_norm`` then ``* rsqrt(head_size)``), epsilon included: ‖k̂_j‖ = 1 up to the 1e-6.
  Revision 1 of this variant divided the scores by √d once more (a √d softer softmax).
- Bucket count. ``buckets`` = 0 means auto, settled per length by ``resolve_params`` with
  trax's rule (``LSHSelfAttention.hash_vectors``): n_b = 2·max(1, ⌊n/c⌋), Reformer's 2n/c;
  up to 128 buckets one rotation, above it the count is factorised into f1 = the smallest
  power of two with f1² ≥ n_b and f2 = 2·⌊n_b/(2·f1)⌋, so the total becomes f1·f2 (which
  can be below 2⌊n/c⌋ when n_b is not a power of two). ``buckets`` records the total and
  ``bucket_factor`` f1 (0: one rotation); both are derived from the length. Hugging Face
  (``_set_num_buckets``) factorises above 2·max(√(max_positions/c), c) buckets, which is 128 at
  the default c = 64 for any max_positions up to 64·64² = 262144; it rounds n_b down to a power
  of two first and splits it evenly, so the two agree exactly for powers of two only. We follow
  trax, the authors' code. An explicit ``buckets`` is hashed with one rotation unless
  ``bucket_factor`` is given too (trax's and Hugging Face's int vs. list ``n_buckets``).
- Hashing, ``hashes`` = n_r rounds. Round r draws random rotations R_r of shape
  (h, d, Σf/2), one (d, Σf/2) matrix per head (per head, as Hugging Face does), from a
  CPU ``torch.Generator`` seeded with ``seed·1_000_003 + r``, in float32; Σf is n_b with one
  rotation and f1 + f2 factorised. With one rotation the bucket of position j is
  argmax([x̂_j R, −x̂_j R]) of the normalised x̂_j. Factorised, the first f1/2 columns give
  b1 = argmax([x̂_j R₁, −x̂_j R₁]) ∈ [0, f1), the next f2/2 give b2 ∈ [0, f2), and the bucket is
  b1 + f1·b2, as trax's ``hash_vecs`` and Hugging Face's ``_hash_vectors`` combine them.
  Hashing runs in float32 whatever the input dtype (so a float64 reference of float32-cast
  inputs hashes identically; for float16/bfloat16 the reference must be taken on the rounded
  inputs, or near-tie buckets can differ). It is piecewise constant and carries no gradient.
  ``lsh_buckets`` is the one implementation; the fast path and the reference both call it.
- Per round, positions are sorted by (bucket, position) (stable), padded at the end to a
  multiple of the chunk c, and cut into K = ⌈n/c⌉ chunks. Each chunk's queries attend the
  keys of their own chunk and of the previous chunk of the same round; the first chunk's
  previous chunk is the round's last (wrap-around, as in Reformer). Hugging Face and trax
  chunk all rounds as one concatenated sequence, so there the first chunk of round r > 0
  looks back into round r−1's last chunk; we keep rounds independent, which changes only
  which keys the first chunk of each round sees, not the cost. With one chunk (n ≤ c) a
  chunk attends only itself (no duplicate look-back), so the result is dense attention
  with the self mask; with two chunks each sees both.
- A query's own position scores SELF_SCORE = −1e5 (replacing s_ii, not −inf, as Reformer),
  so it is attended only when it has no other key. Padding and, when ``causal``, keys at
  later original positions are masked out (weight 0; −1e9 in the fast path).
- Rounds are combined by log-sum-exp: out_i = Σ_r softmax_r(L_ri)·o_ri, L_ri being the
  log-sum-exp of round r's scores for query i and o_ri that round's attention output.
  Duplicates are not removed (as in Hugging Face), so the exact dense equivalent is
  out_i = Σ_j w_ij v_j / Σ_j w_ij with w_ij = count_ij · exp(s_ij), where count_ij is the
  number of rounds in which query i sees key j (each round's window holds a key at most
  once). ``pattern(q)`` returns count; ``reference`` applies it in float64.

The fast path never builds an n×n tensor: one hashing matmul per round, a stable sort,
gathers of the sorted queries and of the (own + previous chunk) keys and values,
(B, h, n_r·K, c, 2c) scores, the log-sum-exp softmax, and a gather through the inverse
permutation. The hashing projection is (B, h, n, Σf/2) per round and costs n·D·Σf·n_r FLOPs,
against the chunk attention's 8·n·c·D·n_r: a share of Σf/(8c). With auto buckets Σf ≤ 128 up
to the threshold and 2 to 2.5·√n_b above it, so hashing grows as n^1.5 where one rotation of
2n/c buckets grows as n²/c. At c = 64 the share is 25% at 4K (128 buckets, one rotation),
6% at 8K, 12.5% at 32K, 19% at 64K and 38% at 256K (one rotation: 100% at 16K). Everything
else is linear in n but the sort, n log n.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.registry import register_workload
from attnbench.workloads.base import AttentionVariant, Shape, require_int, step_range

SELF_SCORE = -1e5  # score of a query against its own position (Reformer's self mask)
MASKED_SCORE = -1e9  # padding and causal masking in the fast path; weight exactly 0
MAX_HASHES = 1024  # keeps the per-round generator seeds distinct
SEED_STRIDE = 1_000_003
NORM_EPS = 1e-12  # hashing's normalisation (the bucket does not depend on the length)
LEN_NORM_EPS = 1e-6  # the keys' length normalisation, trax's length_normalized and HF's _len_norm
FACTORISE_ABOVE = 128  # trax's hash_vectors: one rotation up to 128 auto buckets, two factors above


def auto_buckets(n: int, chunk: int) -> tuple[int, int]:
    """trax's automatic bucket count at length n: (total n_b, first factor f1; 0 = one rotation).

    n_b = 2·max(1, ⌊n/c⌋); above 128, f1 = the smallest power of two with f1² ≥ n_b and
    f2 = 2·⌊n_b/(2·f1)⌋ (both even), and the total is f1·f2.
    """
    nb = 2 * max(1, n // chunk)
    if nb <= FACTORISE_ABOVE:
        return nb, 0
    f1 = 1
    while f1 * f1 < nb:
        f1 *= 2
    return f1 * (2 * (nb // (2 * f1))), f1


def bucket_factors(buckets: int, bucket_factor: int) -> tuple[int, ...]:
    """The bucket counts hashed with one rotation each: (n_b,), or (f1, n_b/f1) factorised."""
    return (buckets,) if bucket_factor == 0 else (bucket_factor, buckets // bucket_factor)


@dataclass(frozen=True)
class LSHParams:
    hashes: int = 2  # hash rounds n_r
    chunk: int = 64  # chunk length c; each query sees its chunk and the previous one
    buckets: int = 0  # total n_b; 0 = auto (trax's rule), settled per length by resolve_params
    # f1 of n_b = f1·f2, hashed with two rotations (b1 + f1·b2); 0 = one rotation of n_b.
    # Auto buckets set it above 128 buckets; with explicit buckets it is the user's choice.
    bucket_factor: int = 0
    seed: int = 0  # seeds the random rotations
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("hashes", "chunk", "buckets", "bucket_factor", "seed"):
            require_int(name, getattr(self, name))
        if not 1 <= self.hashes <= MAX_HASHES:
            raise ValueError(f"hashes must be between 1 and {MAX_HASHES}, got {self.hashes}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be positive, got {self.chunk}")
        if self.buckets != 0 and (self.buckets < 2 or self.buckets % 2):
            raise ValueError(f"buckets must be 0 (auto) or an even number >= 2, got {self.buckets}")
        f = self.bucket_factor
        if f != 0:
            if self.buckets == 0:
                raise ValueError("bucket_factor needs an explicit buckets (auto buckets set it themselves)")
            if f < 2 or f % 2 or self.buckets % f or (self.buckets // f) % 2:
                raise ValueError(
                    f"bucket_factor must be 0 or an even divisor of buckets={self.buckets} "
                    f"with an even quotient, got {f}"
                )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be true or false, got {self.causal!r}")


@functools.lru_cache(maxsize=64)
def _rotations(seed: int, round_index: int, heads: int, head_dim: int, half: int) -> Tensor:
    """(h, d, Σf/2) float32 on the CPU, one Gaussian matrix per head; cached, never mutate."""
    gen = torch.Generator().manual_seed(seed * SEED_STRIDE + round_index)
    return torch.randn(heads, head_dim, half, generator=gen, dtype=torch.float32)


def lsh_buckets(x: Tensor, factors: tuple[int, ...], hashes: int, seed: int) -> Tensor:
    """(B, h, n, d) shared QK -> (B, h, hashes, n) int64 buckets in [0, Π factors).

    One float32 matmul per round of the unit-length x̂ with Σf/2 random columns; factor f_i
    takes the next f_i/2 columns, b_i = argmax([x̂R_i, −x̂R_i]), and the bucket is
    b_1 + f_1·b_2 (+ f_1·f_2·b_3 ...). The concatenation is never built (max of x̂R_i against
    −min of x̂R_i, ties to the first half).
    """
    B, h, n, d = x.shape
    out = torch.zeros(B, h, hashes, n, dtype=torch.long, device=x.device)
    with torch.no_grad():
        xn = F.normalize(x.detach().to(torch.float32), dim=-1, eps=NORM_EPS)  # (B, h, n, d)
        for r in range(hashes):
            rot = _rotations(seed, r, h, d, sum(factors) // 2).to(x.device)  # (h, d, Σf/2)
            proj = torch.matmul(xn, rot)  # (B, h, n, Σf/2)
            col, place = 0, 1
            for f in factors:
                part = proj[..., col : col + f // 2]  # (B, h, n, f/2)
                hi, hi_idx = part.max(dim=-1)
                lo, lo_idx = part.min(dim=-1)
                out[:, :, r] += place * torch.where(hi >= -lo, hi_idx, lo_idx + f // 2)
                col, place = col + f // 2, place * f
            del proj, part
    return out


def _keys(q: Tensor) -> Tensor:
    """Reformer's unit-length keys, q / √(mean(q²) + 1e-6) / √d (trax and Hugging Face)."""
    return q * torch.rsqrt(q.square().mean(dim=-1, keepdim=True) + LEN_NORM_EPS) / math.sqrt(q.shape[-1])


def _fill_values(dtype: torch.dtype) -> tuple[float, float]:
    """(self score, masked score) representable in dtype."""
    if dtype == torch.float16:
        return -1e4, -6e4
    return SELF_SCORE, MASKED_SCORE


@register_workload
class LSHAttention(AttentionVariant):
    """Reformer LSH self-attention; see the module docstring for the exact definition."""

    name: ClassVar[str] = "sparse.lsh"
    family: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "Reformer: shared-QK LSH buckets, sorted chunks with one chunk look-back"
    Params: ClassVar[type] = LSHParams
    subquadratic: ClassVar[bool] = True
    derived_params: ClassVar[tuple[str, ...]] = ("buckets", "bucket_factor")
    # bucket_factor = 0 is one rotation, the only hashing before it existed (revision 2 moves
    # every case_id anyway, for the key scale and the auto rule).
    neutral_params: ClassVar[dict] = {"bucket_factor": 0}

    # --- parameters ---------------------------------------------------------------------
    @staticmethod
    def _factors(params: LSHParams, n: int) -> tuple[int, ...]:
        if params.buckets:
            return bucket_factors(params.buckets, params.bucket_factor)
        return bucket_factors(*auto_buckets(n, params.chunk))

    def factors(self, n: int) -> tuple[int, ...]:
        """The bucket counts hashed with one rotation each at length n; their product is n_b."""
        return self._factors(self.params, n)

    @classmethod
    def resolve_params(cls, values: dict, shape: Shape) -> dict:
        p = cls.make_params(values)  # validates
        if p.buckets == 0:
            buckets, factor = auto_buckets(shape.seq_len, p.chunk)
            values = {**values, "buckets": buckets, "bucket_factor": factor}
        return values

    @classmethod
    def definition_revision(cls, params: dict, scope: str) -> int:
        # 2: unit-length keys without a further 1/√d, trax's auto bucket count and its
        # factorisation above 128 buckets. Every case computes something new.
        return 2

    # --- the fast path ------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        del k  # shared QK: the keys are the normalised queries, k plays no part
        p = self.params
        B, h, n, d = q.shape
        R, c = p.hashes, p.chunk
        K = -(-n // c)  # chunks per round
        npad = K * c
        BhR = B * h * R
        dev = q.device
        self_score, masked = _fill_values(q.dtype)

        with step_range("lsh.hash"):
            buckets = lsh_buckets(q, self.factors(n), R, p.seed)  # (B, h, R, n)
        with step_range("lsh.sort"):
            order = torch.sort(buckets, dim=-1, stable=True).indices  # (B, h, R, n): by (bucket, position)
            del buckets
            if npad > n:  # pad each round's sorted sequence at the end with the sentinel n
                order = F.pad(order, (0, npad - n), value=n)  # (B, h, R, npad)
        qpos = order.view(B, h, R, K, c)  # original position of each sorted slot
        # Keys: own chunk, then the previous chunk of the round (wrapping), (B, h, R, K, 2c);
        # a single chunk attends only itself.
        kpos = torch.cat([qpos, qpos.roll(1, dims=3)], dim=-1) if K > 1 else qpos
        width = kpos.shape[-1]

        with step_range("lsh.gather"):
            # Flat row indices into (B·h·n, d) sources; padding reads row n-1 and is masked.
            base = (torch.arange(B * h, device=dev) * n).view(B, h, 1, 1, 1)
            q_rows = (qpos.clamp(max=n - 1) + base).reshape(-1)
            k_rows = (kpos.clamp(max=n - 1) + base).reshape(-1)
            qs = q.reshape(B * h * n, d).index_select(0, q_rows).view(BhR * K, c, d)
            ks = _keys(q).reshape(B * h * n, d).index_select(0, k_rows).view(BhR * K, width, d)
            vs = v.reshape(B * h * n, d).index_select(0, k_rows).view(BhR * K, width, d)

        with step_range("lsh.attention"):
            scores = torch.bmm(qs, ks.transpose(1, 2)).view(BhR, K, c, width)  # (B·h·R, K, c, 2c)
            del qs, ks
            if p.causal:  # later original positions; also covers padding (sentinel n)
                later = kpos.view(BhR, K, 1, width) > qpos.view(BhR, K, c, 1)
                scores = scores.masked_fill_(later, masked)
                del later
            elif npad > n:  # padding sits in the last chunk's own half and the first's look-back
                real = n - (K - 1) * c  # real slots in the last chunk
                scores[:, -1, :, real:c] = masked
                if K > 1:
                    scores[:, 0, :, c + real :] = masked
            scores.diagonal(dim1=-2, dim2=-1).fill_(self_score)  # own position: own half's diagonal

            # Log-sum-exp softmax; the row max is a constant shift (detached, exact).
            m = scores.detach().amax(dim=-1, keepdim=True)  # (B·h·R, K, c, 1)
            e = scores.sub_(m).exp_()
            s = e.sum(dim=-1, keepdim=True)
            o = torch.bmm(e.view(BhR * K, c, width), vs).view(BhR, K, c, d) / s  # (B·h·R, K, c, d)
            del e, vs

        with step_range("lsh.unsort"):
            # Undo the sort: row of the sorted output holding each original position.
            inv = torch.empty(B, h, R, n, dtype=torch.long, device=dev)
            inv.scatter_(-1, order[..., :n], torch.arange(n, device=dev).expand(B, h, R, n))
            rows = (inv + (torch.arange(BhR, device=dev) * npad).view(B, h, R, 1)).reshape(-1)
            o = o.reshape(BhR * npad, d).index_select(0, rows).view(B, h, R, n, d)
        if R == 1:
            return o[:, :, 0]
        with step_range("lsh.combine"):  # the rounds, weighted by their log-sum-exp
            lse = (m.squeeze(-1) + s.squeeze(-1).log()).reshape(-1).index_select(0, rows).view(B, h, R, n)
            weights = torch.softmax(lse, dim=2).unsqueeze(-1)  # (B, h, R, n, 1)
            return (weights * o).sum(dim=2)  # (B, h, n, d)

    # --- definition, for correctness checks ---------------------------------------------
    def pattern(self, q: Tensor) -> Tensor:
        """(B, h, n, n) int64: count_ij, the rounds in which query i sees key j.

        Independent of the fast path except for `lsh_buckets`: ranks come from pairwise
        comparisons of (bucket, position), not from a sort. Dense; for small n only.
        """
        p = self.params
        n = q.shape[-2]
        c, K = p.chunk, -(-n // p.chunk)
        buckets = lsh_buckets(q, self.factors(n), p.hashes, p.seed)  # (B, h, R, n)
        pos = torch.arange(n, device=q.device)
        bi, bj = buckets.unsqueeze(-1), buckets.unsqueeze(-2)  # [..., i, j]
        before = (bj < bi) | ((bj == bi) & (pos.view(1, n) < pos.view(n, 1)))  # j sorts before i
        chunk = before.sum(dim=-1) // c  # (B, h, R, n): chunk of each position per round
        ci, cj = chunk.unsqueeze(-1), chunk.unsqueeze(-2)
        sees = cj == ci
        if K > 1:
            sees = sees | (cj == (ci - 1) % K)
        if p.causal:
            sees = sees & (pos.view(1, n) <= pos.view(n, 1))
        return sees.sum(dim=2)  # (B, h, n, n)

    def reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """out_i = Σ_j count_ij·exp(s_ij)·v_j / Σ_j count_ij·exp(s_ij), in float64; k unused."""
        count = self.pattern(q).to(torch.float64)
        qd, vd = q.to(torch.float64), v.to(torch.float64)
        d = q.shape[-1]
        keys = qd / torch.sqrt(d * (qd.square().mean(dim=-1, keepdim=True) + LEN_NORM_EPS))  # unit length
        scores = qd @ keys.transpose(-1, -2)  # (B, h, n, n); no 1/√d, as Reformer
        scores.diagonal(dim1=-2, dim2=-1).fill_(SELF_SCORE)
        scores = scores.masked_fill(count == 0, float("-inf"))
        w = count * torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        return (w @ vd) / w.sum(dim=-1, keepdim=True)

    def reference_mask(self, n: int) -> Tensor:
        """An example pattern, (n, n) bool, for heatmaps: the pattern depends on the inputs,
        so this is the one of seeded Gaussian queries, one head at this shape's head_dim.
        Not the mask of any particular call; `reference` uses `pattern(q)`."""
        gen = torch.Generator().manual_seed(self.params.seed)
        q = torch.randn(1, 1, n, self.shape.head_dim, generator=gen, dtype=torch.float64)
        return self.pattern(q)[0, 0] > 0

    # --- analytic cost ------------------------------------------------------------------
    @classmethod
    def _layout(cls, params: LSHParams, shape: Shape) -> tuple[int, int, int]:
        """(chunks per round K, padded length, rotation width Σf) at this shape."""
        n, c = shape.seq_len, params.chunk
        K = -(-n // c)
        return K, K * c, sum(cls._factors(params, n))

    @classmethod
    def _hash_flops(cls, params: LSHParams, shape: Shape) -> float:
        _, _, width = cls._layout(params, shape)
        # n·d·Σf/2 multiply-adds per head and round, 2 FLOPs each: n·D·Σf·n_r, where Σf is
        # n_b with one rotation and f1 + f2 factorised
        return float(shape.batch * shape.seq_len * shape.model_dim * width * params.hashes)

    @classmethod
    def flops(cls, params: LSHParams, shape: Shape) -> float:
        """The ideal count (docs/cost-model.md): 8·n_r·n·c·D for 2c keys per query, plus hashing
        n·D·Σf·n_r (Σf = n_b, or f1 + f2 factorised). With a single chunk (n ≤ c) a query has
        n keys: 4·n_r·n²·D."""
        n, c = shape.seq_len, params.chunk
        keys = 2 * c if n > c else n
        attention = 4.0 * params.hashes * n * keys * shape.model_dim * shape.batch
        return attention + cls._hash_flops(params, shape)

    @classmethod
    def executed_flops(cls, params: LSHParams, shape: Shape) -> float:
        """What is multiplied: padded queries against 2c keys (c with a single chunk), plus hashing."""
        K, npad, _ = cls._layout(params, shape)
        keys = 2 * params.chunk if K > 1 else params.chunk
        attention = 4.0 * params.hashes * npad * keys * shape.model_dim * shape.batch
        return attention + cls._hash_flops(params, shape)

    @classmethod
    def working_bytes(cls, params: LSHParams, shape: Shape, itemsize: int) -> int:
        """Scores B·h·n_r·n·2c, n_r sorted copies of Q, K and V, and the output."""
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        keys = 2 * params.chunk if n > params.chunk else n
        scores = B * h * params.hashes * n * keys
        sorted_qkv = 3 * B * h * params.hashes * n * d
        return (scores + sorted_qkv + B * h * n * d) * itemsize

    @classmethod
    def peak_bytes_estimate(cls, params: LSHParams, shape: Shape, itemsize: int, train: bool) -> int:
        """Generous: scores, a bool mask, gathered Q and 2c-wide K/V windows, per-round
        outputs twice (sorted, unsorted), the float32 hashing projection (n·Σf/2), int64 indices."""
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        K, npad, rot = cls._layout(params, shape)
        width = 2 * params.chunk if K > 1 else params.chunk
        rows = B * h * params.hashes * npad
        floats = rows * (2 * width + 2 * width * d // params.chunk + 4 * d) + B * h * n * d
        ints = rows * (2 + width // params.chunk) * 8 + rows * width  # indices, causal mask
        hashing = B * h * n * (rot // 2) * 4 * 2
        forward = floats * itemsize + ints + hashing
        inputs = 3 * B * h * n * d * itemsize
        return 2 * forward + (2 * forward + 2 * inputs if train else 0)
