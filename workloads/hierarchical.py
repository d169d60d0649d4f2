"""Hierarchical attention: Transformer-XL (segments with a carried memory) and HAN.

`hierarchical.transformer_xl` (Dai et al. 2019), scopes core and layer. The core takes q, k,
v of the whole sequence, (B, h, n, d), and processes it segment by segment: segment τ holds
L queries and attends, causally, its own keys plus a memory of the previous M positions'
keys and values. In the paper the memory caches the previous segment's hidden states of the
layer below and projects them with the current W_k, W_v; in the core scope the projections
happen outside, so the memory caches the projected keys/values of those positions, which for
one layer is the same computation. In training mode (``detach_memory``, the default) the
memory is detached, SG(·) in the paper: no gradient reaches earlier segments through it.
(In the layer scope the paper would still let W_k, W_v see the memory rows' gradient; with
the keys cached after projection they do not, the one difference.)

Scores are the paper's relative-position form, with learned biases u, v (per head) and the
relative embedding projection W_R applied to sinusoidal embeddings R_{i-j}:

    A_ij = (q_i + u)·k_j + (q_i + v)·(W_R R_{i-j}),   scaled by 1/√d,

the positional term computed for all (query, key-slot) pairs of a segment and aligned with
the rel-shift trick (pad one column, reshape, drop a row). Nothing n×n exists: per segment
the scores are (B, h, L, M+L), so time and memory are linear in n at fixed L and M.
`reference` computes the same scores directly over the whole sequence in float64, with the
equivalent dense mask: query i sees key j iff i − M − (i mod L) ≤ j ≤ i.

`hierarchical.han` (Yang et al. 2016), layer scope only (it has its own encoders and no
single q, k, v): x (B, n, D) is split into S = ⌈n/T⌉ sentences of T tokens (the last padded
and masked); a word encoder runs within each sentence (a pre-norm self-attention layer by
default, ``encoder="gru"`` the paper's bi-GRU), attention pooling against a learned word
context vector gives sentence vectors, a sentence encoder runs across them, and pooling
against a sentence context vector gives the document vector. The output is the document
vector, (B, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.registry import register_workload
from attnbench.workloads.base import (
    FFN_MULT,
    TRAIN_FLOP_FACTOR_ATTENTION,
    TRAIN_FLOP_FACTOR_LINEAR,
    AttentionVariant,
    Shape,
    step_range,
)

# --- Transformer-XL ----------------------------------------------------------------------------


@dataclass(frozen=True)
class XLParams:
    segment: int = 512
    memory: int = 512
    detach_memory: bool = True
    seed: int = 0  # the learned u, v, W_R start from this seed, so two instances agree

    def __post_init__(self) -> None:
        if self.segment <= 0:
            raise ValueError(f"segment must be positive, got {self.segment}")
        if self.memory < 0:
            raise ValueError(f"memory must be non-negative, got {self.memory}")


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


@register_workload
class TransformerXLAttention(AttentionVariant):
    name: ClassVar[str] = "hierarchical.transformer_xl"
    family: ClassVar[str] = "hierarchical"
    summary: ClassVar[str] = "Transformer-XL: causal segments of L with M carried keys/values, relative positions"
    Params: ClassVar[type] = XLParams
    subquadratic: ClassVar[bool] = True

    def __init__(self, params: XLParams, shape: Shape) -> None:
        super().__init__(params, shape)
        h, d, D = shape.heads, shape.head_dim, shape.model_dim
        g = torch.Generator().manual_seed(params.seed)
        self.u = nn.Parameter(0.5 * torch.randn(h, d, generator=g))  # content bias
        self.v = nn.Parameter(0.5 * torch.randn(h, d, generator=g))  # position bias
        self.w_r = nn.Parameter(torch.randn(D, h * d, generator=g) / math.sqrt(D))  # W_{k,R}
        self.last_segments = 0
        self.last_memory = 0

    def _rel(self, distances: Tensor, like: Tensor) -> Tensor:
        """Projected relative embeddings W_R R for the given distances: (h, len, d)."""
        h, d = self.shape.heads, self.shape.head_dim
        emb = sinusoid(distances, self.shape.model_dim).to(like.device, like.dtype)  # (len, D)
        return (emb @ self.w_r.to(like.dtype)).view(-1, h, d).transpose(0, 1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, d = q.shape[-2], q.shape[-1]
        L, M = self.params.segment, self.params.memory
        scale = 1.0 / math.sqrt(d)
        detach = self.params.detach_memory and self.training
        u = self.u.to(q.dtype)[:, None, :]  # (h, 1, d)
        pv = self.v.to(q.dtype)[:, None, :]
        segs = segments(n, L, M)
        kmax = max_keys(n, L, M)
        # Distances kmax−1 … 0: a segment with klen key slots uses the last klen of them.
        with step_range("xl.relative_positions"):
            r_all = self._rel(torch.arange(kmax - 1, -1, -1, device=q.device), q)  # (h, kmax, d)
        out = q.new_empty(q.shape)  # (B, h, n, d)
        for s, e, m in segs:
            ql, klen = e - s, e - s + m
            with step_range("xl.memory"):
                ks, vs = k[:, :, s - m : e], v[:, :, s - m : e]  # memory then current: (B, h, klen, d)
                if detach and m:
                    ks = torch.cat([ks[:, :, :m].detach(), ks[:, :, m:]], dim=2)
                    vs = torch.cat([vs[:, :, :m].detach(), vs[:, :, m:]], dim=2)
            qs = q[:, :, s:e]  # (B, h, ql, d)
            with step_range("xl.content_scores"):
                ac = (qs + u) @ ks.transpose(-1, -2)  # content + global content bias: (B, h, ql, klen)
            with step_range("xl.position_scores"):
                bd = rel_shift((qs + pv) @ r_all[:, kmax - klen :].transpose(-1, -2))  # (B, h, ql, klen)
            with step_range("xl.softmax_output"):
                # In place: autograd needs the matmuls' inputs, not their outputs.
                scores = ac.add_(bd).mul_(scale)
                # Causal within the segment; the memory is all in the past.
                causal = torch.ones(ql, klen, dtype=torch.bool, device=q.device).triu(m + 1)
                scores = scores.masked_fill_(causal, float("-inf"))
                out[:, :, s:e] = torch.softmax(scores, dim=-1) @ vs
        self.last_segments, self.last_memory = len(segs), M
        return out

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
        vd = v.detach() if detach else v
        content = torch.where(
            memory_pair, (q + u[:, None]) @ kd.transpose(-1, -2), (q + u[:, None]) @ k.transpose(-1, -2)
        )
        position = torch.einsum("bhid,ijhd->bhij", q + pv[:, None], r)
        scores = (content + position) / math.sqrt(d)
        scores = scores.masked_fill(~self.reference_mask(n), float("-inf"))
        probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        return (probs * ~memory_pair) @ v + (probs * memory_pair) @ vd

    # --- costs -----------------------------------------------------------------------------
    @classmethod
    def _projection_flops(cls, params: XLParams, shape: Shape) -> float:
        kmax = max_keys(shape.seq_len, params.segment, params.memory)
        return 2.0 * kmax * shape.model_dim * shape.model_dim  # W_R R, once per call

    @classmethod
    def flops(cls, params: XLParams, shape: Shape) -> float:
        """4·D per allowed pair for QKᵀ and PV, 2·D for the positional term, plus W_R R."""
        useful, _ = xl_pairs(shape.seq_len, params.segment, params.memory)
        return 6.0 * useful * shape.model_dim * shape.batch + cls._projection_flops(params, shape)

    @classmethod
    def executed_flops(cls, params: XLParams, shape: Shape) -> float:
        """Every product of each segment's (L, M+L) rectangle, the masked and shifted-out ones too."""
        _, executed = xl_pairs(shape.seq_len, params.segment, params.memory)
        return 6.0 * executed * shape.model_dim * shape.batch + cls._projection_flops(params, shape)

    @classmethod
    def working_bytes(cls, params: XLParams, shape: Shape, itemsize: int) -> int:
        L = min(params.segment, shape.seq_len)
        scores = shape.batch * shape.heads * L * (L + params.memory) * itemsize  # one segment
        out = shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize
        return scores + out

    @classmethod
    def peak_bytes_estimate(cls, params: XLParams, shape: Shape, itemsize: int, train: bool) -> int:
        L = min(params.segment, shape.seq_len)
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        seg = B * h * L * (L + params.memory + 1) * itemsize
        rel = (L + params.memory) * shape.model_dim * itemsize * 3
        inputs = 3 * B * h * n * d * itemsize
        if not train:
            # ac, bd, padded bd, scores, probabilities of one segment alive at once, the output.
            return 8 * seg + rel + 2 * inputs // 3 + 4 * 1024 * 1024
        # Autograd keeps about five segment-sized buffers per segment, so n/L of them.
        segs = -(-n // params.segment)
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
        "HAN: encoder within sentences of T, attention pooling, encoder across them -> doc vector (B, D)"
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
    def case_peak_estimate(cls, params: HANParams, shape: Shape, scope: str, itemsize: int, mode: str) -> int:
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
