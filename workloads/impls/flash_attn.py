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

The shared pieces (the `Band` a library kernel computes, the (B, n, h, d) wrapper, placing it
in the variant's own layer, the memory estimate) live here and `xformers` reuses them.

Layout. The transpose to (B, n, h, d) and back is a view (both libraries need only unit stride
in d), done inside the timed call as a model written for the library would hold its tensors:
in the layer scope q, k, v are views of the fused QKV projection (B, n, 3, h, d), whose natural
layout is (B, n, h, d), and the layer's ``transpose(1, 2).reshape(B, n, D)`` of the result is
then free too.

Memory (`peak_estimate`): O(n), as torch's fused kernels (`fused_sdpa_peak` on a GPU): the
output and a float32 log-sum-exp per row, in training dQ, dK, dV, the output's gradient and a
float32 dQ accumulator; padded copies of q, k, v where the head size is not a multiple of 8.
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
from attnbench.workloads.full import fused_sdpa_peak, output_bytes
from attnbench.workloads.impls.base import Implementation
from attnbench.workloads.layer import PreNormLayer
from attnbench.workloads.shape import Shape

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant

FULL_VARIANTS = ("full.naive", "full.sdpa", "full.chunked")
SLIDING_WINDOW = "sparse.sliding_window"
BUILT = (*FULL_VARIANTS, SLIDING_WINDOW)
HALF_DTYPES = ("float16", "bfloat16")
MAX_HEAD_DIM = 256  # flash-attn 2's kernels
MIN_CAPABILITY = (8, 0)  # Ampere: flash-attn 2 raises on older GPUs
INSTALL = "pip install flash-attn --no-build-isolation; needs CUDA and an NVIDIA GPU"
# The memory estimate's kernel: fused, on a GPU, as torch's own fused kernels.
FUSED_GPU = SdpaChoice("flash", "cuda", 1, "a library's fused kernel (flash_attn / xformers)")
OWN_REASONS = {
    "sparse.bigbird": (
        "flash_attn_func takes a causal flag and one (left, right) window; BigBird's global and random "
        "blocks are neither (with attention=full BigBird is dense: time full.sdpa with flash_attn)"
    ),
}


# --- shared with `xformers`: the pattern, the wrapper, the layer, the memory -------------------------
@dataclass(frozen=True)
class Band:
    """The keys each query sees: j ≥ i − reach and j ≤ i + reach (reach None: every key), and
    j ≤ i when causal. What a library kernel is asked to compute, in the variant's terms."""

    causal: bool
    reach: int | None = None

    def mask(self, n: int) -> Tensor:
        """(n, n) bool: True where query i sees key j, by the rule above."""
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if self.reach is not None:
            allowed &= (j >= i - self.reach) & (j <= i + self.reach)
        if self.causal:
            allowed &= j <= i
        return allowed


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pattern_refusal(variant: type[AttentionVariant], params: Any, library: str, own: dict[str, str]) -> str | None:
    """Why `library` (a causal flag and one band of keys) cannot compute the variant's pattern
    with these parameters, or None. `own`: the library's reasons for particular variants."""
    name = variant.name
    if name in own:
        return own[name]
    if name not in BUILT:
        return (
            f"{library} has no form of {name}: it computes dense attention, causal or not, and one "
            f"local band (it runs {', '.join(BUILT)})"
        )
    if name == SLIDING_WINDOW:
        if params.dilation != 1:
            r = params.dilation
            return (
                f"{library} computes one contiguous band; dilation={r} keeps every {r}-th key within "
                f"±{r * (params.window // 2)}, which no (left, right) window expresses"
            )
        if params.global_tokens:
            return (
                f"{library} computes one band; Longformer's {params.global_tokens} global rows and "
                "columns (they see every key, every query sees them) are no (left, right) window"
            )
    return None


def band_of(variant: type[AttentionVariant], params: Any) -> Band:
    """The variant's pattern as a Band; only for what `pattern_refusal` accepts."""
    if variant.name in FULL_VARIANTS:
        return Band(causal=params.causal)
    if variant.name == SLIDING_WINDOW and params.dilation == 1 and not params.global_tokens:
        return Band(causal=params.causal, reach=params.window // 2)
    raise Unsupported(f"no single band expresses {variant.name} with {params}")


class BnhdAttention(nn.Module):
    """(B, h, n, d) q, k, v -> (B, h, n, d) through a library kernel taking (B, n, h, d).

    A subclass says why it cannot take these tensors (`refusal`: dtype, device, head size) and
    calls the library (`attend`). Holds the variant's own module for its parameters (the layers
    around an attention read them) and what its last call ran, for case_metrics."""

    def __init__(self, native: nn.Module, band: Band) -> None:
        super().__init__()
        self.native = native
        self.band = band
        self.last_call: dict[str, Any] = {}

    @property
    def params(self) -> Any:
        return self.native.params

    def refusal(self, q: Tensor) -> str | None:
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, n, h, d) views -> (B, n, h, d)."""
        raise NotImplementedError

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        reason = self.refusal(q)
        if reason:
            raise Unsupported(reason)
        # Views, not copies (module docstring): the library's layout, as part of the call.
        out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, n, h, d)
        return out.transpose(1, 2)  # (B, h, n, d), a view


def place(
    variant: type[AttentionVariant],
    params: Any,
    shape: Shape,
    scope: str,
    make_core: Callable[[nn.Module], BnhdAttention],
) -> nn.Module:
    """The core module, or the variant's own layer (built as native builds it: the same
    weights) with the core in place of its attention."""
    if scope == "core":
        return make_core(variant(params, shape))
    layer = variant.build(params, shape, scope)
    if type(layer) is not PreNormLayer or not isinstance(layer.attention, variant):
        raise Unsupported(f"{variant.name}'s layer is {type(layer).__name__}, not the plain pre-norm layer")
    layer.attention = make_core(layer.attention)
    return layer


def find_core(module: nn.Module) -> BnhdAttention | None:
    return next((m for m in module.modules() if isinstance(m, BnhdAttention)), None)


def kernel_peak(shape: Shape, scope: str, itemsize: int, mode: str, padded_inputs: bool = False) -> int:
    """A generous peak above the inputs: the fused kernel's O(n) state (`fused_sdpa_peak` on a
    GPU), one more output for a caller's contiguous copy of the transposed result, padded
    copies of q, k, v (`padded_inputs`), and in the layer scope the layer's activations and
    weights (as `AttentionVariant.case_peak_estimate` counts them)."""
    train = mode == "train"
    out = output_bytes(shape, itemsize)
    peak = fused_sdpa_peak(shape, itemsize, train, FUSED_GPU) + out
    if padded_inputs:
        peak += 3 * out * (2 if train else 1)  # q, k, v padded (and their gradients)
    if scope == "layer":
        peak += PreNormLayer.activation_bytes(shape, itemsize) * (4 if train else 2)
        peak += PreNormLayer.weight_bytes(shape, itemsize) * (3 if train else 1)
    return peak


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (libraries explain over many), cut at `limit`."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
