"""`xformers`: ``xformers.ops.memory_efficient_attention`` with the attention bias that is the
variant's pattern exactly.

What runs. One ``memory_efficient_attention(q, k, v, attn_bias=...)`` call on (B, n, h, d)
views of the harness's (B, h, n, d) tensors (the transpose is part of the call; see
`attnbench.workloads.impls.band_kernels`, whose band, wrapper and memory estimate this shares with flash_attn),
default scale 1/√d, no dropout. xformers picks the kernel (its FlashAttention-2/3 or CUTLASS
ones, by dtype, GPU and bias); the one it picked is recorded as ``xformers_op``.

- ``full.naive``, ``full.sdpa``, ``full.chunked``: no bias, or ``LowerTriangularMask()`` when
  causal.
- ``sparse.sliding_window`` with dilation 1 and no global tokens, W the window:
  ``LocalAttentionFromBottomRightMask(window_left=W/2, window_right=W/2)``: query q sees key k
  when q − W/2 ≤ k + s ≤ q + W/2, s = n_queries − n_keys = 0 here, i.e. |i − j| ≤ W/2, the
  variant's band. Causal: ``LowerTriangularFromBottomRightLocalAttentionMask(W/2 + 1)``: a query
  at distance X from the last query sees the keys at distance X to X + window_size − 1 from the
  last key, i.e. i − W/2 ≤ j ≤ i (window_size counts the query's own key). The causal class is
  used rather than ``LocalAttentionFromBottomRightMask(W/2, 0)`` (the same set of keys) because
  xformers' CUTLASS kernel, its float32 one, takes it; the two-sided one runs on its flash
  kernels only.

Refused, with the reason (`supports`): dilated bands and global tokens (no single band),
BigBird (xformers has no exact form of its global and random blocks: its biases are causal,
local-band and block-diagonal masks for packed sequences, and a dense (n, n) tensor bias
would compute every score, which is masked_sdpa's measurement, not a sparse kernel), and the
designs that are no mask over softmax(QKᵀ/√d)·V. The ``cuda`` backend only (xformers' kernels
are CUDA kernels). Dtypes (`supports_dtype`, asked by the driver; training is checked when the
module is called): float32, float16 and bfloat16, except the two-sided band in float32 (flash
kernels only) and a band in float32 training (xformers' CUTLASS backward has no local mask).
Where xformers itself finds no kernel for the inputs (an old GPU, an odd head size) its
NotImplementedError becomes the case's ``unsupported`` reason, on one line.

Memory (`peak_estimate`): O(n), `band_kernels.kernel_peak`: torch's fused-kernel estimate on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import Unsupported
from attnbench.core.registry import register_impl
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.impls.band_kernels import (
    Band,
    BnhdAttention,
    band_of,
    dtype_name,
    find_core,
    kernel_peak,
    one_line,
    pattern_refusal,
    place,
)
from attnbench.workloads.impls.base import Implementation
from attnbench.workloads.shape import Shape

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant

DTYPES = ("float32", "float16", "bfloat16")
INSTALL = "pip install xformers, built for this torch's CUDA; needs an NVIDIA GPU"
OWN_REASONS = {
    "sparse.bigbird": (
        "xformers has no exact form of BigBird's global and random blocks: its attention biases are causal, "
        "local-band and block-diagonal (packed sequences) masks, and a dense (n, n) tensor bias would compute "
        "every score (masked_sdpa measures that), not a sparse kernel"
    ),
}


@dataclass(frozen=True)
class _Library:
    ops: Any | None  # xformers.ops
    version: str | None
    missing: str | None


@functools.cache
def _library() -> _Library:
    """xformers.ops, imported once; or why it cannot be."""
    if importlib.util.find_spec("xformers") is None:
        return _Library(None, None, f"xformers is not installed ({INSTALL})")
    try:
        import xformers
        import xformers.ops as ops
        from xformers.ops.fmha import attn_bias  # noqa: F401  (the masks below)
    except Exception as exc:  # a build for another torch or CUDA fails here, in many ways
        return _Library(None, None, f"xformers is installed but does not import: {one_line(exc, 200)}")
    return _Library(ops, str(getattr(xformers, "__version__", "unknown")), None)


def xformers_dtype_refusal(band: Band, dtype: str) -> str | None:
    if dtype not in DTYPES:
        return f"xformers' memory-efficient kernels take float32, float16 or bfloat16, not {dtype}"
    if dtype == "float32" and band.reach is not None and not band.causal:
        return (
            "xformers runs its two-sided local mask (LocalAttentionFromBottomRightMask) on its flash kernels "
            "only, which take float16 or bfloat16, not float32"
        )
    return None


def xformers_training_refusal(band: Band, dtype: str, grad: bool) -> str | None:
    """A band in float32 runs on xformers' CUTLASS kernel, whose backward takes no local mask."""
    if grad and dtype == "float32" and band.reach is not None:
        return (
            "xformers' float32 kernel (CUTLASS) has no backward for a local band; its flash kernels "
            "(float16, bfloat16) have"
        )
    return None


def bias_spec(band: Band) -> tuple[str, dict[str, int]] | None:
    """The xformers.ops.fmha.attn_bias class and arguments that are `band`, or None (no bias)."""
    if band.reach is None:
        return ("LowerTriangularMask", {}) if band.causal else None
    if band.causal:  # keys i − reach … i: window_size counts the query's own key
        return "LowerTriangularFromBottomRightLocalAttentionMask", {"_window_size": band.reach + 1}
    return "LocalAttentionFromBottomRightMask", {"window_left": band.reach, "window_right": band.reach}


def make_bias(band: Band) -> Any:
    """The xformers bias object for `band` (needs xformers)."""
    spec = bias_spec(band)
    if spec is None:
        return None
    from xformers.ops.fmha import attn_bias

    name, kwargs = spec
    return getattr(attn_bias, name)(*kwargs.values())  # positional: the private field's name varies


def describe_bias(band: Band) -> str:
    spec = bias_spec(band)
    if spec is None:
        return "None"
    name, kwargs = spec
    args = ", ".join(f"{key.lstrip('_')}={value}" for key, value in kwargs.items())
    return f"{name}({args})"


class XformersCore(BnhdAttention):
    def __init__(self, native: nn.Module, band: Band) -> None:
        super().__init__(native, band)
        self._bias: Any = None
        self._bias_made = False
        self._ops: dict[tuple[Any, ...], str | None] = {}  # (shape, dtype, grad) -> the op xformers picked

    def refusal(self, q: Tensor) -> str | None:
        dtype = dtype_name(q.dtype)
        reason = xformers_dtype_refusal(self.band, dtype)
        if reason:
            return reason
        if q.device.type != "cuda":
            return f"xformers' memory-efficient kernels run on CUDA tensors only here, not {q.device.type}"
        return xformers_training_refusal(self.band, dtype, torch.is_grad_enabled() and q.requires_grad)

    def bias(self) -> Any:
        if not self._bias_made:
            self._bias, self._bias_made = make_bias(self.band), True
        return self._bias

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        lib = _library()
        if lib.ops is None:
            raise Unsupported(f"implementation xformers is not available here: {lib.missing}")
        bias = self.bias()
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        key = (tuple(q.shape), str(q.dtype), grad)
        if key not in self._ops:
            self._ops[key] = _picked_op(q, k, v, bias, grad)  # once per kind of call: the warm-up's
        self.last_call = {"attn_bias": describe_bias(self.band), "xformers_op": self._ops[key]}
        try:
            return lib.ops.memory_efficient_attention(q, k, v, attn_bias=bias)
        except NotImplementedError as exc:  # xformers found no kernel for these inputs, and says why
            raise Unsupported(f"xformers has no kernel for this case: {one_line(exc)}") from None


def _picked_op(q: Tensor, k: Tensor, v: Tensor, bias: Any, grad: bool) -> str | None:
    """The name of the forward kernel xformers dispatches these inputs to (its private
    dispatcher, so None where that has moved), for the record."""
    try:
        from xformers.ops.fmha import Inputs
        from xformers.ops.fmha.dispatch import _dispatch_fw

        return str(_dispatch_fw(Inputs(query=q, key=k, value=v, attn_bias=bias), grad).NAME)
    except Exception:
        return None


@register_impl
class XformersImpl(Implementation):
    name = "xformers"
    summary = "xformers.ops.memory_efficient_attention: dense, causal, or Longformer's band as a local-attention bias"

    @classmethod
    def availability(cls) -> str | None:
        return _library().missing

    @classmethod
    def supports(cls, variant: type[AttentionVariant], params: Any, scope: str, backend: str) -> str | None:
        reason = pattern_refusal(variant, params, "xformers", OWN_REASONS)
        if reason:
            return reason
        if backend != "cuda":
            return f"xformers' memory-efficient kernels run on NVIDIA GPUs: the cuda backend only, not {backend}"
        return None

    @classmethod
    def supports_dtype(cls, variant: type[AttentionVariant], params: Any, dtype: str) -> str | None:
        """Why it cannot run a case of this variant in `dtype`, else None; asked by the driver
        before it starts a worker, once `supports` has accepted the pattern (the module raises the
        same reason if called anyway)."""
        return xformers_dtype_refusal(band_of(variant, params), dtype)

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        band = band_of(variant, params)
        return place(variant, params, shape, scope, lambda native: XformersCore(native, band))

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        core = find_core(module)
        if core is None or not core.last_call:
            return {}
        return {
            "kernel": "xformers.ops.memory_efficient_attention",
            "xformers_version": _library().version,
            **core.last_call,
        }

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
        return kernel_peak(shape, scope, itemsize, mode)
