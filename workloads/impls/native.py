"""`native`: the variant's own module, today's path and the default of the `impl` axis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from attnbench.core.registry import register_impl
from attnbench.workloads.impls.base import Implementation
from attnbench.workloads.shape import Shape

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant


@register_impl
class NativeImpl(Implementation):
    name = "native"
    summary = "the variant's own eager PyTorch module"

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        return variant.build(params, shape, scope)

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        # The variant's own figures are gathered by the worker for every impl; native adds none.
        return {}

    @classmethod
    def verify_module(cls, variant: type[AttentionVariant], params: Any, shape: Shape) -> nn.Module:
        return variant(params, shape)
