"""2:4 semi-structured sparsity of linear weights as a transform (torch.sparse semi-structured
kernels: CUDA of compute capability 8.0+, float16/bfloat16, forward)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from attnbench.engine.transforms.base import Applied, Transform, TransformUnsupported
from attnbench.engine.transforms.fidelity import Tolerance
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case


def mask_2to4(w: Tensor) -> Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive along the input dimension."""
    rows, cols = w.shape
    groups = w.detach().abs().reshape(rows, cols // 4, 4)
    top = groups.topk(2, dim=-1).indices
    import torch

    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(rows, cols)


@register_transform
class Prune24(Transform):
    name = "prune_24"
    summary = "2:4 semi-structured sparsity of linear weights (CUDA)"
    # Magnitude 2:4 of unstructured (random, untrained) weights is a large change, unrecovered
    # without fine-tuning. The same masks applied densely on the CPU (layer, heads 8, head_dim 64,
    # n 256): rel_err 0.118, cosine 0.993 (what the layer adds: rel_err 0.6); fp16/bf16 adds ~1e-3.
    tolerance = Tolerance(rel_err=0.25, min_cosine=0.97)

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        import torch
        from torch import nn

        if case.backend != "cuda":
            raise TransformUnsupported(
                "2:4 semi-structured sparse kernels (torch.sparse.to_sparse_semi_structured) need CUDA, "
                f"compute capability 8.0+; not {case.backend}"
            )
        if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)):
            raise TransformUnsupported("2:4 semi-structured sparsity needs a CUDA device of compute capability 8.0+")
        if case.dtype not in ("float16", "bfloat16"):
            raise TransformUnsupported(f"2:4 semi-structured kernels run float16/bfloat16 here, not {case.dtype}")
        if case.mode != "forward":
            raise TransformUnsupported("2:4 semi-structured weights are inference-only here; forward mode only")
        linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TransformUnsupported(f"{case.variant} at {case.scope} scope has no linear layers (use --scope layer)")
        from torch.sparse import to_sparse_semi_structured

        sparse = copy.deepcopy(module).to("cuda", getattr(torch, case.dtype))
        done = []
        for name, lin in [(n, m) for n, m in sparse.named_modules() if isinstance(m, nn.Linear)]:
            w = lin.weight.detach()
            lin.weight = nn.Parameter(to_sparse_semi_structured(w * mask_2to4(w)), requires_grad=False)
            done.append(name)
        details = {
            "method": "magnitude 2:4 mask per 4 input weights, torch.sparse.to_sparse_semi_structured",
            "sparsified_layers": done,
        }
        return Applied("prune_24", sparse, None, details, self.tolerance, metrics_module=sparse)
