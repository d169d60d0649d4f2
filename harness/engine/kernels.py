"""Which attention kernels a call really used, recorded from torch's dispatcher.

`full.sdpa` may run flash, memory-efficient, cuDNN or the math fallback depending on the
device, dtype and shape, and a compiler can rewrite a "naive" graph into a fused kernel;
a figure labelled with the variant's name must say which kernel produced it.
"""

from __future__ import annotations

from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

from attnbench.backends.base import Step

# Substrings of aten op names that identify how attention was computed.
ATTENTION_MARKERS = ("scaled_dot_product", "attention", "softmax", "bmm", "baddbmm", "matmul", "mm")


class _OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket.__name__)
        self.names[name] = self.names.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def attention_ops(step: Step) -> dict[str, int]:
    """aten ops of one call whose names mark the attention computation, with their counts."""
    recorder = _OpNames()
    with recorder:
        step()
    return {n: c for n, c in sorted(recorder.names.items()) if any(m in n for m in ATTENTION_MARKERS)}
