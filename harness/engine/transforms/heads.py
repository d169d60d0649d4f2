"""Structured head pruning as a transform, and the head helpers distillation shares: pre-norm
layers (layer scope) on torch eager backends."""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

from attnbench.engine.transforms.base import (
    Applied,
    Transform,
    TransformUnsupported,
    module_bytes,
    require_torch_backend,
)
from attnbench.engine.transforms.fidelity import Tolerance
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case

HEAD_PRUNE_FRACTION = 0.25  # share of attention heads `prune_heads` removes


def head_importance(layer: nn.Module) -> list[float]:
    """L2 norm of each head's columns of the output projection: how much the head can write
    into the residual stream (the stated criterion; weights only, no data)."""
    w = layer.proj.weight.detach()  # (D, h·d)
    d = layer.head_dim
    return [w[:, i * d : (i + 1) * d].norm().item() for i in range(layer.heads)]


def make_pruned_layer(layer: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of a PreNormLayer that keeps only the heads in `keep` (their q, k, v rows and
    output-projection columns); LayerNorms and the FFN are copied unchanged."""
    import torch
    from torch import nn

    h, d = layer.heads, layer.head_dim
    D = h * d
    attention = layer.attention
    if any(True for _ in attention.parameters()):
        raise TransformUnsupported(f"{attention.name} has per-head weights of its own; pruning them is not implemented")
    shape = dataclasses.replace(attention.shape, heads=len(keep))
    idx = torch.cat([torch.arange(s * D + i * d, s * D + (i + 1) * d) for s in range(3) for i in keep])
    cols = torch.cat([torch.arange(i * d, (i + 1) * d) for i in keep])

    class PrunedLayer(nn.Module):
        """PreNormLayer with fewer heads: QKV (D -> 3·h'·d), attention on h' heads, proj (h'·d -> D)."""

        def __init__(self) -> None:
            super().__init__()
            self.heads, self.head_dim = len(keep), d
            self.attention = type(attention)(attention.params, shape)
            self.norm1 = copy.deepcopy(layer.norm1)
            self.qkv = nn.Linear(D, 3 * len(keep) * d)
            self.proj = nn.Linear(len(keep) * d, D)
            self.norm2 = copy.deepcopy(layer.norm2)
            self.ffn = copy.deepcopy(layer.ffn)
            with torch.no_grad():
                self.qkv.weight.copy_(layer.qkv.weight[idx])
                self.qkv.bias.copy_(layer.qkv.bias[idx])
                self.proj.weight.copy_(layer.proj.weight[:, cols])
                self.proj.bias.copy_(layer.proj.bias)

        def forward(self, x: Tensor) -> Tensor:
            B, n, _ = x.shape
            qkv = self.qkv(self.norm1(x)).view(B, n, 3, self.heads, self.head_dim)  # (B, n, 3, h', d)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h', n, d)
            a = self.attention(q, k, v).transpose(1, 2).reshape(B, n, self.heads * self.head_dim)  # (B, n, h'·d)
            x = x + self.proj(a)
            return x + self.ffn(self.norm2(x))

    return PrunedLayer()


def heads_to_keep(layer: nn.Module, fraction: float) -> tuple[list[int], list[float]]:
    scores = head_importance(layer)
    drop = min(len(scores) - 1, max(1, round(fraction * len(scores))))
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))  # least important first
    return sorted(order[drop:]), scores


def is_layer(module: nn.Module) -> bool:
    from attnbench.workloads.layer import PreNormLayer

    return isinstance(module, PreNormLayer)


def needs_layer(module: nn.Module, case: Case, what: str) -> None:
    if case.scope != "layer":
        raise TransformUnsupported(f"{what} needs layer scope (weights to prune); core attention has none")
    if not is_layer(module):
        raise TransformUnsupported(
            f"{what} is implemented for the pre-norm layer (qkv/proj/ffn); {case.variant} builds "
            f"{type(module).__name__}"
        )


@register_transform
class PruneHeads(Transform):
    name = "prune_heads"
    summary = f"remove {HEAD_PRUNE_FRACTION:.0%} of heads, smallest output-projection norm first (layer scope)"
    fraction = HEAD_PRUNE_FRACTION
    # Random (untrained) heads contribute about equally, so removing a quarter of them removes
    # about a quarter of the attention's contribution; the residual stream and the FFN keep the
    # rest. Measured here (layer, heads 8, head_dim 64, n 256): rel_err 1.3e-2 (what the layer
    # adds: 6.7e-2).
    tolerance = Tolerance(rel_err=5e-2, min_cosine=0.998)

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        require_torch_backend(case)
        needs_layer(module, case, "head pruning")
        if case.heads < 2:
            raise TransformUnsupported("head pruning needs at least 2 heads")
        keep, scores = heads_to_keep(module, self.fraction)
        pruned = make_pruned_layer(module, keep)
        details = {
            "criterion": "L2 norm of each head's output-projection columns (smallest removed)",
            "fraction": self.fraction,
            "heads_before": case.heads,
            "heads_after": len(keep),
            "kept_heads": keep,
            "importance": scores,
            "weight_bytes_before": module_bytes(module),
            "weight_bytes_after": module_bytes(pruned),
            "note": "flops in the record are the unpruned model's; the pruned layer does less work",
        }
        return Applied("prune_heads", pruned, None, details, self.tolerance, metrics_module=pruned)
