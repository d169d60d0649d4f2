"""Longformer sliding-window attention: a band of W keys per query, plus g global tokens.

Definition (what `reference_mask` returns, and what the forward computes):

- Band: query i attends key j = i + k·r for every integer |k| ≤ W/2, r the dilation:
  W + 1 keys including itself (fewer at the ends), reaching ±r·W/2. As in the Longformer
  paper ("increase the receptive field without increasing computation") and allenai's
  kernel (key i + d·(j − w)), dilation keeps the key count and multiplies the reach:
  W = 16, r = 2 is 17 keys within ±16.
- Causal: only keys j ≤ i are kept, everywhere (band and global).
- Global: the first g positions attend every key, and every query attends them.
- A row always holds at least its own position.

Blocking scheme. Each of the r interleaved subsequences i ≡ c (mod r) holds an
undilated band of half-width w' = W/2 (a dilated band is exactly that), so the
subsequences are folded into the batch dimension: (B, h, n, d) -> (B·h·r, m, d) with
m = ⌈n/r⌉, padded to a multiple of the block b. Queries are cut into blocks of b; block t
sees the (2a + 1)·b keys of blocks t−a .. t+a ("look-around"), which cover its whole band
when a·b ≥ w'. The wider the blocks, the more of the window is masked: a = ⌊w'/BLOCK⌋
blocks either side of b = ⌈w'/a⌉ queries (BLOCK = 64; the default W = 512 gives b = 64,
a = 4, 576 keys for a band of 513, where blocks of w' would score 768), or a = 1 and b = w'
for narrower bands; a subsequence no longer than w' is one block of m. Out-of-band,
out-of-sequence and padded keys get a large negative bias (finite, so padded query rows
never turn into NaN that backward would spread to real keys).

Groups. Without autograd the blocks are taken in groups of at most ``GROUP_SCORES``
score elements (``GROUP_SCORES_ACCELERATOR`` off the CPU): as many whole subsequences as
fit, or a run of blocks of one. A group's look-around windows are overlapping strided
views (`Tensor.unfold`) of its rows of K and V plus one block either side, so one
batched matmul scores its blocks (blocks, b, (2a + 1)·b) without copying K or V 2a + 1 times;
without dilation or padding those rows are the inputs' own (a view; the first and last
group get a zero block), otherwise they are gathered for the group. The bias, the scale
and the softmax are applied in place on the group's score buffer, and its output is
written into one folded result: the forward holds one group's scores at a time, whatever
n and B·h. With autograd the whole sequence is one group, as it was before groups: the
saved activations grow with n anyway, and each group's slice of the inputs would cost a
full-size gradient buffer in backward.

Global tokens. Every query also scores the g global keys, (n, g) extra columns whose
bias hides keys already in its band (nothing counted twice) and, when causal, keys
after the query. The band is normalised by the fused softmax alone; its log-sum-exp is
recovered from two cheap row maxima (lse = max(s) − log(max(softmax(s))), since the
largest probability is exp(0)/Z) and merged with the global columns' log-sum-exp, which
rescales the band output: no concatenated score buffer. The g global query rows are
then computed densely against all n keys, (g, n) scores, linear in n, and replace the
band result for those rows.

Export. Under ``torch.compiler.is_exporting()`` (torch.export, and so torch.onnx with
dynamo, which the ``onnxruntime`` backend uses) the forward takes ``_forward_export``: the
same function as one graph valid at every length, the sequence length being a symbolic
dimension. The eager kernel's choices that depend on n would be baked in or fail there (the
block min(W/2, m), the group count and its Python loop, the padding and view branches, writes
into slices), so the export path uses the block b = W/2 at every length, at least 2 blocks per
subsequence (a traced count of 1 would be specialised), and builds every operand by gathers
from index arithmetic (positions past n clamped, then masked or dropped): (blocks, b, 3b) band
scores with additive band and edge biases, the (blocks, b, g) global columns under one
normalisation with them, the (g, n) global rows, all blocks at once. Memory is O(n·(1.5W + g))
for the scores, never (n, n); the eager path's one-group bound does not hold there.

Global projections (layer scope). The paper, and allenai's ``LongformerSelfAttention``
(``query_global``, ``key_global``, ``value_global``), give the global attention its own
projections: the g global rows are softmax(Q_g·K_gᵀ/√d)·V_g with Q_g projected from the g
global tokens and K_g, V_g from all n tokens, while the band and the global columns (every
token attending the global tokens) use the ordinary q, k and v. With g > 0 the layer scope
builds ``LongformerLayer``, the pre-norm layer plus those projections (Q_g: D → D on g
rows, K_g and V_g: one fused D → 2D on n rows), and hands (Q_g, K_g, V_g) to the core for
the global rows. The core scope receives one q, k, v and uses them for the global rows too
(there is nothing to project there). ``LongformerLayer`` is not a ``PreNormLayer`` subclass,
so transforms that rebuild a pre-norm layer head by head (prune_heads, distill) refuse it
rather than drop the global projections.

Costs (forward, 2 FLOPs per multiply-add, D = h·d):

- `flops` (useful) = 4·B·D·P, with P the exact number of allowed (query, key) pairs of
  the mask, in closed form (edge rows, dilation, causality and globals included). For
  n ≫ r·W, non-causal (any dilation r) it tends to docs/cost-model.md's 4nD(W+1) + 8gnD.
- `executed_flops` = 4·B·D·(r·m_pad·((2a + 1)·b + g) + g·n): every padded query row times
  its look-around keys (1.125× the band at W = 512) and the g global columns, plus the dense global
  rows. Softmax and masking are not counted (only matmuls are, as for the dense ones).
  Groups do not change either count.
- `working_bytes` = the output, one group's scores at a CPU's budget and the global rows'
  (g, n) scores; `peak_bytes_estimate` (forward) counts one group at the larger budget.
- `case_flops`, layer scope with g > 0: the pre-norm layer's (docs/cost-model.md) plus the
  global projections, B·(4·n·D² + 2·g·D²) (K_g and V_g over n tokens, Q_g over g), useful
  and executed alike. `case_min_bytes` and `case_peak_estimate` add their outputs, B·(2n + g)·D
  elements, and their weights, 3·D².

Case identity: `definition_revision` is 2 for every case with dilation > 1 (dilation was
redefined as the paper's) and for layer-scope cases with g > 0 (the global projections);
their case ids differ from the ones measured before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.registry import register_workload
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.base import (
    TRAIN_FLOP_FACTOR_LINEAR,
    AttentionVariant,
    Shape,
    require_int,
    step_range,
)
from attnbench.workloads.layer import PreNormLayer

# Bias for masked scores: finite so a fully masked (padding) row gives no NaN, yet
# exp(NEG - max) is exactly 0 for any real score, even added up to three times.
NEG = -1.0e30
LOW_PRECISION = (torch.float16, torch.bfloat16)
# Score elements per group of query blocks, over every head and subsequence in the group:
# without autograd the forward holds one group's scores at a time, whatever n and B·h. On a
# CPU 8 MiB of float32 scores: 2560 query rows per batched product at the default window
# (thousands of rows keep the products efficient) and few enough groups that their Python
# overhead is noise. On an accelerator 64 MiB, so that each group's kernels outlast their launches.
GROUP_SCORES = 1 << 21
GROUP_SCORES_ACCELERATOR = 1 << 24
# Query block length the eager kernel aims for when the band is wider: a block's window is
# (2a + 1)·b keys for a band of W + 1, so smaller blocks waste less (W = 512: 1.125× the band
# with b = 64, against 1.5× with b = W/2), while blocks of 64 rows keep each product efficient.
BLOCK = 64


@dataclass(frozen=True)
class SlidingWindowParams:
    window: int = 512
    global_tokens: int = 0
    dilation: int = 1
    causal: bool = False

    def __post_init__(self) -> None:
        require_int("window", self.window, 2)
        if self.window % 2:
            raise ValueError(f"window must be even (two-sided, W/2 each side), got {self.window}")
        require_int("dilation", self.dilation, 1)
        require_int("global_tokens", self.global_tokens, 0)


@dataclass(frozen=True)
class _Layout:
    """How a length-n sequence is folded into blocks."""

    n: int
    r: int  # dilation: interleaved subsequences folded into the batch
    half: int  # w' = half-width of the band inside one subsequence
    b: int  # block length
    nb: int  # blocks per subsequence
    g: int  # global tokens actually present (≤ n)
    a: int = 1  # look-around: blocks either side of a query block that its window spans

    @property
    def m_pad(self) -> int:
        return self.nb * self.b

    @property
    def span(self) -> int:
        """Keys in one query block's window: its own block and a blocks either side."""
        return (2 * self.a + 1) * self.b


def _layout(p: SlidingWindowParams, n: int) -> _Layout:
    r = p.dilation
    half = p.window // 2  # the band inside one subsequence: W/2 neighbours each side
    m = -(-n // r)  # longest subsequence
    if m <= half:  # one block holds the whole subsequence
        a, b = 1, max(1, m)
    else:  # blocks of about BLOCK rows: a window of (2a + 1)·b ≥ W + 1 keys wastes b·(2a + 1) − W − 1
        a = max(1, half // BLOCK)
        b = -(-half // a)
    return _Layout(n=n, r=r, half=half, b=b, nb=-(-m // b), g=min(p.global_tokens, n), a=a)


def _tri(c: int, r: int, k_max: int) -> int:
    """Σ_{k=1..K} (c − k·r) over the k ≤ k_max with c − k·r > 0."""
    k = min(k_max, (c - 1) // r) if c > 0 else 0
    return k * c - r * k * (k + 1) // 2 if k > 0 else 0


def allowed_pairs(p: SlidingWindowParams, n: int) -> int:
    """The number of True entries of the (n, n) mask, in closed form."""
    r, kmax = p.dilation, p.window // 2
    g = min(p.global_tokens, n)
    band = n + (1 if p.causal else 2) * _tri(n, r, kmax)  # diagonal plus offsets ±k·r
    if g == 0:
        return band
    # Causal band pairs with key j < g: offset k·r (k = 0..K) for every j < g with j + k·r < n.
    k2 = min(kmax, (n - g) // r)
    band_keys_below_g = (k2 + 1) * g + _tri(n, r, kmax) - _tri(n, r, k2)
    if p.causal:
        # global rows (j ≤ i) + band rows below them + global columns not in the band
        return g * (g + 1) // 2 + band + (n - g) * g - band_keys_below_g
    rows_below_g = band_keys_below_g + _tri(g, r, kmax)  # band pairs with i < g (symmetric)
    band_within_g = g + 2 * _tri(g, r, kmax)
    return g * n + (band - rows_below_g) + (n - g) * g - (rows_below_g - band_within_g)


def _in_band(i: Tensor, j: Tensor, p: SlidingWindowParams) -> Tensor:
    diff = i - j
    ok = (diff.abs() <= (p.window // 2) * p.dilation) & (diff % p.dilation == 0)
    return ok & (diff >= 0) if p.causal else ok


@register_workload
class SlidingWindowAttention(AttentionVariant):
    """Longformer attention: W-key band (optionally dilated, causal) plus g global tokens.

    Never builds an (n, n) tensor: without autograd the largest scratch is one group's
    scores (``GROUP_SCORES`` elements), with autograd the (n, (2a + 1)·b + g) score buffer per
    head (see the module docstring for the blocking scheme, the groups and the cost formulas).
    """

    name: ClassVar[str] = "sparse.sliding_window"
    family: ClassVar[str] = "sparse"
    summary: ClassVar[str] = "Longformer: band of W keys (dilation, causal) plus g global tokens, blocked look-around"
    Params: ClassVar[type] = SlidingWindowParams
    subquadratic: ClassVar[bool] = True

    # --- definition -------------------------------------------------------------------------
    def reference_mask(self, n: int) -> Tensor:
        p = self.params
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        g = p.global_tokens
        allowed = _in_band(i, j, p) | (i < g) | (j < g)
        if p.causal:
            allowed &= j <= i
        return allowed

    @classmethod
    def definition_revision(cls, params: dict[str, Any], scope: str) -> int:
        # Dilation now follows the paper (W + 1 keys r apart); the layer scope's global rows
        # now come from their own projections. Both change what those cases compute.
        if params.get("dilation", 1) > 1 or (scope == "layer" and params.get("global_tokens", 0) > 0):
            return 2
        return 1

    # --- forward ------------------------------------------------------------------------------
    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, global_qkv: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> Tensor:
        """(B, h, n, d) x3 -> (B, h, n, d). `global_qkv` = (Q_g (B, h, g, d), K_g, V_g (B, h, n, d)),
        the global projections the layer scope passes: the g global rows then attend with
        them instead of q, k, v (the band and the global columns always use q, k, v)."""
        if torch.compiler.is_exporting():  # torch.export / torch.onnx: a graph valid at every length
            return self._forward_export(q, k, v, global_qkv)
        B, h, n, d = q.shape
        lay = _layout(self.params, n)
        b, g = lay.b, lay.g
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        seqs = B * h * lay.r  # subsequences, each nb blocks of b folded rows
        src = tuple(t.reshape(B * h * n, d) for t in (q, k, v))  # views of contiguous inputs
        band_bias, edge_bias = self._band_bias(lay, q.device)
        if q.dtype not in LOW_PRECISION:
            band_bias = band_bias.to(q.dtype)
        glob = None
        if g:  # the g global keys and values of every head, and their bias per folded row
            kv = (t[:, :, :g].reshape(B * h, g, d) for t in (k, v))
            glob = (*kv, self._global_column_bias(lay, q.device).view(lay.r, lay.m_pad, g))
        if grad:
            # One group: the saved activations grow with n whatever the grouping, and each
            # group's slice of the inputs would cost a full-size gradient buffer in backward.
            groups: tuple[tuple[int, int, int, int], ...] = ((0, seqs, 0, lay.nb),)
        else:
            budget = GROUP_SCORES if q.device.type == "cpu" else GROUP_SCORES_ACCELERATOR
            groups = _groups(seqs, lay.nb, max(1, budget // (b * (lay.span + g))))
        folded = None
        # Several groups, no autograd, no globals, the inputs' own dtype: each group's P·V product
        # is written straight into the folded result (a copy of every output row less).
        direct = (
            len(groups) > 1
            and not grad
            and glob is None
            and q.dtype not in LOW_PRECISION
            and not torch.is_autocast_enabled(q.device.type)
        )
        if direct:
            folded = q.new_empty(seqs * lay.nb, b, d)
        for group in groups:
            s0, s1, t0, t1 = group
            dest = folded[s0 * lay.nb + t0 : (s1 - 1) * lay.nb + t1] if direct else None
            res = self._group(src, lay, group, band_bias, edge_bias, glob, not grad, dest)  # (blocks, b, d)
            if len(groups) == 1:
                folded = res
            elif not direct:  # the folded result, written group by group (in the products' dtype: autocast's)
                folded = res.new_empty(seqs * lay.nb, b, d) if folded is None else folded
                folded[s0 * lay.nb + t0 : (s1 - 1) * lay.nb + t1] = res
            del res

        with step_range("sliding_window.unfold"):
            out = _unfold(folded, lay, B, h, n, d)  # (B, h, n, d)
        if g:
            qg, kg, vg = (q[:, :, :g], k, v) if global_qkv is None else global_qkv
            with step_range("sliding_window.global_rows"):
                rows = self._global_rows(qg, kg, vg, lay)
                if grad:
                    return torch.cat([rows, out[:, :, g:]], dim=2)
                out[:, :, :g] = rows
        return out

    def _forward_export(
        self, q: Tensor, k: Tensor, v: Tensor, global_qkv: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> Tensor:
        """The same function for an exported graph with a symbolic length n (see "Export" above)."""
        p = self.params
        B, h, n, d = q.shape
        r, b, G = p.dilation, p.window // 2, p.global_tokens
        dtype, dev = q.dtype, q.device
        low = dtype in LOW_PRECISION
        scale = 1.0 / math.sqrt(d)
        # Blocks per subsequence, at least 2: a traced count of 1 would be specialised (size-1
        # dimensions are), fixing the graph to n ≤ r·b; a second block is then all padding.
        nb = torch.sym_max((n + r * b - 1) // (r * b), 2)
        # Every tensor is indexed by block, block-major (block t of all B·h·r subsequences, then
        # t + 1), and built by gathers from index arithmetic with constant divisors: no padding,
        # reshape or division by a symbolic size, which the exporter cannot do without guards on n.
        S = B * h * r  # subsequences
        blk = torch.arange(S * nb, device=dev)[:, None]
        zc, t = blk % S, blk // S  # subsequence (head zc // r, residue zc % r) and block: (blocks, 1)
        z, c = zc // r, zc % r
        a = torch.arange(b, device=dev)
        slot = torch.arange(3 * b, device=dev)
        q_pos = (t * b + a) * r + c  # (blocks, b) positions of the block's queries
        k_sub = t * b - b + slot  # (blocks, 3b): blocks t−1, t, t+1 inside the subsequence
        k_pos = k_sub * r + c
        q3, k3, v3 = (x.reshape(B * h, n, d) for x in (q, k, v))
        kc = k_pos.clamp(0, n - 1)  # past either end: masked keys (and dropped queries below)
        qf, kf, vf = q3[z, q_pos.clamp(max=n - 1)], k3[z, kc], v3[z, kc]  # (blocks, b or 3b, d)
        # Masks as additive biases: the band's (b, 3b), the same for every block, and the keys
        # before a subsequence's start or past n, per block (blocks, 1, 3b); broadcast adds, no
        # (blocks, b, 3b) mask (ONNX Runtime's broadcasting Where is several times slower).
        offset = slot - b - a[:, None]  # (b, 3b) key − query inside a subsequence
        band = offset.abs() <= b
        if p.causal:
            band &= offset <= 0
        band_bias = torch.zeros(b, 3 * b, device=dev).masked_fill(~band, NEG)
        edge_bias = torch.zeros(k_pos.shape, device=dev).masked_fill((k_sub < 0) | (k_pos >= n), NEG)[:, None, :]
        scores = torch.bmm(qf, kf.transpose(1, 2))  # (blocks, b, 3b)
        scores = (scores.float() if low else scores) * scale + band_bias + edge_bias
        if G == 0:
            probs = torch.softmax(scores, -1)
            out = torch.bmm(probs.to(dtype) if low else probs, vf)  # (blocks, b, d)
        else:
            # Global keys j < G (clamped rows past n are masked): every query scores them, unless
            # in its band (already scored) or, when causal, after it; one normalisation for both.
            cols = torch.arange(G, device=dev)
            gc = cols.clamp(max=n - 1)
            kg, vg = k3[z, gc], v3[z, gc]  # (blocks, G, d)
            s_g = torch.bmm(qf, kg.transpose(1, 2))  # (blocks, b, G)
            s_g = s_g.float() * scale if low else s_g * scale
            i = q_pos[..., None]
            keep = ~_in_band(i, cols, p) & (cols < n)
            if p.causal:
                keep &= cols <= i
            s_g = s_g.masked_fill(~keep, NEG)
            top = torch.maximum(scores.amax(-1, keepdim=True), s_g.amax(-1, keepdim=True))
            e, e_g = (scores - top).exp(), (s_g - top).exp()
            total = e.sum(-1, keepdim=True) + e_g.sum(-1, keepdim=True)
            if low:
                e, e_g = e.to(dtype), e_g.to(dtype)
            out = torch.bmm(e, vf) + torch.bmm(e_g, vg)
            out = (out.float() / total).to(dtype) if low else out / total
        # Back to (B, h, n, d): the folded row of position p of head z.
        pos = torch.arange(n, device=dev)
        sub = pos // r
        block = (sub // b) * S + torch.arange(B * h, device=dev)[:, None] * r + pos % r  # (B·h, n)
        out = out[block, sub % b].view(B, h, n, d)
        if G == 0:
            return out
        # The G global rows against every key; rows past n (clamped copies) are never selected.
        qg, kr, vr = (q.index_select(2, cols.clamp(max=n - 1)), k, v) if global_qkv is None else global_qkv
        g_out = self._global_rows_export(qg, kr, vr, n)  # (B, h, G, d)
        return torch.where((pos < G)[:, None], g_out.index_select(2, pos.clamp(max=G - 1)), out)

    def _global_rows_export(self, qg: Tensor, k: Tensor, v: Tensor, n: Any) -> Tensor:
        """`_global_rows` with a static row count G (rows past n included) and a symbolic n."""
        s = torch.matmul(qg, k.transpose(-1, -2))  # (B, h, G, n)
        if qg.dtype in LOW_PRECISION:
            s = s.float()
        s = s * (1.0 / math.sqrt(qg.shape[-1]))
        if self.params.causal:
            i = torch.arange(qg.shape[2], device=qg.device)[:, None]
            j = torch.arange(n, device=qg.device)[None, :]
            s = s.masked_fill(j > i, float("-inf"))  # every global row keeps its own key, or all keys past n
        return torch.matmul(torch.softmax(s, -1).to(qg.dtype), v)

    def _group(
        self,
        src: tuple[Tensor, Tensor, Tensor],
        lay: _Layout,
        group: tuple[int, int, int, int],
        band_bias: Tensor,
        edge_bias: Tensor,
        glob: tuple[Tensor, Tensor, Tensor] | None,
        inplace: bool,
        dest: Tensor | None = None,
    ) -> Tensor:
        """Query blocks t0..t1−1 of subsequences s0..s1−1, (blocks, b, d) in folded order, into
        `dest` when given (no globals, no autograd). src: q, k, v as (B·h·n, d)."""
        q2, k2, v2 = src
        s0, s1, t0, t1 = group
        b, d, dtype = lay.b, q2.shape[1], q2.dtype
        low = dtype in LOW_PRECISION
        lo, hi = s0 * lay.m_pad + t0 * b, (s1 - 1) * lay.m_pad + t1 * b  # the group's folded rows
        blocks = (hi - lo) // b

        with step_range("sliding_window.fold"):
            qr = _rows(q2, lay, lo, hi)  # (hi − lo, d)
            # Keys and values a blocks either side: block t's window is blocks t−a .. t+a, an
            # overlapping strided view (no copy) of the group's rows.
            span, around = lay.span, lay.a * b
            k_win = _rows(k2, lay, lo - around, hi + around).unfold(0, span, b)  # (blocks, d, span)
            v_win = _rows(v2, lay, lo - around, hi + around).unfold(0, span, b).transpose(1, 2)  # (blocks, span, d)
        qb = qr.view(blocks, b, d)

        with step_range("sliding_window.scores"):
            scale = 1.0 / math.sqrt(d)
            if low:  # scores in the input precision, masking and softmax in float32 (as Longformer)
                scores = torch.bmm(qb, k_win).float().mul_(scale).add_(band_bias)
            else:
                scores = torch.baddbmm(band_bias, qb, k_win, alpha=scale)  # (blocks, b, span)
            s4 = scores.view(s1 - s0, t1 - t0, b, span)
            # Keys before the start or past the end of each subsequence: only in its first a and
            # last a + 1 blocks.
            edge = _of_residues(edge_bias[:, t0:t1], s0, s1, lay.r)  # (subsequences or 1, t1 − t0, 1, span)
            head = min(lay.a, t1) - t0
            if head > 0:
                s4[:, :head].add_(edge[:, :head])
            tail = max(t0, lay.a, lay.nb - lay.a - 1) - t0
            if tail < t1 - t0:
                s4[:, tail:].add_(edge[:, tail:])

        if glob is None:
            with step_range("sliding_window.softmax"):
                probs = torch.softmax(scores, -1, out=scores) if inplace else torch.softmax(scores, -1)
            with step_range("sliding_window.output"):
                if dest is not None:
                    return torch.bmm(probs, v_win, out=dest)
                return torch.bmm(probs.to(dtype) if low else probs, v_win)  # (blocks, b, d)
        with step_range("sliding_window.global_keys"):
            return self._with_global_keys(scores, qr.view(s1 - s0, -1, d), v_win, glob, lay, group, inplace)

    def _band_bias(self, lay: _Layout, device: torch.device) -> tuple[Tensor, Tensor]:
        """(b, span) band pattern, the same for every block; (r, nb, 1, span) key validity."""
        b, around = lay.b, lay.a * lay.b
        a = torch.arange(b, device=device)[:, None]
        c = torch.arange(lay.span, device=device)[None, :]
        offset = c - around - a  # key position − query position, inside one subsequence
        ok = offset.abs() <= lay.half
        if self.params.causal:
            ok &= offset <= 0
        band = torch.zeros(b, lay.span, device=device).masked_fill_(~ok, NEG)
        res = torch.arange(lay.r, device=device)[:, None, None]
        length = torch.div(lay.n - res + lay.r - 1, lay.r, rounding_mode="floor")  # real tokens per residue
        t = torch.arange(lay.nb, device=device)[None, :, None]
        key = t * b + c[None] - around  # (1, nb, span) key position of each window slot
        valid = (key >= 0) & (key < length)  # (r, nb, span)
        edge = torch.zeros(valid.shape, device=device).masked_fill_(~valid, NEG)
        return band, edge[:, :, None, :]

    def _with_global_keys(
        self,
        scores: Tensor,
        qr: Tensor,
        v_win: Tensor,
        glob: tuple[Tensor, Tensor, Tensor],
        lay: _Layout,
        group: tuple[int, int, int, int],
        inplace: bool,
    ) -> Tensor:
        """Band and global-key columns normalised together; (blocks, b, d). qr (S, rows, d):
        the group's query rows of each of its S subsequences (all of them, or one run)."""
        s0, s1, t0, t1 = group
        kg, vg = (_of_heads(t, s0, s1, lay.r) for t in glob[:2])  # (S, g, d)
        bias = _of_residues(glob[2][:, t0 * lay.b : t1 * lay.b], s0, s1, lay.r)  # (S or 1, rows, g)
        S, _, d = qr.shape
        g, b, dtype = kg.shape[1], lay.b, qr.dtype
        low = dtype in LOW_PRECISION
        s_g = torch.bmm(qr, kg.transpose(1, 2))  # (S, rows, g)
        if low:
            s_g = s_g.float()
        s_g = s_g.mul_(1.0 / math.sqrt(d)).add_(bias)
        s_g = s_g.view(scores.shape[0], b, g)
        # The band is normalised on its own by the fused softmax (in place without autograd);
        # its log-sum-exp comes back for free: the largest probability of a row is exp(0)/Z.
        top = scores.amax(-1, keepdim=True)  # (blocks, b, 1)
        probs = torch.softmax(scores, -1, out=scores) if inplace else torch.softmax(scores, -1)
        lse_band = top - probs.amax(-1, keepdim=True).log()
        lse = torch.logaddexp(lse_band, torch.logsumexp(s_g, -1, keepdim=True))
        e_g = (s_g - lse).exp()  # (blocks, b, g), already normalised
        if low:
            probs, e_g = probs.to(dtype), e_g.to(dtype)
        out = torch.bmm(probs, v_win)  # (blocks, b, d), normalised over the band only
        glob_out = torch.bmm(e_g.view(S, -1, g), vg).view_as(out)
        if low:
            return (out.float() * (lse_band - lse).exp() + glob_out.float()).to(dtype)
        return out * (lse_band - lse).exp() + glob_out

    def _global_column_bias(self, lay: _Layout, device: torch.device) -> Tensor:
        """(r·m_pad, g): query rows in folded order against the g global keys."""
        p = self.params
        res = torch.arange(lay.r, device=device)[:, None]
        pos = torch.arange(lay.m_pad, device=device)[None, :]
        i = (pos * lay.r + res).reshape(-1, 1)  # original position of each folded row
        j = torch.arange(lay.g, device=device)[None, :]
        ok = ~_in_band(i, j, p)  # band keys are already scored by the band
        if p.causal:
            ok &= j <= i
        return torch.zeros(ok.shape, device=device).masked_fill_(~ok, NEG)

    def _global_rows(self, qg: Tensor, k: Tensor, v: Tensor, lay: _Layout) -> Tensor:
        """The g global queries (B, h, g, d) against every key: (B, h, g, d), (g, n) scores."""
        g, n, dtype = lay.g, lay.n, qg.dtype
        s = qg @ k.transpose(-1, -2)  # (B, h, g, n)
        if dtype in LOW_PRECISION:
            s = s.float()
        s = s * (1.0 / math.sqrt(qg.shape[-1]))
        if self.params.causal:
            i = torch.arange(g, device=qg.device)[:, None]
            j = torch.arange(n, device=qg.device)[None, :]
            s = s.masked_fill(j > i, float("-inf"))  # every global row keeps its own key
        return torch.softmax(s, -1).to(dtype) @ v

    # --- the layer scope: Longformer's global projections ------------------------------------------
    @classmethod
    def build(cls, params: SlidingWindowParams, shape: Shape, scope: str) -> nn.Module:
        if scope == "layer" and params.global_tokens > 0:
            return LongformerLayer(cls(params, shape), shape)
        return super().build(params, shape, scope)

    @classmethod
    def global_projection_flops(cls, params: SlidingWindowParams, shape: Shape) -> float:
        """Q_g over the g global tokens, K_g and V_g over all n, 2 FLOPs per multiply-add, over the batch."""
        n, D = shape.seq_len, shape.model_dim
        g = min(params.global_tokens, n)
        return float(shape.batch * (4 * n + 2 * g) * D * D) if g else 0.0

    @classmethod
    def case_flops(
        cls, params: SlidingWindowParams, shape: Shape, scope: str, mode: str, executed: bool = False
    ) -> float:
        base = super().case_flops(params, shape, scope, mode, executed)
        if scope != "layer":
            return base
        extra = cls.global_projection_flops(params, shape)
        return base + extra * (TRAIN_FLOP_FACTOR_LINEAR if mode == "train" else 1)

    @classmethod
    def _global_projection_bytes(cls, params: SlidingWindowParams, shape: Shape, itemsize: int) -> tuple[int, int]:
        """(Q_g, K_g and V_g outputs, their weights) in bytes; 0 without global tokens."""
        n, D = shape.seq_len, shape.model_dim
        g = min(params.global_tokens, n)
        if not g:
            return 0, 0
        return shape.batch * (2 * n + g) * D * itemsize, 3 * D * D * itemsize

    @classmethod
    def case_min_bytes(cls, params: SlidingWindowParams, shape: Shape, scope: str, itemsize: int) -> int:
        base = super().case_min_bytes(params, shape, scope, itemsize)
        if scope != "layer":
            return base
        return base + cls._global_projection_bytes(params, shape, itemsize)[0]

    @classmethod
    def case_peak_estimate(
        cls, params: SlidingWindowParams, shape: Shape, scope: str, itemsize: int, mode: str, sdpa: SdpaChoice = MATH
    ) -> int:
        base = super().case_peak_estimate(params, shape, scope, itemsize, mode, sdpa)
        if scope != "layer":
            return base
        train = mode == "train"
        outputs, weights = cls._global_projection_bytes(params, shape, itemsize)
        return base + outputs * (2 if train else 1) + weights * (3 if train else 1)

    # --- analytic cost ---------------------------------------------------------------------------
    @classmethod
    def flops(cls, params: SlidingWindowParams, shape: Shape) -> float:
        return 4.0 * allowed_pairs(params, shape.seq_len) * shape.model_dim * shape.batch

    @classmethod
    def executed_flops(cls, params: SlidingWindowParams, shape: Shape) -> float:
        lay = _layout(params, shape.seq_len)
        pairs = lay.r * lay.m_pad * (lay.span + lay.g) + lay.g * shape.seq_len
        return 4.0 * pairs * shape.model_dim * shape.batch

    @classmethod
    def _group_scores(cls, params: SlidingWindowParams, shape: Shape, budget: int) -> int:
        """Score elements of the largest group at this budget (band and global columns)."""
        lay = _layout(params, shape.seq_len)
        per_block = lay.b * (lay.span + lay.g)
        blocks = shape.batch * shape.heads * lay.r * lay.nb
        return min(blocks, max(1, budget // per_block)) * per_block

    @classmethod
    def working_bytes(cls, params: SlidingWindowParams, shape: Shape, itemsize: int) -> int:
        # The output, one group's scores (a CPU's budget) and the global rows' (g, n) scores.
        n = shape.seq_len
        bh = shape.batch * shape.heads
        g = min(params.global_tokens, n)
        group = cls._group_scores(params, shape, GROUP_SCORES)
        return (bh * n * shape.head_dim + group + bh * g * n) * itemsize

    @classmethod
    def peak_bytes_estimate(
        cls, params: SlidingWindowParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        lay = _layout(params, shape.seq_len)
        bh, d = shape.batch * shape.heads, shape.head_dim
        wide = max(itemsize, 4)  # low precision scores are masked and normalised in float32
        # The folded output with its padding, the dilated result's copy, copies of strided inputs.
        io_bytes = bh * (lay.r * lay.m_pad + 2 * lay.a * lay.b) * d * itemsize
        global_rows = bh * lay.g * shape.seq_len * wide  # their scores; masked and normalised copies
        if not train and not sdpa.graph:
            # One group at a time (the larger budget, on any device): its scores and their
            # float32 copy, its gathered queries, keys and values, its result; with slack.
            group = cls._group_scores(params, shape, max(GROUP_SCORES, GROUP_SCORES_ACCELERATOR))
            rows = group // (lay.span + lay.g)
            group_bytes = group * (wide + itemsize) + (4 * rows + 4 * lay.a * lay.b) * d * itemsize
            return 6 * io_bytes + 2 * (group_bytes + 3 * global_rows)
        # Autograd runs one group and keeps its activations, and an exported graph (the export
        # path) has no groups: every block's scores at once.
        score_bytes = bh * lay.r * lay.m_pad * (lay.span + lay.g) * wide + global_rows
        forward = 2 * score_bytes + 8 * io_bytes
        if not train:
            return 2 * forward
        inputs = 3 * bh * shape.seq_len * d * itemsize
        return 2 * forward + 2 * inputs


class LongformerLayer(nn.Module):
    """The pre-norm layer (workloads/layer.py) with Longformer's global projections.

    As allenai's ``LongformerSelfAttention``: the band and the global columns use the layer's
    q, k, v; the g global rows use Q_g = query_global(LN(x)[:g]) against K_g, V_g =
    key_global, value_global(LN(x)) over all n tokens (K_g and V_g fused in one D → 2D
    projection, as the layer fuses QKV). Everything else is the wrapped PreNormLayer's.
    """

    def __init__(self, attention: SlidingWindowAttention, shape: Shape) -> None:
        super().__init__()
        D = shape.model_dim
        self.heads, self.head_dim = shape.heads, shape.head_dim
        self.layer = PreNormLayer(attention, shape)
        self.query_global = nn.Linear(D, D)
        self.kv_global = nn.Linear(D, 2 * D)

    def forward(self, x: Tensor) -> Tensor:
        B, n, D = x.shape
        h, d, layer = self.heads, self.head_dim, self.layer
        g = min(layer.attention.params.global_tokens, n)
        with step_range("layer.qkv"):
            hidden = layer.norm1(x)  # (B, n, D)
            qkv = layer.qkv(hidden).view(B, n, 3, h, d)  # (B, n, 3, h, d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, n, d)
        with step_range("layer.global_qkv"):
            if torch.compiler.is_exporting():  # G rows whatever n (rows past n are never used): no guard on n
                g = layer.attention.params.global_tokens
                first = hidden.index_select(1, torch.arange(g, device=x.device).clamp(max=n - 1))
            else:
                first = hidden[:, :g]
            qg = self.query_global(first).view(B, g, h, d).transpose(1, 2)  # (B, h, g, d)
            kv = self.kv_global(hidden).view(B, n, 2, h, d)  # (B, n, 2, h, d)
            kg, vg = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, n, d)
        with step_range("layer.attention"):
            a = layer.attention(q, k, v, global_qkv=(qg, kg, vg)).transpose(1, 2).reshape(B, n, D)  # (B, n, D)
        with step_range("layer.proj"):
            x = x + layer.proj(a)
        with step_range("layer.ffn"):
            return x + layer.ffn(layer.norm2(x))


def _groups(seqs: int, blocks: int, per_group: int) -> tuple[tuple[int, int, int, int], ...]:
    """Groups of query blocks sharing one score buffer, (first, end subsequence, first, end block):
    as many whole subsequences as fit in `per_group` blocks, or runs of `per_group` blocks of one."""
    if per_group >= blocks:
        step = per_group // blocks
        return tuple((s, min(s + step, seqs), 0, blocks) for s in range(0, seqs, step))
    return tuple((s, s + 1, t, min(t + per_group, blocks)) for s in range(seqs) for t in range(0, blocks, per_group))


def _rows(x: Tensor, lay: _Layout, lo: int, hi: int) -> Tensor:
    """Folded rows lo..hi−1 of x = (B·h·n, d), as (hi − lo, d).

    Folded row (z·r + c)·m_pad + t holds position t·r + c of head z. Rows that hold no
    position (padding past a subsequence's end, or before the first row and after the last)
    are zero without dilation or padding, and some real row otherwise: they are only ever
    masked keys or dropped queries, so any finite value does. Without dilation or padding
    the folded rows are x's own: a view, but for a zero block at either end.
    """
    total = x.shape[0] // lay.n * lay.r * lay.m_pad
    if lay.r == 1 and lay.m_pad == lay.n:
        a, z = max(lo, 0), min(hi, total)
        if (a, z) == (lo, hi):
            return x[lo:hi]
        return F.pad(x[a:z], (0, 0, a - lo, hi - z))
    f = torch.arange(lo, hi, device=x.device)
    seq, t = f.div(lay.m_pad, rounding_mode="floor"), f.remainder(lay.m_pad)
    pos = t * lay.r + seq.remainder(lay.r)  # position inside the head
    ok = (f >= 0) & (f < total) & (pos < lay.n)
    return x.index_select(0, torch.where(ok, seq.div(lay.r, rounding_mode="floor") * lay.n + pos, 0))


def _of_heads(x: Tensor, s0: int, s1: int, r: int) -> Tensor:
    """x's rows (one per head) for subsequences s0..s1−1: subsequence s belongs to head s // r."""
    if r == 1:
        return x[s0:s1]
    if s1 - s0 == 1:
        return x[s0 // r : s0 // r + 1]
    return x[torch.arange(s0, s1, device=x.device).div(r, rounding_mode="floor")]


def _of_residues(x: Tensor, s0: int, s1: int, r: int) -> Tensor:
    """x's rows (one per residue c) for subsequences s0..s1−1 (subsequence s holds residue
    s mod r); x itself, broadcast, when r = 1."""
    if r == 1:
        return x
    if s1 - s0 == 1:
        return x[s0 % r : s0 % r + 1]
    return x[torch.arange(s0, s1, device=x.device).remainder(r)]


def _unfold(out: Tensor, lay: _Layout, B: int, h: int, n: int, d: int) -> Tensor:
    """(blocks, b, d) in folded order -> (B, h, n, d)."""
    if lay.r == 1:
        return out.view(B, h, lay.m_pad, d)[:, :, :n]
    o = out.view(B, h, lay.r, lay.m_pad, d).transpose(2, 3).reshape(B, h, lay.m_pad * lay.r, d)
    return o[:, :, :n]
