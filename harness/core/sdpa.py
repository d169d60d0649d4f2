"""Which kernel torch's scaled_dot_product_attention runs for a case, as its backend reports it.

Memory estimates depend on it: the math fallback materialises the n×n scores, the fused
kernels (flash, memory-efficient, cuDNN) keep O(n) state. The backend decides (see
`Backend.sdpa_choice`), the variants' estimates read it; it lives here because both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

FUSED_KERNELS = ("flash", "efficient", "cudnn")
KERNELS = (*FUSED_KERNELS, "math")


@dataclass(frozen=True)
class SdpaChoice:
    kernel: str = "math"  # flash | efficient | cudnn | math
    device: str = "cpu"  # device type the kernel runs on: its scratch memory differs
    threads: int = 1  # CPU threads: the CPU flash kernel keeps one block buffer per thread
    how: str = "assumed: no fused kernel known for this backend"  # where the choice came from
    # The backend runs a traced or exported graph (ONNX Runtime, torch-xla), not eager kernels:
    # a kernel's Python-level grouping of blocks does not bound its memory there.
    graph: bool = False

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown SDPA kernel {self.kernel!r}; expected one of {', '.join(KERNELS)}")

    @property
    def fused(self) -> bool:
        return self.kernel in FUSED_KERNELS


MATH = SdpaChoice()
