"""Hierarchical attention: Transformer-XL (segments with a carried memory) and HAN.

`hierarchical.transformer_xl` (Dai et al. 2019), scopes core and layer. The core takes q, k,
v of the whole sequence, (B, h, n, d), and processes it segment by segment: segment τ holds
L queries and attends, causally, its own keys plus a memory of the previous M positions'
keys and values. In the paper the memory caches the previous segment's hidden states of the
layer below and projects them with the current W_k, W_v; in the core scope the projections
happen outside, so the memory caches the projected keys/values of those positions, which for
one layer is the same computation. In training mode (``detach_memory``, the default) the
memory is detached, SG(·) in the paper: no gradient reaches earlier segments through it.

Scores are the paper's relative-position form, with learned biases u, v (per head) and the
relative embedding projection W_R applied to sinusoidal embeddings R_{i-j}:

    A_ij = (q_i + u)·k_j + (q_i + v)·(W_R R_{i-j}),   scaled by 1/√d,

the positional term computed for all (query, key-slot) pairs of a segment and aligned with
the rel-shift trick (pad one column, reshape, drop a row). Nothing n×n exists: per segment
the scores are (B, h, L, M+L), so time and memory are linear in n at fixed L and M.
`reference` computes the same scores directly over the whole sequence in float64, with the
equivalent dense mask: query i sees key j iff i − M − (i mod L) ≤ j ≤ i.

Costs the reference implementation (kimiyoung/transformer-xl, `RelPartialLearnableMultiHeadAttn`)
pays per segment, and ``per_segment``:

- ``per_segment=False`` (default, the definition cases had before the option): W_R R is
  computed once per call, for the longest segment's M+L distances, and every segment uses the
  last M+L of them; in the layer scope the pre-norm and Q, K, V projections run once over all n
  rows, so a memory row's keys and values are the ones projected when it was a current row.
  That omits two costs of the reference: its ``r_net`` (W_R R) runs for every segment and layer,
  2·(M+L)·D² FLOPs each, and its ``qkv_net(cat([mems, w]))`` re-norms and re-projects the M
  memory rows every segment, 6·M·D² FLOPs each (their queries are computed and dropped). It
  also differs in one gradient: with the keys cached after projection, W_k and W_v get no
  gradient from the memory rows.
- ``per_segment=True`` reproduces both: r_net per segment in either scope, and in the layer
  scope the memory is the previous rows' hidden states (the layer's input, detached in
  training with ``detach_memory``), normed and projected again with Q, K, V for every segment,
  as in the reference; W_k and W_v then see the memory rows' gradient, as in the paper. The
  outputs are the same numbers either way.

Useful FLOPs count each projection once (the default's work); executed FLOPs count what runs,
so with ``per_segment`` the repeated r_net and memory projections are executed, not useful.

Training (``train_step``): ``"sequence"`` (default) keeps all ⌈n/L⌉ segments in one autograd
graph and runs one backward per call, so its memory grows with n. ``"segment"`` trains as
Transformer-XL does, one segment per step: forward and backward of a segment, then the next,
its memory read from the previous segments with no graph (so it needs ``detach_memory``). The
gradients are the same numbers as "sequence" gives with the memory detached, summed over the
segments for the weights; the peak holds one segment's graph, whatever n. No optimizer step
runs between segments (attnbench times the forward and backward only). Forward-mode cases do
not use it. The timed train call runs it through the module's ``train_call``.

`hierarchical.han` (Yang et al. 2016), layer scope only (it has its own encoders and no
single q, k, v): x (B, n, D) is split into S = ⌈n/T⌉ sentences of T tokens (the last padded
and masked); a word encoder runs within each sentence, attention pooling against a learned
word context vector gives sentence vectors, a sentence encoder runs across them, and pooling
against a sentence context vector gives the document vector. The output is the document
vector, (B, D). The paper's encoders are bidirectional GRUs (``encoder="gru"``); the default
here is a pre-norm self-attention layer (``encoder="attention"``), deliberately: attnbench
compares attention designs, and with GRU encoders the case mostly times a recurrent network
whose only attention is the two poolings. The hierarchy, the masking of the padded last
sentence and the pooling are the paper's either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.registry import register_workload
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.base import (
    FFN_MULT,
    TRAIN_FLOP_FACTOR_ATTENTION,
    TRAIN_FLOP_FACTOR_LINEAR,
    AttentionVariant,
    Shape,
    step_range,
)
from attnbench.workloads.layer import PreNormLayer

# --- Transformer-XL ----------------------------------------------------------------------------

TRAIN_STEPS = ("sequence", "segment")

# (inputs, upstream gradient) -> gradients of the inputs, then of the weights that require them,
# in the order backends.base.eager_step lists them.
TrainCall = Callable[[tuple[Tensor, ...], Tensor], tuple[Tensor, ...]]


@dataclass(frozen=True)
class XLParams:
    segment: int = 512
    memory: int = 512
    detach_memory: bool = True
    seed: int = 0  # the learned u, v, W_R start from this seed, so two instances agree
    per_segment: bool = False  # the reference's per-segment r_net and memory re-projection
    train_step: str = "sequence"  # or "segment": train one segment per step

    def __post_init__(self) -> None:
        if self.segment <= 0:
            raise ValueError(f"segment must be positive, got {self.segment}")
        if self.memory < 0:
            raise ValueError(f"memory must be non-negative, got {self.memory}")
        if self.train_step not in TRAIN_STEPS:
            raise ValueError(f"train_step must be one of {', '.join(TRAIN_STEPS)}, got {self.train_step!r}")
        if self.train_step == "segment" and not self.detach_memory:
            # A segment's graph is gone once its step is over: nothing can flow back into it.
            raise ValueError("train_step=segment detaches the memory between steps: it needs detach_memory=True")


def sinusoid(distances: Tensor, dim: int) -> Tensor:
    """(len,) float distances -> (len, dim) sinusoidal embeddings, [sin | cos] as in the paper."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64, device=distances.device) / dim))
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]  # (len, dim/2)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return emb[:, :dim]


def rel_shift(x: Tensor) -> Tensor:
    """(..., q, k) scores whose column c holds distance k−1−c -> column j holds distance
    (k−q) + i − j for row i (valid where j ≤ i + k − q; the rest is garbage, masked later)."""
    *lead, q, k = x.shape
    padded = F.pad(x, (1, 0))  # (..., q, k+1), zero column in front
    return padded.reshape(*lead, k + 1, q)[..., 1:, :].reshape(*lead, q, k)


def segments(n: int, L: int, M: int) -> list[tuple[int, int, int]]:
    """(start, end, memory length) of each segment."""
    return [(s, min(s + L, n), min(M, s)) for s in range(0, n, L)]


def max_keys(n: int, L: int, M: int) -> int:
    """The most key slots (memory + segment) any segment has."""
    return max(e - s + m for s, e, m in segments(n, L, M))


def xl_pairs(n: int, L: int, M: int) -> tuple[int, int]:
    """(allowed query-key pairs, pairs in the computed rectangles) over one sequence."""
    useful = executed = 0
    for s, e, m in segments(n, L, M):
        ql = e - s
        useful += ql * m + ql * (ql + 1) // 2
        executed += ql * (ql + m)
    return useful, executed


class SegmentGrads:
    """Gradients summed over one-segment steps: the inputs' rows written where each segment
    took them from, the weights' added up (as .grad would accumulate them)."""

    def __init__(self, inputs: tuple[Tensor, ...], weights: list[Tensor], seq_dim: int) -> None:
        self.inputs = [torch.zeros_like(t) for t in inputs]
        self.weights = [torch.zeros_like(w) for w in weights]
        self.seq_dim = seq_dim

    def add(self, s: int, e: int, input_grads: tuple[Tensor, ...], weight_grads: tuple[Tensor, ...]) -> None:
        for acc, g in zip(self.inputs, input_grads, strict=True):
            acc.narrow(self.seq_dim, s, e - s).copy_(g)
        for acc, g in zip(self.weights, weight_grads, strict=True):
            acc.add_(g)

    def result(self) -> tuple[Tensor, ...]:
        return (*self.inputs, *self.weights)


@register_workload
class TransformerXLAttention(AttentionVariant):
    name: ClassVar[str] = "hierarchical.transformer_xl"
    family: ClassVar[str] = "hierarchical"
    summary: ClassVar[str] = (
        "Transformer-XL: causal segments of L with M carried keys/values, relative positions; W_R·R "
        "(and, in the layer scope, the memory's K/V) once per call unless per_segment; train: one graph "
        "over all segments unless train_step=segment"
    )
    Params: ClassVar[type] = XLParams
    subquadratic: ClassVar[bool] = True
    neutral_params: ClassVar[dict[str, Any]] = {"per_segment": False, "train_step": "sequence"}

    def __init__(self, params: XLParams, shape: Shape) -> None:
        super().__init__(params, shape)
        h, d, D = shape.heads, shape.head_dim, shape.model_dim
        g = torch.Generator().manual_seed(params.seed)
        self.u = nn.Parameter(0.5 * torch.randn(h, d, generator=g))  # content bias
        self.v = nn.Parameter(0.5 * torch.randn(h, d, generator=g))  # position bias
        self.w_r = nn.Parameter(torch.randn(D, h * d, generator=g) / math.sqrt(D))  # W_{k,R}
        self.last_segments = 0
        self.last_memory = 0
        # backends.base.eager_step runs a train call through this when it is set.
        self.train_call: TrainCall | None = self._train_by_segment if params.train_step == "segment" else None

    def _rel(self, distances: Tensor, like: Tensor) -> Tensor:
        """Projected relative embeddings W_R R for the given distances: (h, len, d)."""
        h, d = self.shape.heads, self.shape.head_dim
        emb = sinusoid(distances, self.shape.model_dim).to(like.device, like.dtype)  # (len, D)
        return (emb @ self.w_r.to(like.dtype)).view(-1, h, d).transpose(0, 1)

    def shared_positions(self, n: int, like: Tensor) -> Tensor | None:
        """W_R R for distances kmax−1 … 0, once per call: (h, kmax, d); None with per_segment,
        where each segment computes its own (`positions`)."""
        if self.params.per_segment:
            return None
        kmax = max_keys(n, self.params.segment, self.params.memory)
        with step_range("xl.relative_positions"):
            return self._rel(torch.arange(kmax - 1, -1, -1, device=like.device), like)

    def positions(self, shared: Tensor | None, klen: int, like: Tensor) -> Tensor:
        """W_R R for distances klen−1 … 0: the last klen of the shared ones, or (per_segment)
        computed here, as kimiyoung's r_net does for every segment: (h, klen, d)."""
        if shared is not None:
            return shared[:, shared.shape[1] - klen :]
        with step_range("xl.relative_positions"):
            return self._rel(torch.arange(klen - 1, -1, -1, device=like.device), like)

    def attend(self, qs: Tensor, ks: Tensor, vs: Tensor, m: int, r: Tensor) -> Tensor:
        """One segment: queries (B, h, ql, d) against m memory slots then ql current ones,
        keys and values (B, h, m+ql, d), positions r (h, m+ql, d) -> (B, h, ql, d)."""
        ql, klen = qs.shape[-2], ks.shape[-2]
        scale = 1.0 / math.sqrt(qs.shape[-1])
        with step_range("xl.content_scores"):
            ac = (qs + self.u.to(qs.dtype)[:, None, :]) @ ks.transpose(-1, -2)  # content + bias u: (B, h, ql, klen)
        with step_range("xl.position_scores"):
            bd = rel_shift((qs + self.v.to(qs.dtype)[:, None, :]) @ r.transpose(-1, -2))  # (B, h, ql, klen)
        with step_range("xl.softmax_output"):
            # In place: autograd needs the matmuls' inputs, not their outputs.
            scores = ac.add_(bd).mul_(scale)
            # Causal within the segment; the memory is all in the past.
            causal = torch.ones(ql, klen, dtype=torch.bool, device=qs.device).triu(m + 1)
            scores = scores.masked_fill_(causal, float("-inf"))
            return torch.softmax(scores, dim=-1) @ vs

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n = q.shape[-2]
        segs = segments(n, self.params.segment, self.params.memory)
        detach = self.params.detach_memory and self.training
        shared = self.shared_positions(n, q)
        out = q.new_empty(q.shape)  # (B, h, n, d)
        for s, e, m in segs:
            with step_range("xl.memory"):
                ks, vs = k[:, :, s - m : e], v[:, :, s - m : e]  # memory then current: (B, h, klen, d)
                if detach and m:
                    ks = torch.cat([ks[:, :, :m].detach(), ks[:, :, m:]], dim=2)
                    vs = torch.cat([vs[:, :, :m].detach(), vs[:, :, m:]], dim=2)
            out[:, :, s:e] = self.attend(q[:, :, s:e], ks, vs, m, self.positions(shared, e - s + m, q))
        self.last_segments, self.last_memory = len(segs), self.params.memory
        return out

    def _train_by_segment(self, inputs: tuple[Tensor, ...], grad_out: Tensor) -> tuple[Tensor, ...]:
        """train_step=segment: forward and backward of one segment at a time, the memory read
        from the inputs without a graph. Returns the gradients eager_step's train call returns."""
        q, k, v = inputs
        n = q.shape[-2]
        weights = [p for p in self.parameters() if p.requires_grad]
        grads = SegmentGrads(inputs, weights, seq_dim=2)
        shared = self.shared_positions(n, q)
        # Once per call, so backward once too: each segment's step stops at a detached copy,
        # whose gradient the last step carries on into W_R.
        r_leaf = None if shared is None else shared.detach().requires_grad_(True)
        g_r = None if r_leaf is None else torch.zeros_like(r_leaf)
        segs = segments(n, self.params.segment, self.params.memory)
        for s, e, m in segs:
            cur = tuple(t[:, :, s:e].detach().requires_grad_(True) for t in (q, k, v))  # (B, h, ql, d)
            ks = torch.cat([k[:, :, s - m : s].detach(), cur[1]], dim=2)  # (B, h, m+ql, d)
            vs = torch.cat([v[:, :, s - m : s].detach(), cur[2]], dim=2)
            out = self.attend(cur[0], ks, vs, m, self.positions(r_leaf, e - s + m, q))
            extra = [] if r_leaf is None else [r_leaf]
            got = torch.autograd.grad(
                out, [*cur, *weights, *extra], grad_out[:, :, s:e], allow_unused=True, materialize_grads=True
            )
            grads.add(s, e, got[:3], got[3 : 3 + len(weights)])
            if g_r is not None:
                g_r.add_(got[-1])
        if shared is not None and g_r is not None:
            (g_w,) = torch.autograd.grad(shared, self.w_r, g_r)
            grads.weights[next(i for i, w in enumerate(weights) if w is self.w_r)].add_(g_w)
        self.last_segments, self.last_memory = len(segs), self.params.memory
        return grads.result()

    # --- building a workload for a scope -------------------------------------------------
    @classmethod
    def build(cls, params: XLParams, shape: Shape, scope: str) -> nn.Module:
        attention = cls(params, shape)
        return attention if scope == "core" else TransformerXLLayer(attention, shape)

    # --- definition ------------------------------------------------------------------------
    def reference_mask(self, n: int) -> Tensor:
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        L, M = self.params.segment, self.params.memory
        return (j <= i) & (j >= i - (i % L) - M)

    def reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Dense float64: every allowed score computed directly from R_{i−j}, no rel-shift.
        In training with detach_memory, memory pairs (key in an earlier segment) see
        detached keys and values, which is what SG(·) does."""
        q, k, v = (t.to(torch.float64) for t in (q, k, v))
        n = q.shape[-2]
        j = torch.arange(n)[None, :]
        memory_pair = (j // self.params.segment) < (torch.arange(n)[:, None] // self.params.segment)
        vd = v.detach() if self.params.detach_memory and self.training else v
        probs = self.probabilities(q, k)
        return (probs * ~memory_pair) @ v + (probs * memory_pair) @ vd

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, h, n, n) float64: softmax over the allowed keys of the content and position
        scores, (q + u)·k_j + (q + v)·W_R R_{i−j}, over √d."""
        q, k = (t.to(torch.float64) for t in (q, k))
        n, d = q.shape[-2], q.shape[-1]
        h = self.shape.heads
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        dist = (i - j).clamp(min=0)  # (n, n), only allowed (j ≤ i) entries are used
        emb = sinusoid(dist.reshape(-1).double(), self.shape.model_dim)  # (n·n, D)
        r = (emb @ self.w_r.double()).view(n, n, h, d)  # W_R R_{i−j}: (n, n, h, d)
        u, pv = self.u.double(), self.v.double()
        L = self.params.segment
        memory_pair = (j // L) < (i // L)  # key from an earlier segment: served by the memory
        detach = self.params.detach_memory and self.training
        kd = k.detach() if detach else k
        content = torch.where(
            memory_pair, (q + u[:, None]) @ kd.transpose(-1, -2), (q + u[:, None]) @ k.transpose(-1, -2)
        )
        position = torch.einsum("bhid,ijhd->bhij", q + pv[:, None], r)
        scores = (content + position) / math.sqrt(d)
        scores = scores.masked_fill(~self.reference_mask(n), float("-inf"))
        return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)

    # --- costs -----------------------------------------------------------------------------
    @classmethod
    def _projection_flops(cls, params: XLParams, shape: Shape, executed: bool) -> float:
        """W_R R: once per call for the longest segment's distances; with per_segment the
        executed count has it once per segment, for that segment's M+L distances."""
        segs = segments(shape.seq_len, params.segment, params.memory)
        rows = (
            sum(e - s + m for s, e, m in segs)
            if executed and params.per_segment
            else max_keys(shape.seq_len, params.segment, params.memory)
        )
        return 2.0 * rows * shape.model_dim * shape.model_dim

    @classmethod
    def memory_projection_flops(cls, params: XLParams, shape: Shape) -> float:
        """Layer scope, per_segment: the pre-norm's Q, K, V projection of each segment's memory
        rows again (6·D² per row, the queries dropped after), executed on top of PreNormLayer's."""
        if not params.per_segment:
            return 0.0
        rows = sum(m for _, _, m in segments(shape.seq_len, params.segment, params.memory))
        return 6.0 * rows * shape.model_dim * shape.model_dim * shape.batch

    @classmethod
    def flops(cls, params: XLParams, shape: Shape) -> float:
        """4·D per allowed pair for QKᵀ and PV, 2·D for the positional term, plus W_R R once."""
        useful, _ = xl_pairs(shape.seq_len, params.segment, params.memory)
        return 6.0 * useful * shape.model_dim * shape.batch + cls._projection_flops(params, shape, executed=False)

    @classmethod
    def executed_flops(cls, params: XLParams, shape: Shape) -> float:
        """Every product of each segment's (L, M+L) rectangle, the masked and shifted-out ones
        too, and W_R R as often as it runs (once per segment with per_segment)."""
        _, executed = xl_pairs(shape.seq_len, params.segment, params.memory)
        return 6.0 * executed * shape.model_dim * shape.batch + cls._projection_flops(params, shape, executed=True)

    @classmethod
    def case_flops(cls, params: XLParams, shape: Shape, scope: str, mode: str, executed: bool = False) -> float:
        """The generic case; executed, in the layer scope with per_segment, the memory rows'
        projections again (train: backward two products per forward one, as for any linear).
        train_step changes how the backward is split, not its FLOPs."""
        total = super().case_flops(params, shape, scope, mode, executed)
        if executed and scope == "layer":
            extra = cls.memory_projection_flops(params, shape)
            total += extra * (TRAIN_FLOP_FACTOR_LINEAR if mode == "train" else 1.0)
        return total

    @classmethod
    def working_bytes(cls, params: XLParams, shape: Shape, itemsize: int) -> int:
        L = min(params.segment, shape.seq_len)
        scores = shape.batch * shape.heads * L * (L + params.memory) * itemsize  # one segment
        out = shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize
        return scores + out

    @classmethod
    def peak_bytes_estimate(
        cls, params: XLParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        L = min(params.segment, shape.seq_len)
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        seg = B * h * L * (L + params.memory + 1) * itemsize
        rel = (L + params.memory) * shape.model_dim * itemsize * 3
        inputs = 3 * B * h * n * d * itemsize
        if not train:
            # ac, bd, padded bd, scores, probabilities of one segment alive at once, the output.
            return 8 * seg + rel + 2 * inputs // 3 + 4 * 1024 * 1024
        # Autograd keeps about five segment-sized buffers per segment: n/L of them in one graph,
        # one segment's with train_step=segment (plus the gradients, the size of the inputs).
        segs = 1 if params.train_step == "segment" else -(-n // params.segment)
        return 6 * seg * segs + rel + 4 * inputs + 4 * 1024 * 1024

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        core = module if isinstance(module, TransformerXLAttention) else getattr(module, "attention", None)
        if not isinstance(core, TransformerXLAttention):
            return {}
        return {
            "segments": core.last_segments,
            "segment_len": core.params.segment,
            "memory_len": core.params.memory,
        }


class TransformerXLLayer(PreNormLayer):
    """The layer scope's PreNormLayer around Transformer-XL. With per_segment it works segment
    by segment as the reference layer does: the memory rows' hidden states (the layer input)
    are normed and projected again with the segment's own (qkv_net over [memory; segment]).
    With train_step=segment, train_call trains one segment per step. Otherwise it is
    PreNormLayer itself."""

    attention: TransformerXLAttention

    def __init__(self, attention: TransformerXLAttention, shape: Shape) -> None:
        super().__init__(attention, shape)
        self.train_call: TrainCall | None = self._train_by_segment if attention.params.train_step == "segment" else None

    def rows(self, x_cur: Tensor, memory: Tensor | tuple[Tensor, Tensor], shared: Tensor | None) -> tuple[Tensor, ...]:
        """The layer's output for one segment's rows x_cur (B, ql, D). `memory` is either the
        memory rows' hidden states (B, m, D), projected here again (per_segment), or their
        keys and values ((B, h, m, d) each) from earlier. Returns the output rows and the
        segment's own keys and values (B, h, ql, d)."""
        B, ql, D = x_cur.shape
        h, d = self.heads, self.head_dim
        with step_range("layer.qkv"):
            if isinstance(memory, Tensor):
                m = memory.shape[1]
                c = torch.cat([memory, x_cur], dim=1)  # (B, m+ql, D)
                qkv = self.qkv(self.norm1(c)).view(B, m + ql, 3, h, d)
                q, ks, vs = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, m+ql, d)
                q, k, v = q[:, :, m:], ks[:, :, m:], vs[:, :, m:]  # the memory rows' queries go unused
            else:
                m = memory[0].shape[2]
                qkv = self.qkv(self.norm1(x_cur)).view(B, ql, 3, h, d)
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, ql, d)
                ks, vs = torch.cat([memory[0], k], dim=2), torch.cat([memory[1], v], dim=2)
        with step_range("layer.attention"):
            attn = self.attention
            a = attn.attend(q, ks, vs, m, attn.positions(shared, m + ql, q)).transpose(1, 2).reshape(B, ql, D)
        with step_range("layer.proj"):
            y = x_cur + self.proj(a)
        with step_range("layer.ffn"):
            return y + self.ffn(self.norm2(y)), k, v

    def forward(self, x: Tensor) -> Tensor:
        p = self.attention.params
        if not p.per_segment:
            return super().forward(x)
        n = x.shape[1]
        detach = p.detach_memory and self.training
        segs = segments(n, p.segment, p.memory)
        out = x.new_empty(x.shape)  # (B, n, D)
        for s, e, m in segs:
            memory = x[:, s - m : s]  # the hidden states the reference caches: (B, m, D)
            out[:, s:e] = self.rows(x[:, s:e], memory.detach() if detach else memory, None)[0]
        self.attention.last_segments, self.attention.last_memory = len(segs), p.memory
        return out

    def _train_by_segment(self, inputs: tuple[Tensor, ...], grad_out: Tensor) -> tuple[Tensor, ...]:
        """train_step=segment: each segment's rows forward and backward in turn. The memory is
        the input's rows (per_segment) or the keys and values earlier steps projected, kept
        without a graph, the last M of them."""
        (x,) = inputs
        B, n, _ = x.shape
        p = self.attention.params
        weights = [w for w in self.parameters() if w.requires_grad]
        grads = SegmentGrads(inputs, weights, seq_dim=1)
        shared = self.attention.shared_positions(n, x)
        r_leaf = None if shared is None else shared.detach().requires_grad_(True)
        g_r = None if r_leaf is None else torch.zeros_like(r_leaf)
        empty = x.new_empty(B, self.heads, 0, self.head_dim)
        k_mem, v_mem = empty, empty  # the last M rows' keys and values: (B, h, ≤M, d)
        segs = segments(n, p.segment, p.memory)
        for s, e, m in segs:
            x_cur = x[:, s:e].detach().requires_grad_(True)
            memory = x[:, s - m : s].detach() if p.per_segment else (k_mem, v_mem)
            out, k, v = self.rows(x_cur, memory, r_leaf)
            extra = [] if r_leaf is None else [r_leaf]
            got = torch.autograd.grad(
                out, [x_cur, *weights, *extra], grad_out[:, s:e], allow_unused=True, materialize_grads=True
            )
            grads.add(s, e, got[:1], got[1 : 1 + len(weights)])
            if g_r is not None:
                g_r.add_(got[-1])
            if not p.per_segment:
                keep = min(p.memory, k_mem.shape[2] + e - s)
                k_mem = torch.cat([k_mem, k.detach()], dim=2)[:, :, k_mem.shape[2] + e - s - keep :]
                v_mem = torch.cat([v_mem, v.detach()], dim=2)[:, :, v_mem.shape[2] + e - s - keep :]
        if shared is not None and g_r is not None:
            (g_w,) = torch.autograd.grad(shared, self.attention.w_r, g_r)
            grads.weights[next(i for i, w in enumerate(weights) if w is self.attention.w_r)].add_(g_w)
        self.attention.last_segments, self.attention.last_memory = len(segs), p.memory
        return grads.result()


# --- HAN ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HANParams:
    sentence: int = 64
    encoder: str = "attention"  # or "gru": the paper's bidirectional GRU encoders

    def __post_init__(self) -> None:
        if self.sentence <= 0:
            raise ValueError(f"sentence must be positive, got {self.sentence}")
        if self.encoder not in ("attention", "gru"):
            raise ValueError(f"encoder must be 'attention' or 'gru', got {self.encoder!r}")


class SelfAttentionEncoder(nn.Module):
    """A pre-norm transformer layer over (N, T, D) with a key padding mask (N, T)."""

    def __init__(self, D: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D)
        self.ffn = nn.Sequential(nn.Linear(D, FFN_MULT * D), nn.GELU(), nn.Linear(FFN_MULT * D, D))

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        N, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(N, T, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, h, T, d)
        mask = None if valid is None else valid[:, None, None, :]  # (N, 1, 1, T)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(N, T, D)
        x = x + self.proj(a)
        return x + self.ffn(self.norm2(x))


class GRUEncoder(nn.Module):
    """The paper's bidirectional GRU, D/2 per direction, over (N, T, D); padding is packed away."""

    def __init__(self, D: int) -> None:
        super().__init__()
        if D % 2:
            raise ValueError(f"the bi-GRU encoder needs an even model dim, got {D}")
        self.gru = nn.GRU(D, D // 2, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if valid is None or bool(valid.all()):
            return self.gru(x)[0]
        lengths = valid.sum(-1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        return out


class AttentionPool(nn.Module):
    """u_t = tanh(W h_t + b); α = softmax_t(u_t · u_ctx) over valid t; Σ α_t h_t."""

    def __init__(self, D: int) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.context = nn.Parameter(torch.randn(D) / math.sqrt(D))

    def forward(self, h: Tensor, valid: Tensor | None = None) -> Tensor:
        logits = torch.tanh(self.proj(h)) @ self.context  # (N, T)
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
        alpha = torch.softmax(logits, dim=-1)
        return (alpha.unsqueeze(-1) * h).sum(-2)  # (N, D)


@register_workload
class HierarchicalAttentionNetwork(AttentionVariant):
    name: ClassVar[str] = "hierarchical.han"
    family: ClassVar[str] = "hierarchical"
    summary: ClassVar[str] = (
        "HAN: encoder within sentences of T, attention pooling, encoder across them -> doc vector (B, D); "
        "self-attention encoders by default (attention designs are what attnbench compares), the paper's "
        "bi-GRU with encoder=gru"
    )
    Params: ClassVar[type] = HANParams
    subquadratic: ClassVar[bool] = True
    scopes: ClassVar[tuple[str, ...]] = ("layer",)

    def __init__(self, params: HANParams, shape: Shape) -> None:
        super().__init__(params, shape)
        D, h = shape.model_dim, shape.heads
        make = (lambda: SelfAttentionEncoder(D, h)) if params.encoder == "attention" else (lambda: GRUEncoder(D))
        self.word_encoder, self.sentence_encoder = make(), make()
        self.word_pool, self.sentence_pool = AttentionPool(D), AttentionPool(D)
        self.last_sentences = 0

    def sentences(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, n, D) -> sentence vectors (B, S, D), and the (B·S, T) validity mask if padded."""
        B, n, D = x.shape
        T = self.params.sentence
        S = -(-n // T)
        valid = None
        if n != S * T:
            x = F.pad(x, (0, 0, 0, S * T - n))
            valid = (torch.arange(S * T, device=x.device) < n).view(1, S, T).expand(B, S, T).reshape(B * S, T)
        words = x.reshape(B * S, T, D)
        with step_range("han.word_encoder"):
            h = self.word_encoder(words, valid)  # (B·S, T, D)
        with step_range("han.word_pool"):
            return self.word_pool(h, valid).view(B, S, D), valid

    def document(self, sentences: Tensor) -> Tensor:
        """(B, S, D) sentence vectors -> (B, D) document vector."""
        with step_range("han.sentence_encoder"):
            encoded = self.sentence_encoder(sentences)
        with step_range("han.sentence_pool"):
            return self.sentence_pool(encoded)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        s, _ = self.sentences(x)
        self.last_sentences = s.shape[1]
        return self.document(s)

    @classmethod
    def build(cls, params: HANParams, shape: Shape, scope: str) -> nn.Module:
        if scope != "layer":
            raise ValueError(f"{cls.name} runs in the layer scope only")
        return cls(params, shape)

    # --- costs (attention FLOPs: per sentence T², across sentences S²) ----------------------
    @staticmethod
    def _padded(params: HANParams, shape: Shape) -> tuple[int, int]:
        """(T, S): forward pads the text to S = ⌈n/T⌉ whole sentences of T words, the last
        (or, for n < T, the only) one padded and masked."""
        return params.sentence, -(-shape.seq_len // params.sentence)

    @classmethod
    def _pairs(cls, params: HANParams, shape: Shape, executed: bool) -> tuple[int, int]:
        """(word-level score pairs, word-level rows): useful counts only real words (the last
        sentence has n − (S−1)·T of them); executed counts the padded sentences as computed."""
        T, S = cls._padded(params, shape)
        if executed:
            return S * T * T, S * T
        last = shape.seq_len - (S - 1) * T
        return (S - 1) * T * T + last * last, shape.seq_len

    @classmethod
    def _attention_flops(cls, params: HANParams, shape: Shape, executed: bool) -> float:
        if params.encoder == "gru":
            return 0.0
        words, _ = cls._pairs(params, shape, executed)
        S = cls._padded(params, shape)[1]
        return 4.0 * shape.model_dim * shape.batch * (words + S * S)

    @classmethod
    def flops(cls, params: HANParams, shape: Shape) -> float:
        return cls._attention_flops(params, shape, executed=False)

    @classmethod
    def executed_flops(cls, params: HANParams, shape: Shape) -> float:
        return cls._attention_flops(params, shape, executed=True)

    @classmethod
    def _other_flops(cls, params: HANParams, shape: Shape, executed: bool) -> float:
        """Encoder layers and attention pooling, per word-level and sentence-level row."""
        _, word_rows = cls._pairs(params, shape, executed)
        S = cls._padded(params, shape)[1]
        D = shape.model_dim
        rows = word_rows + S
        gru = 2 * 3 * 2 * (D * D / 2 + (D / 2) ** 2)  # 2 directions × 3 gates, input and recurrent
        enc = gru if params.encoder == "gru" else 8 * D * D + 4 * D * FFN_MULT * D
        pool = 2 * D * D + 2 * D + 2 * D
        if params.encoder == "gru" and executed:
            # The GRU steps over real words only (padding is packed away); the pools see every row.
            return float(shape.batch * ((shape.seq_len + S) * enc + rows * pool))
        return float(shape.batch * rows * (enc + pool))

    @classmethod
    def case_flops(cls, params: HANParams, shape: Shape, scope: str, mode: str, executed: bool = False) -> float:
        attention = cls._attention_flops(params, shape, executed)
        other = cls._other_flops(params, shape, executed)
        if mode == "train":
            return attention * TRAIN_FLOP_FACTOR_ATTENTION + other * TRAIN_FLOP_FACTOR_LINEAR
        return attention + other

    @classmethod
    def working_bytes(cls, params: HANParams, shape: Shape, itemsize: int) -> int:
        T, S = cls._padded(params, shape)
        scores = 0 if params.encoder == "gru" else shape.batch * shape.heads * (S * T * T + S * S) * itemsize
        return scores + shape.batch * shape.model_dim * itemsize

    @classmethod
    def case_min_bytes(cls, params: HANParams, shape: Shape, scope: str, itemsize: int) -> int:
        T, S = cls._padded(params, shape)
        acts = shape.batch * S * T * shape.model_dim * (FFN_MULT + 1) * itemsize
        return cls.working_bytes(params, shape, itemsize) + acts

    @classmethod
    def case_peak_estimate(
        cls, params: HANParams, shape: Shape, scope: str, itemsize: int, mode: str, sdpa: SdpaChoice = MATH
    ) -> int:
        T, S = cls._padded(params, shape)
        D = shape.model_dim
        acts = shape.batch * S * T * D * (FFN_MULT + 4) * itemsize
        weights = 2 * (4 * D * D + 2 * FFN_MULT * D * D + 2 * D * D) * itemsize
        train = mode == "train"
        core = cls.working_bytes(params, shape, itemsize)
        return (4 if train else 2) * (core + acts) + weights * (3 if train else 1) + 4 * 1024 * 1024

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, HierarchicalAttentionNetwork):
            return {}
        return {
            "sentences": module.last_sentences,
            "sentence_len": module.params.sentence,
            "encoder": module.params.encoder,
        }
