"""Transforms by name: each kind's module registers its classes here on import (the package
imports every built-in kind), and the worker applies the one a case names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from attnbench.engine.transforms.base import Applied, Transform

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case

# name -> class, in the order the kinds register (the order error messages list them in)
TRANSFORMS: dict[str, type[Transform]] = {}

T = TypeVar("T", bound="type[Transform]")


def register_transform(cls: T) -> T:
    TRANSFORMS[cls.name] = cls
    return cls


def check_names(names: Iterable[str], what: str = "transform") -> tuple[str, ...]:
    """Validated, de-duplicated transform names; ValueError names the bad one and the choices."""
    out = []
    for n in names:
        if n not in TRANSFORMS:
            raise ValueError(f"unknown {what} '{n}'; choose from {', '.join(TRANSFORMS)}")
        out.append(n)
    return tuple(dict.fromkeys(out))


def apply_transform(case: Case, module: nn.Module, inputs: tuple[Tensor, ...], seed: int) -> Applied:
    """The case's transform applied to its freshly built module (see Transform.applied_to)."""
    return TRANSFORMS[getattr(case, "transform", "none")]().applied_to(module, inputs, case, seed)
