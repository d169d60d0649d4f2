"""The "none" transform: the variant as built, the baseline every transform is compared with.
It leaves the case, its id and its record as they were."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnbench.engine.transforms.base import Applied, Transform
from attnbench.engine.transforms.registry import register_transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case


@register_transform
class NoTransform(Transform):
    name = "none"
    summary = "the variant as built (the baseline every transform is compared with)"

    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        return Applied("none", module, None, metrics_module=module)

    def applied_to(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        return self.apply(module, inputs, case, seed)  # nothing to compare with: no copy, no timing
