"""torch.autocast to bfloat16 or float16 as a transform: float32 cases, torch eager backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnbench.engine.transforms.base import Applied, Transform, TransformUnsupported, require_torch_backend
from attnbench.engine.transforms.fidelity import Tolerance
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from attnbench.core.cases import Case

AUTOCAST_TOLERANCE = {
    # 8 mantissa bits (bf16) and 11 (fp16) through matmuls and softmax, accumulated in fp32.
    # Measured here (heads 8, head_dim 64, n 256-512): bf16 rel_err 4-5e-3 on bare attention,
    # 9e-4 on a layer; fp16 5-7e-4 and 1e-4. About 4x margin.
    "bfloat16": Tolerance(rel_err=2e-2, min_cosine=0.9998),
    "float16": Tolerance(rel_err=3e-3, min_cosine=0.99999),
}


class AutocastModule:
    """Factory for a module that runs its inner module under torch.autocast (built lazily: torch import)."""

    @staticmethod
    def wrap(inner: nn.Module, device_type: str, dtype: torch.dtype) -> nn.Module:
        import torch

        class Autocast(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Tensor) -> Tensor:
                with torch.autocast(device_type=device_type, dtype=dtype):
                    return self.inner(*args)

        return Autocast()


@register_transform
class AutocastBf16(Transform):
    name = "autocast_bf16"
    summary = "torch.autocast to bfloat16"
    low = "bfloat16"  # the dtype autocast runs matmul-class ops in

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        import torch

        low = self.low
        require_torch_backend(case)
        if case.dtype != "float32":
            raise TransformUnsupported(f"autocast to {low} applies to float32 cases; this case is {case.dtype}")
        dtype = getattr(torch, low)
        if not torch.amp.is_autocast_available(case.backend):
            raise TransformUnsupported(f"torch has no autocast for {case.backend}")
        if case.backend == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise TransformUnsupported("this CUDA device does not support bfloat16")
        details = {
            "autocast_dtype": low,
            "device_type": case.backend,
            "what": "matmul-class ops in the low dtype, reductions and softmax as autocast's op lists say",
        }
        return Applied(
            self.name,
            AutocastModule.wrap(module, case.backend, dtype),
            None,
            details,
            AUTOCAST_TOLERANCE[low],
            metrics_module=module,
        )


@register_transform
class AutocastFp16(AutocastBf16):
    name = "autocast_fp16"
    summary = "torch.autocast to float16"
    low = "float16"
