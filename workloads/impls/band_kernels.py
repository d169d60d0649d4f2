"""What the GPU library kernels (`flash_attn`, `xformers`) share: the `Band` such a kernel
computes (dense, causal, or one local band) and which variants and parameters are one; the
(B, h, n, d) -> (B, n, h, d) wrapper around a library call; placing it in the variant's own
layer; and their memory estimate.

Layout. The transpose to (B, n, h, d) and back is a view (both libraries need only unit stride
in d), done inside the timed call as a model written for the library would hold its tensors:
in the layer scope q, k, v are views of the fused QKV projection (B, n, 3, h, d), whose natural
layout is (B, n, h, d), and the layer's ``transpose(1, 2).reshape(B, n, D)`` of the result is
then free too.

Memory (`kernel_peak`): O(n), as torch's fused kernels (`fused_sdpa_peak` on a GPU): the
output and a float32 log-sum-exp per row, in training dQ, dK, dV, the output's gradient and a
float32 dQ accumulator; padded copies of q, k, v where a library pads the head size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import Unsupported
from attnbench.core.sdpa import SdpaChoice
from attnbench.workloads.full import fused_sdpa_peak, output_bytes
from attnbench.workloads.layer import PreNormLayer
from attnbench.workloads.shape import Shape

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant

FULL_VARIANTS = ("full.naive", "full.sdpa", "full.chunked")
SLIDING_WINDOW = "sparse.sliding_window"
BUILT = (*FULL_VARIANTS, SLIDING_WINDOW)
# The memory estimate's kernel: fused, on a GPU, as torch's own fused kernels.
FUSED_GPU = SdpaChoice("flash", "cuda", 1, "a library's fused kernel (flash_attn / xformers)")


@dataclass(frozen=True)
class Band:
    """The keys each query sees: j ≥ i − reach and j ≤ i + reach (reach None: every key), and
    j ≤ i when causal. What a library kernel is asked to compute, in the variant's terms."""

    causal: bool
    reach: int | None = None


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
