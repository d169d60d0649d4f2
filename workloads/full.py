"""Full (dense) attention: the baselines every other family is measured against.

FLOPs follow docs/cost-model.md: 4·n²·D per sequence forward (Q·Kᵀ and P·V, 2 per
multiply-add), halved, exactly n(n+1)/2 pairs, when causal. `flops` counts the useful
work of the definition; `executed_flops` what the implementation performs (the naive
causal path computes every score and masks half; torch's fused kernel skips masked
blocks, which we count as useful work only, an approximation within one block row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attnbench.core.registry import register_workload
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.base import AttentionVariant, Shape, step_range
from attnbench.workloads.reference import causal_mask


@dataclass(frozen=True)
class CausalParams:
    causal: bool = False


def dense_flops(shape: Shape, causal: bool) -> float:
    n = shape.seq_len
    pairs = n * (n + 1) / 2 if causal else n * n
    return 4.0 * pairs * shape.model_dim * shape.batch


def output_bytes(shape: Shape, itemsize: int) -> int:
    return shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize


# torch's CPU flash kernel walks queries and keys in blocks of at most these sizes (its choice
# for long sequences) and keeps one block of scores and one of output sums per thread.
CPU_FLASH_Q_BLOCK = 256
CPU_FLASH_KV_BLOCK = 512


def fused_sdpa_peak(shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice) -> int:
    """Peak above the inputs of one fused SDPA call (flash, memory-efficient or cuDNN): O(n).

    Forward: the output, a float32 log-sum-exp per query row, and the kernel's block scratch.
    Training adds the output's gradient, dQ, dK and dV (each the inputs' size), a float32 row
    sum for backward, and a float32 dQ accumulator where the kernel keeps one (GPU kernels,
    and the CPU kernel in reduced precision)."""
    B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
    out = output_bytes(shape, itemsize)  # (B, h, n, d)
    rows = B * h * n * 4  # (B, h, n) float32
    scratch = 0
    if sdpa.device == "cpu":
        qb, kb = min(n, CPU_FLASH_Q_BLOCK), min(n, CPU_FLASH_KV_BLOCK)
        per_thread = (qb * kb + qb * d) * 4  # (qb, kb) scores and (qb, d) sums, float32
        scratch = sdpa.threads * per_thread * (3 if train else 1)  # backward: P, dP and dS blocks
    if not train:
        return out + rows + scratch
    accumulator = B * h * n * d * 4 if sdpa.device != "cpu" or itemsize < 4 else 0
    return 5 * out + 2 * rows + accumulator + scratch


class _DenseVariant(AttentionVariant):
    family: ClassVar[str] = "full"
    Params: ClassVar[type] = CausalParams

    @classmethod
    def flops(cls, params: CausalParams, shape: Shape) -> float:
        return dense_flops(shape, params.causal)

    def reference_mask(self, n: int) -> Tensor | None:
        return causal_mask(n) if self.params.causal else None


@register_workload
class NaiveAttention(_DenseVariant):
    name: ClassVar[str] = "full.naive"
    summary: ClassVar[str] = "softmax(QKᵀ/√d)V with the n×n scores materialised"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n = q.shape[-2]
        with step_range("naive.scores"):
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, h, n, n)
            if self.params.causal:
                scores = scores.masked_fill(~causal_mask(n).to(q.device), float("-inf"))
        with step_range("naive.softmax"):
            probs = torch.softmax(scores, dim=-1)
        with step_range("naive.output"):
            return probs @ v  # (B, h, n, d)

    @classmethod
    def executed_flops(cls, params: CausalParams, shape: Shape) -> float:
        return dense_flops(shape, causal=False)  # the causal mask hides work, it does not skip it

    @classmethod
    def working_bytes(cls, params: CausalParams, shape: Shape, itemsize: int) -> int:
        scores = shape.batch * shape.heads * shape.seq_len**2 * itemsize  # one n×n buffer at least
        return scores + output_bytes(shape, itemsize)

    @classmethod
    def peak_bytes_estimate(
        cls, params: CausalParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        scores = shape.batch * shape.heads * shape.seq_len**2 * itemsize
        # Scores and probabilities alive at once; training also keeps them and their grads.
        return (4 if train else 2) * scores + 4 * output_bytes(shape, itemsize)


@register_workload
class SdpaAttention(_DenseVariant):
    name: ClassVar[str] = "full.sdpa"
    summary: ClassVar[str] = "torch scaled_dot_product_attention (fused kernel where torch has one)"

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with step_range("sdpa.attention"):  # one fused op: the range shows which kernel torch chose
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.params.causal)  # (B, h, n, d)

    @classmethod
    def working_bytes(cls, params: CausalParams, shape: Shape, itemsize: int) -> int:
        return output_bytes(shape, itemsize)

    @classmethod
    def peak_bytes_estimate(
        cls, params: CausalParams, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH
    ) -> int:
        if not sdpa.fused:  # torch's math fallback materialises the scores as full.naive does
            return NaiveAttention.peak_bytes_estimate(params, shape, itemsize, train, sdpa)
        return fused_sdpa_peak(shape, itemsize, train, sdpa)


@dataclass(frozen=True)
class ChunkedParams:
    chunk: int = 1024
    causal: bool = False

    def __post_init__(self) -> None:
        if self.chunk <= 0:
            raise ValueError(f"chunk must be positive, got {self.chunk}")


@register_workload
class ChunkedAttention(_DenseVariant):
    """Exact attention computed one block of queries at a time.

    Scores exist for one chunk at a time, (B, h, c, n), so memory is O(n·c). In training
    each chunk is recomputed in backward (activation checkpointing) to keep that bound;
    causal chunks skip the keys after their last query.
    """

    name: ClassVar[str] = "full.chunked"
    summary: ClassVar[str] = "exact attention over query chunks, O(n·chunk) memory"
    Params: ClassVar[type] = ChunkedParams

    def _chunk(self, q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
        # q: (B, h, c, d) for queries start..start+c; k, v: (B, h, m, d)
        with step_range("chunked.scores"):
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, h, c, m)
            if self.params.causal:
                rows = torch.arange(start, start + q.shape[-2], device=q.device)[:, None]
                cols = torch.arange(k.shape[-2], device=q.device)[None, :]
                scores = scores.masked_fill(cols > rows, float("-inf"))
        with step_range("chunked.softmax"):
            probs = torch.softmax(scores, dim=-1)
        with step_range("chunked.output"):
            return probs @ v

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, c = q.shape[-2], self.params.chunk
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        out = torch.empty_like(q)  # (B, h, n, d)
        for start in range(0, n, c):
            end = min(start + c, n)
            keys = end if self.params.causal else n
            args = (q[:, :, start:end], k[:, :, :keys], v[:, :, :keys], start)
            if grad:
                out[:, :, start:end] = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                out[:, :, start:end] = self._chunk(*args)
        return out

    @classmethod
    def executed_flops(cls, params: ChunkedParams, shape: Shape) -> float:
        if not params.causal:
            return dense_flops(shape, causal=False)
        n, c = shape.seq_len, params.chunk
        # Each chunk scores its queries against keys up to its last query, masking the rest.
        pairs = sum((min(s + c, n) - s) * min(s + c, n) for s in range(0, n, c))
        return 4.0 * pairs * shape.model_dim * shape.batch

    @classmethod
    def working_bytes(cls, params: ChunkedParams, shape: Shape, itemsize: int) -> int:
        c = min(params.chunk, shape.seq_len)
        return shape.batch * shape.heads * c * shape.seq_len * itemsize + output_bytes(shape, itemsize)
