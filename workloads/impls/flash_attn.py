"""`flash_attn`: Dao-AILab's flash-attn (FlashAttention-2), ``flash_attn.flash_attn_func``.

What runs. One ``flash_attn_func(q, k, v, causal=..., window_size=...)`` call on (B, n, h, d)
views of the harness's (B, h, n, d) tensors, default scale 1/√d, no dropout:

- ``full.naive``, ``full.sdpa``, ``full.chunked``: ``causal`` as the case's, no window.
- ``sparse.sliding_window`` with dilation 1 and no global tokens: ``window_size = (W/2, W/2)``,
  or ``(W/2, 0)`` with ``causal=True``. flash-attn's rule (its docstring; seqlen_q = seqlen_k
  here) is that query i sees keys i − left … i + right inclusive, so that is exactly the
  variant's ``|i − j| ≤ W/2`` (``i − W/2 ≤ j ≤ i`` when causal); a window at least n long is
  no limit, as in the variant.

Everything else is refused with a reason (`supports`): dilated bands and global tokens (no
single window expresses them), BigBird's global and random blocks, and the designs that are no
mask over softmax(QKᵀ/√d)·V. The library runs on NVIDIA GPUs of compute capability 8.0+ (the
``cuda`` backend), in float16 or bfloat16 only, with head sizes up to 256: a case in float32
is refused by `supports_dtype`, in the driver, before any worker starts (the module raises the
same ``Unsupported`` if called with it anyway).

Verification. The worker rounds its float64 probe inputs to the case's dtype, runs the module
in that dtype and compares with the float64 reference at the dtype's tolerance
(``VERIFY_TOLERANCE``: 1e-2 for float16, 5e-2 for bfloat16), so a half-precision kernel is
checked as it is timed; the default `verify_module` (the core module) and `verify_reference`
(the variant's dense reference) apply.

The band, the (B, n, h, d) wrapper (a view: see its layout note), the layer placement and the
O(n) memory estimate are `attnbench.workloads.impls.band_kernels`, shared with `xformers`; here
the estimate adds flash-attn's padded copies of q, k, v where the head size is not a multiple of 8.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import Unsupported
from attnbench.core.registry import register_impl
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.impls.band_kernels import (
    SLIDING_WINDOW,
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

HALF_DTYPES = ("float16", "bfloat16")
MAX_HEAD_DIM = 256  # flash-attn 2's kernels
MIN_CAPABILITY = (8, 0)  # Ampere: flash-attn 2 raises on older GPUs
INSTALL = "pip install flash-attn --no-build-isolation; needs CUDA and an NVIDIA GPU"
OWN_REASONS = {
    "sparse.bigbird": (
        "flash_attn_func takes a causal flag and one (left, right) window; BigBird's global and random "
        "blocks are neither (with attention=full BigBird is dense: time full.sdpa with flash_attn)"
    ),
}


# --- flash-attn ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Library:
    func: Callable[..., Tensor] | None
    version: str | None
    takes_window: bool  # window_size: flash-attn 2.3 and later
    missing: str | None


@functools.cache
def _library() -> _Library:
    """flash_attn_func, imported once; or why it cannot be."""
    if importlib.util.find_spec("flash_attn") is None:
        return _Library(None, None, False, f"flash-attn is not installed ({INSTALL})")
    try:
        import flash_attn
        from flash_attn import flash_attn_func
    except Exception as exc:  # a build for another torch or CUDA fails here, in many ways
        return _Library(None, None, False, f"flash-attn is installed but does not import: {one_line(exc, 200)}")
    try:
        takes_window = "window_size" in inspect.signature(flash_attn_func).parameters
    except (TypeError, ValueError):  # no signature to read: assume a current version
        takes_window = True
    return _Library(flash_attn_func, str(getattr(flash_attn, "__version__", "unknown")), takes_window, None)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    """The GPU's compute capability, read once (the check runs in every timed call)."""
    return torch.cuda.get_device_capability(index)


def flash_dtype_refusal(dtype: str) -> str | None:
    if dtype in HALF_DTYPES:
        return None
    return f"flash-attn computes in float16 or bfloat16 only, not {dtype}"


class FlashAttnCore(BnhdAttention):
    def refusal(self, q: Tensor) -> str | None:
        reason = flash_dtype_refusal(dtype_name(q.dtype))
        if reason:
            return reason
        if q.device.type != "cuda":
            return f"flash-attn runs on CUDA tensors only, not {q.device.type}"
        major, minor = _capability(q.device.index if q.device.index is not None else torch.cuda.current_device())
        if (major, minor) < MIN_CAPABILITY:
            return f"flash-attn 2 needs an Ampere or newer GPU (compute capability 8.0+); this one is {major}.{minor}"
        if q.shape[-1] > MAX_HEAD_DIM:
            return f"flash-attn takes head_dim at most {MAX_HEAD_DIM}, got {q.shape[-1]}"
        return None

    def window(self) -> tuple[int, int] | None:
        """flash-attn's (left, right): query i sees keys i − left … i + right; None: no window."""
        reach = self.band.reach
        if reach is None:
            return None
        return (reach, 0 if self.band.causal else reach)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        lib = _library()
        if lib.func is None:
            raise Unsupported(f"implementation flash_attn is not available here: {lib.missing}")
        window = self.window()
        self.last_call = {"causal": self.band.causal, "window_size": None if window is None else list(window)}
        if window is None:
            return lib.func(q, k, v, causal=self.band.causal)
        return lib.func(q, k, v, causal=self.band.causal, window_size=window)


@register_impl
class FlashAttnImpl(Implementation):
    name = "flash_attn"
    summary = "flash-attn's flash_attn_func (FlashAttention-2): dense, causal, or Longformer's band via window_size"

    @classmethod
    def availability(cls) -> str | None:
        return _library().missing

    @classmethod
    def supports(cls, variant: type[AttentionVariant], params: Any, scope: str, backend: str) -> str | None:
        reason = pattern_refusal(variant, params, "flash-attn", OWN_REASONS)
        if reason:
            return reason
        lib = _library()
        if variant.name == SLIDING_WINDOW and lib.func is not None and not lib.takes_window:
            return f"flash-attn {lib.version} has no window_size (2.3 and later have), so no local band"
        if backend != "cuda":
            return f"flash-attn runs on NVIDIA GPUs: the cuda backend only, not {backend}"
        return None

    @classmethod
    def supports_dtype(cls, variant: type[AttentionVariant], params: Any, dtype: str) -> str | None:
        """Why it cannot run a case in `dtype` (float32: flash-attn computes in half precision
        only), else None; asked by the driver before it starts a worker."""
        return flash_dtype_refusal(dtype)

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        band = band_of(variant, params)
        return place(variant, params, shape, scope, lambda native: FlashAttnCore(native, band))

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        core = find_core(module)
        if core is None or not core.last_call:
            return {}
        return {"kernel": "flash_attn.flash_attn_func", "flash_attn_version": _library().version, **core.last_call}

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
        # flash_attn_func pads q, k, v to a head size that is a multiple of 8 (copies).
        return kernel_peak(shape, scope, itemsize, mode, padded_inputs=shape.head_dim % 8 != 0)
