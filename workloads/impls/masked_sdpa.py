"""`masked_sdpa`: F.scaled_dot_product_attention with the variant's dense boolean mask.

What people do without a sparse kernel: take the design's pattern as an (n, n) mask and hand
it to torch's SDPA. It computes every one of the n² scores and holds the mask, so its time
and memory are quadratic whatever the pattern's density; that is the point of measuring it.

Where the mask comes from:

- A fixed pattern (the variant's `reference` is the dense reference of its `reference_mask`:
  full.*, sparse.sliding_window and plugins built the same way): `reference_mask(n)`, or all
  pairs when it is None. BigBird's per-head random blocks: `head_masks(n, h)`, one per head.
  Built when the module is built, outside the timed region (as a user would build it once);
  the seconds it took are recorded as `mask_s`.
- LSH, whose pattern depends on the inputs: built inside the forward, timed, from the
  variant's own hashing (`lsh_buckets`): a stable sort by bucket gives each position's chunk
  per round, and count_ij (the rounds in which query i sees key j) becomes an additive float
  mask log(count_ij) (−inf where 0), the shared-QK unit-length keys and no 1/√d scale, with
  the own-position score replaced by Reformer's self score: exactly `LSHAttention.reference`.
- Anything else (Transformer-XL's relative positions, whole-layer designs) is unsupported.

Rows no key may attend give zeros, as the dense reference does (torch's SDPA does too, but
not every version and kernel did: such rows are opened on the diagonal and zeroed after).

Memory: the mask (bool, and the float copy SDPA makes of a boolean mask in the query's dtype)
plus the kernel's own: torch's CPU flash kernel and CUDA's memory-efficient one accept a mask
and stay O(n) beyond it; the math fallback materialises the scores (`peak_estimate`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbench.core.errors import Unsupported
from attnbench.core.registry import register_impl
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.full import NaiveAttention, dense_flops, fused_sdpa_peak
from attnbench.workloads.impls.base import Implementation
from attnbench.workloads.layer import PreNormLayer
from attnbench.workloads.shape import TRAIN_FLOP_FACTOR_ATTENTION, TRAIN_FLOP_FACTOR_LINEAR, Shape
from attnbench.workloads.sparse.bigbird import BigBirdAttention
from attnbench.workloads.sparse.lsh import LSHAttention, _fill_values, _keys, lsh_buckets
from attnbench.workloads.step_range import step_range

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant

# Why a variant's pattern is no mask, where a general sentence would say less.
NO_MASK = {
    "hierarchical.transformer_xl": (
        "Transformer-XL's relative-position scores ((q+v)·W_R·R_{i−j}) and content bias u depend on the "
        "queries: no mask over softmax(QKᵀ/√d) expresses them"
    ),
}


def _pattern_kind(variant: type[AttentionVariant]) -> str | None:
    """ "lsh" (input-dependent, built in the forward), "heads" (one fixed mask per head),
    "mask" (one fixed mask), or None: the pattern is not a mask over softmax(QKᵀ/√d)·V."""
    from attnbench.workloads.base import AttentionVariant

    if issubclass(variant, LSHAttention):
        return "lsh"
    if issubclass(variant, BigBirdAttention):
        return "heads"
    if variant.reference is AttentionVariant.reference:  # the dense reference of reference_mask
        return "mask"
    return None


def fixed_masks(attention: AttentionVariant, n: int, heads: int) -> Tensor:
    """(M, n, n) bool, M = 1 or one mask per head: True where query i may attend key j."""
    if isinstance(attention, BigBirdAttention):
        masks = attention.head_masks(n, heads)  # (draws, n, n), None: all pairs
    else:
        mask = attention.reference_mask(n)
        masks = None if mask is None else mask[None]
    return torch.ones(1, n, n, dtype=torch.bool) if masks is None else masks.to(torch.bool)


def count_dtype(hashes: int) -> torch.dtype:
    """The integer type LSH's pair counts (at most `hashes`) are accumulated in."""
    return torch.uint8 if hashes <= 255 else torch.int16


def lsh_mask(attention: LSHAttention, q: Tensor) -> tuple[Tensor, Tensor]:
    """(keys, additive mask (B, h, n, n) in q's dtype) that make SDPA with scale 1 compute
    `LSHAttention.reference`: out_i = Σ_j count_ij·exp(s_ij)·v_j / Σ_j count_ij·exp(s_ij)."""
    p = attention.params
    B, h, n, _ = q.shape
    c, K = p.chunk, -(-n // p.chunk)
    keys = _keys(q)  # shared QK: the queries at unit length; k plays no part
    with torch.no_grad():
        buckets = lsh_buckets(q, attention.factors(n), p.hashes, p.seed)  # (B, h, R, n)
        # Sorted by (bucket, position): a stable sort; a position's rank // c is its chunk.
        order = torch.sort(buckets, dim=-1, stable=True).indices
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=q.device).expand_as(order))
        chunk = rank // c  # (B, h, R, n)
        del buckets, order, rank
        # count_ij in the narrowest integer that holds the rounds, then its log in q's dtype.
        count = torch.zeros(B, h, n, n, dtype=count_dtype(p.hashes), device=q.device)
        for r in range(p.hashes):
            ci = chunk[:, :, r]  # (B, h, n)
            sees = ci.unsqueeze(-1) == ci.unsqueeze(-2)  # same chunk: (B, h, n, n)
            if K > 1:  # and the previous chunk of the round, wrapping
                sees |= ((ci - 1) % K).unsqueeze(-1) == ci.unsqueeze(-2)
            count += sees
            del sees
        if p.causal:
            count.masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), 0)
        bias = count.to(q.dtype)
        del count
        bias.log_()  # count 0 -> −inf
        # The own position scores Reformer's self score instead of s_ii (a query attends itself
        # only when it has no other key): the mask adds self score − s_ii on the diagonal.
        own = (q.detach() * keys.detach()).sum(-1)  # s_ii: (B, h, n)
        bias.diagonal(dim1=-2, dim2=-1).add_(_fill_values(q.dtype)[0] - own)
    return keys, bias


class MaskedSdpaAttention(nn.Module):
    """(B, h, n, d) q, k, v -> (B, h, n, d): SDPA under the attention's dense mask."""

    def __init__(self, attention: AttentionVariant, shape: Shape, kind: str) -> None:
        super().__init__()
        self.attention = attention  # the design: its parameters, its mask, its hashing
        self.kind = kind
        self.mask_s: float | None = None
        self.calls: tuple[int, int, int, bool] | None = None  # (B·h, n, d, with autograd) of the last call
        self.register_buffer("mask", torch.empty(0, dtype=torch.bool), persistent=False)
        self.register_buffer("empty_rows", None, persistent=False)
        if kind != "lsh":
            self._set_mask(shape.seq_len, shape.heads, torch.device("cpu"))

    def _set_mask(self, n: int, heads: int, device: torch.device) -> None:
        t0 = time.perf_counter()
        # 4-D, (1, M, n, n): torch's CPU flash kernel takes a 2-D or 4-D mask, and sends a 3-D one
        # to the math path, which materialises the scores.
        mask = fixed_masks(self.attention, n, heads)[None]
        empty = ~mask.any(dim=-1, keepdim=True)  # (1, M, n, 1): rows no key may attend
        if bool(empty.any()):
            mask = mask | (torch.eye(n, dtype=torch.bool) & empty)  # no NaN; the output row is zeroed
            self.empty_rows = empty.to(device)
        else:
            self.empty_rows = None
        self.mask = mask.to(device)
        self.mask_s = time.perf_counter() - t0

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, h, n, d = q.shape
        self.calls = (B * h, n, d, torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
        if self.kind == "lsh":
            with step_range("masked_sdpa.mask"):
                keys, bias = lsh_mask(self.attention, q)  # type: ignore[arg-type]
            with step_range("masked_sdpa.attention"):
                return F.scaled_dot_product_attention(q, keys, v, attn_mask=bias, scale=1.0)
        M = self.mask.shape[1] if self.mask.dim() == 4 else 0
        if self.mask.shape[-1:] != (n,) or M not in (1, h) or self.mask.device != q.device:
            self._set_mask(n, h, q.device)  # another length or head count than built for (verification)
        with step_range("masked_sdpa.attention"):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)  # (1, M, n, n) broadcasts
        if self.empty_rows is not None:
            out = out.masked_fill(self.empty_rows, 0.0)
        return out


@register_impl
class MaskedSdpaImpl(Implementation):
    name = "masked_sdpa"
    summary = "F.scaled_dot_product_attention with the variant's dense (n, n) boolean mask"

    @classmethod
    def supports(cls, variant: type[AttentionVariant], params: Any, scope: str, backend: str) -> str | None:
        if "core" not in variant.scopes:
            return f"{variant.name} runs whole layers, with no attention core for a mask to replace"
        if variant.name in NO_MASK:
            return NO_MASK[variant.name]
        if _pattern_kind(variant) is None:
            return f"{variant.name}'s reference is not a mask over softmax(QKᵀ/√d)·V, so no mask reproduces it"
        if backend == "onnxruntime":
            # The exported graph must run at any length, and the mask is a constant of one (LSH's,
            # built in the call, does not export: in-place writes into a view of the mask).
            return "its mask is built for one length, and ONNX Runtime's exported graph must run at any length"
        if scope == "layer":
            return _layer_refusal(variant, params)
        return None

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        kind = _pattern_kind(variant)
        if kind is None:
            raise Unsupported(cls.supports(variant, params, scope, "") or "no mask for this variant")
        core = MaskedSdpaAttention(variant(params, shape), shape, kind)
        if scope == "core":
            return core
        reason = _layer_refusal(variant, params)
        if reason:
            raise Unsupported(reason)
        return PreNormLayer(core, shape)

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        core = next((m for m in module.modules() if isinstance(m, MaskedSdpaAttention)), None)
        if core is None or core.calls is None:
            return {}
        BH, n, d, train = core.calls
        # Every pair is computed, masked or not: the dense count (as full.naive executes).
        shape = Shape(1, BH, d, n)
        executed = dense_flops(shape, causal=False) * (TRAIN_FLOP_FACTOR_ATTENTION if train else 1)
        if core is not module:  # the layer around it
            B = BH // core.attention.shape.heads
            linear = PreNormLayer.linear_flops(Shape(B, core.attention.shape.heads, d, n))
            executed += linear * (TRAIN_FLOP_FACTOR_LINEAR if train else 1)
        metrics: dict[str, Any] = {"flops_executed": executed, "mask": core.kind}
        if core.kind != "lsh":  # built once, outside the timed region
            metrics["mask_s"] = core.mask_s
            metrics["mask_bytes"] = core.mask.numel() * core.mask.element_size()
        return metrics

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
        kind = _pattern_kind(variant)
        if kind is None:
            return None  # unsupported: the case never runs
        B, h, n = shape.batch, shape.heads, shape.seq_len
        train = mode == "train"
        if kind == "lsh":
            # Built in the forward: the pair counts and two boolean comparisons per round, then the
            # counts and the float mask (B, h, n, n) they become; SDPA takes that mask as it is.
            count = count_dtype(params.hashes).itemsize
            mask = B * h * n * n * max(count + 2, count + itemsize) + n * n
        else:
            masks = params.draws(h) if kind == "heads" else 1
            # The boolean mask and SDPA's float copy of it; while it is built (once, before the
            # calls), the variant's reference_mask holds about three int64 index grids over n×n.
            mask = masks * n * n * max(1 + itemsize, 1 + 24)
        # The kernel torch picks is probed without a mask; those that take one stay O(n) beyond
        # it (the CPU flash kernel, CUDA's memory-efficient one); others fall back to the math path.
        takes_mask = (sdpa.kernel == "flash" and sdpa.device == "cpu") or sdpa.kernel == "efficient"
        if takes_mask:
            kernel = fused_sdpa_peak(shape, itemsize, train, sdpa)
        else:
            kernel = NaiveAttention.peak_bytes_estimate(params, shape, itemsize, train, sdpa)
        peak = mask + kernel
        if scope == "layer":
            peak += PreNormLayer.activation_bytes(shape, itemsize) * (4 if train else 2)
            peak += PreNormLayer.weight_bytes(shape, itemsize) * (3 if train else 1)
        return peak


def _layer_refusal(variant: type[AttentionVariant], params: Any) -> str | None:
    """Why the variant's layer is not the plain pre-norm layer around its attention (whose
    attention the masked one replaces), or None."""
    from attnbench.workloads.base import AttentionVariant

    if variant.build.__func__ is AttentionVariant.build.__func__:  # type: ignore[attr-defined]
        return None
    layer = variant.build(params, Shape(1, 2, 8, 16), "layer")  # tiny: only its kind matters
    if type(layer) is PreNormLayer and isinstance(layer.attention, variant):
        return None
    return (
        f"{variant.name}'s layer is {type(layer).__name__}, not the plain pre-norm layer around its "
        "attention; masked_sdpa runs it in the core scope"
    )
