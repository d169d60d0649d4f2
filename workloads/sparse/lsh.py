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

The fast path never builds an n×n tensor. Hashing (one matmul per round) and the stable sort
run over the whole sequence, O(n·Σf) and O(n log n). Without autograd the sorted chunks are
then taken in groups of at most ``GROUP_SCORES`` score elements (``GROUP_SCORES_ACCELERATOR``
off the CPU): as many whole sorted sequences of one round as fit, or a run of chunks of one.
A group gathers its sorted queries and its (own + previous chunk) keys, normalised on the
gathered rows, and values, scores them (chunks, c, 2c), applies the log-sum-exp softmax, and
scatters each output row to its original position, where it is merged with the earlier
rounds' by log-sum-exp: the forward holds one group, one (B, h, n, d) result and one
(B, h, n) log-sum-exp, never n_r copies of anything of size n·d. With autograd the whole
sequence is one group, as before groups: the rounds' outputs are unsorted by a gather through
the inverse permutation and combined by one softmax over the rounds (the saved activations
grow with n anyway, and each group's gathers would cost a full-size gradient buffer in
backward). The two paths agree to float rounding.

Export. Under ``torch.compiler.is_exporting()`` (torch.export, and so torch.onnx with dynamo,
which the ``onnxruntime`` backend uses) the forward takes ``_forward_export``: the same function
as one graph valid at every length. The sort becomes an argsort of the distinct keys
bucket·n + position (no stable sort needed), the padding slots hold positions n, n + 1, …
(masked), there are at least 2 chunks per round (a traced count of 1 would be specialised;
with one real chunk the second is all padding, so the first sees only itself, as above), every
operand is gathered by chunk from index arithmetic, and the rounds are unsorted through the
inverse permutation (a second argsort) and combined by a softmax over their log-sum-exp, all
chunks of all rounds at once: memory O(n_r·n·c), never (n, n). The rotations are drawn when the
module is built (``_export_rotations``, with the bucket count resolved), since drawn inside a
trace they would be traced random ops; ``lsh_buckets`` takes them as ``rotations``.

The hashing projection is (B, h, n, Σf/2) per round and costs n·D·Σf·n_r FLOPs, against
the chunk attention's 8·n·c·D·n_r: a share of Σf/(8c). With auto buckets Σf ≤ 128 up
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
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.base import AttentionVariant, Shape, require_int, step_range

SELF_SCORE = -1e5  # score of a query against its own position (Reformer's self mask)
MASKED_SCORE = -1e9  # padding and causal masking in the fast path; weight exactly 0
MAX_HASHES = 1024  # keeps the per-round generator seeds distinct
SEED_STRIDE = 1_000_003
NORM_EPS = 1e-12  # hashing's normalisation (the bucket does not depend on the length)
LEN_NORM_EPS = 1e-6  # the keys' length normalisation, trax's length_normalized and HF's _len_norm
FACTORISE_ABOVE = 128  # trax's hash_vectors: one rotation up to 128 auto buckets, two factors above
# Score elements per group of chunks, over every head in the group: without autograd the forward
# holds one group's scores, gathered queries, keys and values at a time, whatever n and B·h. On
# a CPU 4 MiB of float32 scores (about 20 MiB with the gathered rows at c = d = 64): 128 chunks,
# 8192 query rows per batched product, few enough groups that their Python overhead is noise.
# On an accelerator 64 MiB of scores, so that each group's kernels outlast their launches.
GROUP_SCORES = 1 << 20
GROUP_SCORES_ACCELERATOR = 1 << 24


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


def lsh_buckets(
    x: Tensor, factors: tuple[int, ...], hashes: int, seed: int, rotations: tuple[Tensor, ...] | None = None
) -> Tensor:
    """(B, h, n, d) shared QK -> (B, h, hashes, n) int64 buckets in [0, Π factors).

    One float32 matmul per round of the unit-length x̂ with Σf/2 random columns; factor f_i
    takes the next f_i/2 columns, b_i = argmax([x̂R_i, −x̂R_i]), and the bucket is
    b_1 + f_1·b_2 (+ f_1·f_2·b_3 ...). The concatenation is never built (max of x̂R_i against
    −min of x̂R_i, ties to the first half). `rotations`: each round's `_rotations`, drawn
    beforehand (an exported graph holds them as constants; drawn inside a trace they would be
    traced random ops).
    """
    B, h, n, d = x.shape
    out = torch.zeros(B, h, hashes, n, dtype=torch.long, device=x.device)
    with torch.no_grad():
        xn = F.normalize(x.detach().to(torch.float32), dim=-1, eps=NORM_EPS)  # (B, h, n, d)
        for r in range(hashes):
            rot = rotations[r] if rotations is not None else _rotations(seed, r, h, d, sum(factors) // 2)
            rot = rot.to(x.device)  # (h, d, Σf/2)
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


def _groups(heads: int, rounds: int, chunks: int, per_group: int) -> tuple[tuple[int, int, int, int], ...]:
    """Groups of sorted chunks sharing one score buffer, (first, end sequence, first, end chunk).

    Sorted sequence s = r·heads + z is round r of batch row and head z, `chunks` long. A group
    is as many whole sequences of one round as fit in `per_group` chunks, or a run of
    `per_group` chunks of one sequence: never two rounds of one head, so each original
    position appears at most once in a group.
    """
    if per_group >= chunks:
        step = per_group // chunks
        return tuple(
            (r * heads + z, r * heads + min(z + step, heads), 0, chunks)
            for r in range(rounds)
            for z in range(0, heads, step)
        )
    return tuple(
        (s, s + 1, k, min(k + per_group, chunks)) for s in range(rounds * heads) for k in range(0, chunks, per_group)
    )


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

    def __init__(self, params: LSHParams, shape: Shape) -> None:
        super().__init__(params, shape)
        # The rotations an exported graph holds as constants (see `_forward_export`); drawn here
        # because inside a trace the generator's draws would be traced ops. Only with a resolved
        # bucket count, which is all an export accepts (with auto buckets they depend on n).
        self._export_rotations: tuple[Tensor, ...] | None = None
        if params.buckets:
            half = sum(self._factors(params, shape.seq_len)) // 2
            self._export_rotations = tuple(
                _rotations(params.seed, r, shape.heads, shape.head_dim, half) for r in range(params.hashes)
            )

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
        if torch.compiler.is_exporting():  # torch.export / torch.onnx: a graph valid at every length
            return self._forward_export(q, v)
        p = self.params
        B, h, n, d = q.shape
        R, c = p.hashes, p.chunk
        BH = B * h
        K = -(-n // c)  # chunks per round
        npad = K * c
        dev = q.device
        grad = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)

        with step_range("lsh.hash"):
            buckets = lsh_buckets(q, self.factors(n), R, p.seed)  # (B, h, R, n)
        with step_range("lsh.sort"):
            # Rounds outermost: sorted sequence s = r·B·h + z is round r of batch row and head z.
            order = torch.sort(buckets.permute(2, 0, 1, 3).reshape(R * BH, n), dim=-1, stable=True).indices
            del buckets
            if npad > n:  # pad each round's sorted sequence at the end with the sentinel n
                order = F.pad(order, (0, npad - n), value=n)  # (R·B·h, npad): by (bucket, position)
        q2, v2 = q.reshape(BH * n, d), v.reshape(BH * n, d)  # views of contiguous inputs
        chunks = order.view(R * BH, K, c)

        if grad:
            # One group: the saved activations grow with n whatever the grouping, and each
            # group's gathers would cost a full-size gradient buffer in backward.
            keys = _keys(q).reshape(BH * n, d)
            o, lse, _ = self._attend(q2, keys, v2, chunks, (0, R * BH, 0, K), n, normalise=False)
            with step_range("lsh.unsort"):
                # Undo the sort: row of the sorted output holding each original position.
                inv = torch.empty(R * BH, n, dtype=torch.long, device=dev)
                inv.scatter_(-1, order[:, :n], torch.arange(n, device=dev).expand(R * BH, n))
                rows = (inv + (torch.arange(R * BH, device=dev) * npad)[:, None]).reshape(-1)
                o = o.reshape(R * BH * npad, d).index_select(0, rows).view(R, B, h, n, d)
            if R == 1:
                return o[0]
            with step_range("lsh.combine"):  # the rounds, weighted by their log-sum-exp
                lse = lse.reshape(-1).index_select(0, rows).view(R, B, h, n)
                weights = torch.softmax(lse, dim=0).unsqueeze(-1)  # (R, B, h, n, 1)
                return (weights * o).sum(dim=0)  # (B, h, n, d)

        # Without autograd: groups of chunks, each scattered into the result and merged with the
        # earlier rounds by log-sum-exp (the result holds out_i = Σ_r softmax_r(L_ri)·o_ri over
        # the rounds so far). Row B·h·n takes the padding slots.
        budget = GROUP_SCORES if dev.type == "cpu" else GROUP_SCORES_ACCELERATOR
        per_group = max(1, budget // (c * (2 * c if K > 1 else c)))
        out = lse_all = None
        for group in _groups(BH, R, K, per_group):
            o, lse, qpos = self._attend(q2, q2, v2, chunks, group, n, normalise=True)
            with step_range("lsh.unsort"):
                base = (torch.arange(group[0], group[1], device=dev).remainder(BH) * n).view(-1, 1, 1)
                rows = torch.where(qpos < n, qpos + base, BH * n).reshape(-1)  # original row of each slot
                o, lse = o.view(-1, d), lse.reshape(-1)
                if out is None:  # in the products' dtype (autocast's, if on)
                    out, lse_all = o.new_empty(BH * n + 1, d), lse.new_empty(BH * n + 1)
                if group[0] < BH:  # round 0
                    out.index_copy_(0, rows, o)
                    if R > 1:
                        lse_all.index_copy_(0, rows, lse)
            if group[0] >= BH:
                with step_range("lsh.combine"):
                    # Shifted by the larger log-sum-exp, as a softmax over the rounds would be.
                    old = lse_all.index_select(0, rows)
                    top = torch.maximum(old, lse)
                    w_old, w_new = (old - top).exp_(), (lse - top).exp_()
                    total = w_old + w_new
                    merged = out.index_select(0, rows).mul_(w_old.unsqueeze(-1))
                    merged.add_(o.mul_(w_new.unsqueeze(-1))).div_(total.unsqueeze(-1))
                    out.index_copy_(0, rows, merged)
                    lse_all.index_copy_(0, rows, top.add_(total.log_()))
            del o, lse, qpos
        return out[: BH * n].view(B, h, n, d)

    def _forward_export(self, q: Tensor, v: Tensor) -> Tensor:
        """The same function for an exported graph with a symbolic length n (see "Export" above)."""
        p = self.params
        rotations = self._export_rotations
        B, h, n, d = q.shape
        if rotations is None or rotations[0].shape[:2] != (h, d):
            raise ValueError(
                "an export needs the bucket count resolved (buckets = 0 is settled per length) and the "
                f"module's shape (heads {self.shape.heads}, head_dim {self.shape.head_dim}), got {h} × {d}"
            )
        R, c, BH = p.hashes, p.chunk, B * h
        dev = q.device
        self_score, masked = _fill_values(q.dtype)
        # Chunks per round, at least 2: a traced count of 1 would be specialised (size-1 dimensions
        # are), fixing the graph to n ≤ c. With one real chunk the second is all padding, masked,
        # so the first sees only itself, as the fast path's single chunk does.
        K = torch.sym_max((n + c - 1) // c, 2)
        buckets = lsh_buckets(q, self.factors(n), R, p.seed, rotations)  # (B, h, R, n)
        # Sort by (bucket, position): the keys are distinct, so no stable sort is needed.
        order = torch.argsort((buckets * n + torch.arange(n, device=dev)).view(BH, R, n), dim=-1)  # (B·h, R, n)
        # Each round's sorted sequence padded to K·c slots with positions n, n + 1, ... (masked).
        # Every tensor is indexed by chunk, chunk-major (chunk k of all B·h·R sorted sequences, then
        # k + 1), and built by gathers from index arithmetic with constant divisors: no padding,
        # reshape or division by a symbolic size, which the exporter cannot do without guards on n.
        S = BH * R  # sorted sequences: head s // R, round s % R
        blk = torch.arange(S * K, device=dev)[:, None]
        sp, chunk = blk % S, blk // S  # (chunks, 1)
        z, rnd = sp // R, sp % R
        own = chunk * c + torch.arange(c, device=dev)  # (chunks, c) slots of each chunk
        prev = torch.where(own < c, own + (K - 1) * c, own - c)  # the previous chunk's; the first's is the last
        slots = torch.cat([own, prev], dim=-1)  # (chunks, 2c)
        kpos = torch.where(slots < n, order[z, rnd, slots.clamp(max=n - 1)], slots)  # padding: positions ≥ n
        qpos = kpos[:, :c]
        q3, v3 = q.reshape(BH, n, d), v.reshape(BH, n, d)
        kc = kpos.clamp(max=n - 1)
        qs, ks, vs = q3[z, qpos.clamp(max=n - 1)], _keys(q3)[z, kc], v3[z, kc]  # (chunks, c or 2c, d)
        scores = torch.bmm(qs, ks.transpose(1, 2))  # (chunks, c, 2c)
        if p.causal:  # later positions, padding included
            scores = scores.masked_fill(kpos[:, None, :] > qpos[..., None], masked)
        else:  # padding, per key: a broadcast add (ONNX Runtime's Where is several times slower)
            scores = scores + torch.zeros(kpos.shape, dtype=scores.dtype, device=dev).masked_fill(
                kpos >= n, masked
            ).unsqueeze(1)
        # The own position is the own half's diagonal (a position sits in one chunk per round):
        # replaced by the self score with a constant (c, 2c) pattern, scores·keep + fill.
        diag = torch.eye(c, 2 * c, dtype=torch.bool, device=dev)
        keep = (~diag).to(scores.dtype)
        scores = scores * keep + diag.to(scores.dtype) * self_score
        m = scores.amax(dim=-1, keepdim=True)
        e = (scores - m).exp()
        total = e.sum(dim=-1, keepdim=True)
        o = torch.bmm(e, vs) / total  # (chunks, c, d)
        lse = (m + total.log()).squeeze(-1)  # (chunks, c)
        # Undo the sort: the slot of each original position, then the rounds by log-sum-exp.
        at = torch.argsort(order, dim=-1)  # (B·h, R, n): slot holding position j
        seq = torch.arange(BH, device=dev)[:, None, None] * R + torch.arange(R, device=dev)[:, None]
        row = (at // c) * S + seq
        o, lse = o[row, at % c], lse[row, at % c]  # (B·h, R, n, d), (B·h, R, n)
        weights = torch.softmax(lse, dim=1).unsqueeze(-1)
        return (weights * o).sum(dim=1).view(B, h, n, d)

    def _attend(
        self,
        q2: Tensor,
        key_src: Tensor,
        v2: Tensor,
        chunks: Tensor,
        group: tuple[int, int, int, int],
        n: int,
        normalise: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Chunks k0..k1−1 of sorted sequences s0..s1−1 against their own and previous chunk.

        q2, key_src, v2: (B·h·n, d) rows; keys are key_src's rows, normalised here with
        `normalise` (then in place: no autograd). chunks: (R·B·h, K, c) sorted positions.
        Returns the normalised outputs (S, Kg, c, d), their log-sum-exp (S, Kg, c) and the
        original position of each slot (S, Kg, c); n marks padding.
        """
        p = self.params
        c, d = p.chunk, q2.shape[1]
        s0, s1, k0, k1 = group
        S, Kg, K = s1 - s0, k1 - k0, chunks.shape[1]
        BH = q2.shape[0] // n
        self_score, masked = _fill_values(q2.dtype)
        qpos = chunks[s0:s1, k0:k1]  # (S, Kg, c) original position of each sorted slot
        # Keys: own chunk, then the previous chunk of the round (wrapping), (S, Kg, 2c); a
        # single chunk attends only itself.
        if K > 1:
            prev = chunks[s0:s1, k0 - 1 : k1 - 1] if k0 else torch.cat([chunks[s0:s1, -1:], chunks[s0:s1, : k1 - 1]], 1)
            kpos = torch.cat([qpos, prev], dim=-1)
        else:
            kpos = qpos
        width = kpos.shape[-1]

        with step_range("lsh.gather"):
            # Flat row indices into (B·h·n, d) sources; padding reads row n-1 and is masked.
            base = (torch.arange(s0, s1, device=q2.device).remainder(BH) * n).view(S, 1, 1)
            q_rows = (qpos.clamp(max=n - 1) + base).reshape(-1)
            k_rows = (kpos.clamp(max=n - 1) + base).reshape(-1)
            qs = q2.index_select(0, q_rows).view(S * Kg, c, d)
            ks = key_src.index_select(0, k_rows)
            if normalise:  # _keys on the gathered rows, in place
                ks.mul_(torch.rsqrt(ks.square().mean(dim=-1, keepdim=True) + LEN_NORM_EPS)).div_(math.sqrt(d))
            ks = ks.view(S * Kg, width, d)
            vs = v2.index_select(0, k_rows).view(S * Kg, width, d)
            del q_rows, k_rows

        with step_range("lsh.attention"):
            scores = torch.bmm(qs, ks.transpose(1, 2)).view(S, Kg, c, width)  # (S, Kg, c, 2c)
            del qs, ks
            if p.causal:  # later original positions; also covers padding (sentinel n)
                later = kpos.view(S, Kg, 1, width) > qpos.view(S, Kg, c, 1)
                scores = scores.masked_fill_(later, masked)
                del later
            elif K * c > n:  # padding sits in the last chunk's own half and the first's look-back
                real = n - (K - 1) * c  # real slots in the last chunk
                if k1 == K:
                    scores[:, -1, :, real:c] = masked
                if k0 == 0 and K > 1:
                    scores[:, 0, :, c + real :] = masked
            scores.diagonal(dim1=-2, dim2=-1).fill_(self_score)  # own position: own half's diagonal

            # Log-sum-exp softmax; the row max is a constant shift (detached, exact).
            m = scores.detach().amax(dim=-1, keepdim=True)  # (S, Kg, c, 1)
            e = scores.sub_(m).exp_()
            s = e.sum(dim=-1, keepdim=True)
            o = torch.bmm(e.view(S * Kg, c, width), vs).view(S, Kg, c, d)
            del e, vs
            o = o.div_(s) if normalise else o / s  # (S, Kg, c, d)
        return o, (m + s.log()).squeeze(-1), qpos

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
        return self.probabilities(q, k) @ v.to(torch.float64)

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, h, n, n) float64: count_ij·exp(s_ij) / Σ_j count_ij·exp(s_ij), s from shared QK
        (a query's own key scored SELF_SCORE), count the rounds that pair i and j; k unused."""
        count = self.pattern(q).to(torch.float64)
        qd = q.to(torch.float64)
        d = q.shape[-1]
        keys = qd / torch.sqrt(d * (qd.square().mean(dim=-1, keepdim=True) + LEN_NORM_EPS))  # unit length
        scores = qd @ keys.transpose(-1, -2)  # (B, h, n, n); no 1/√d, as Reformer
        scores.diagonal(dim1=-2, dim2=-1).fill_(SELF_SCORE)
        scores = scores.masked_fill(count == 0, float("-inf"))
        w = count * torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        return w / w.sum(dim=-1, keepdim=True)

    def reference_mask(self, n: int) -> Tensor:
        """An example pattern, (n, n) bool, for heatmaps: the pattern depends on the inputs,
        so this is the one of seeded Gaussian queries, one head at this shape's head_dim.
        Not the mask of any particular call; `reference` uses `pattern(q)`."""
        gen = torch.Generator().manual_seed(self.params.seed)
        q = torch.randn(1, 1, n, self.shape.head_dim, generator=gen, dtype=torch.float64)
        return self.pattern(q)[0, 0] > 0

    def input_pattern(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, h, n, n) bool: the keys some round lets each query see; the buckets come from q
        (shared QK), so the pattern is the inputs' own, not `reference_mask`'s example."""
        return self.pattern(q) > 0

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
    def _group_chunks(cls, params: LSHParams, shape: Shape, budget: int) -> tuple[int, int]:
        """(chunks in the largest group at this budget, keys per chunk)."""
        K, _, _ = cls._layout(params, shape)
        width = 2 * params.chunk if K > 1 else params.chunk
        per_group = max(1, budget // (params.chunk * width))
        return min(per_group, shape.batch * shape.heads * K), width

    @classmethod
    def working_bytes(cls, params: LSHParams, shape: Shape, itemsize: int) -> int:
        """The output and one group's scores and gathered queries, keys and values (a CPU's budget)."""
        c, d = params.chunk, shape.head_dim
        chunks, width = cls._group_chunks(params, shape, GROUP_SCORES)
        group = chunks * (c * width + (c + 2 * width) * d)
        return (shape.batch * shape.heads * shape.seq_len * d + group) * itemsize

    @classmethod
    def peak_bytes_estimate(
        cls, params: LSHParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        """Generous. Forward: the float32 hashing (a normalised copy of Q and the projection,
        n·Σf/2), the int64 buckets, sort and order, the result and its log-sum-exp, and one
        group (the larger budget, on any device): scores, gathered Q and 2c-wide K/V windows
        and the squares of K, outputs, int64 indices, the causal mask. Train runs one group:
        scores, gathered copies and per-round outputs twice (sorted, unsorted) for all rounds. An
        exported graph (ONNX Runtime, torch-xla: `sdpa.graph`) has no groups: every chunk at once."""
        B, h, n, d, c = shape.batch, shape.heads, shape.seq_len, shape.head_dim, params.chunk
        K, npad, rot = cls._layout(params, shape)
        rows = B * h * params.hashes * npad
        hashing = B * h * n * (rot // 2 + d) * 4 * 2
        if not train and not sdpa.graph:
            chunks, width = cls._group_chunks(params, shape, max(GROUP_SCORES, GROUP_SCORES_ACCELERATOR))
            group = chunks * (c * width + (2 * c + 3 * width) * d) * itemsize
            group += chunks * ((c + 2 * width) * 8 * 2 + c * width)
            result = B * h * (n + 1) * (d + 1) * itemsize
            return 2 * (hashing + rows * 8 * 4 + result + group)
        width = 2 * c if K > 1 else c
        floats = rows * (2 * width + 2 * width * d // c + 4 * d) + B * h * n * d
        ints = rows * (2 + width // c) * 8 + rows * width  # indices, causal mask
        forward = floats * itemsize + ints + B * h * n * (rot // 2) * 4 * 2
        if not train:  # an exported graph (the export path) holds every chunk at once, without autograd
            return 2 * forward
        inputs = 3 * B * h * n * d * itemsize
        return 4 * forward + 2 * inputs
