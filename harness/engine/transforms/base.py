"""What a transform is (a `Transform` class, registered by name in
attnbench.engine.transforms.registry), what it hands the worker (`Applied`), and the checks
and helpers the kinds share."""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from attnbench.engine.transforms.fidelity import Tolerance, measure_fidelity

if TYPE_CHECKING:
    from torch import Tensor, nn

    from attnbench.core.cases import Case

TORCH_BACKENDS = ("cpu", "cuda")


class TransformUnsupported(Exception):
    """The transform does not apply to this case; the message says why."""


@dataclass
class Applied:
    """The transformed module, what was done, and the untransformed module kept for fidelity."""

    name: str
    module: nn.Module  # what backend.prepare receives
    reference: nn.Module | None  # the untransformed module (a copy), None for "none"
    details: dict[str, Any] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    apply_s: float = 0.0  # seconds the transform itself took (quantise, prune, train)
    metrics_module: nn.Module | None = None  # the module a workload's case_metrics should read
    compiles_on_first_call: bool = False
    _on_start: Callable[[], None] | None = None
    _on_stop: Callable[[], list[str]] | None = None
    _on_finish: Callable[[], dict[str, Any]] | None = None

    def timed_start(self) -> None:
        if self._on_start:
            self._on_start()

    def timed_stop(self) -> list[str]:
        return self._on_stop() if self._on_stop else []

    def finish(self, inputs: tuple[Tensor, ...]) -> dict[str, Any]:
        """After timing: what ran (details), and fidelity against the float64 untransformed module."""
        if self._on_finish:
            self.details.update(self._on_finish())
        if self.reference is None or self.tolerance is None:
            return {"transform": self.name, "transform_details": None, "fidelity": None}
        return {
            "transform": self.name,
            "transform_details": self.details,
            "fidelity": measure_fidelity(self.module, self.reference, inputs, self.tolerance),
        }


class Transform(ABC):
    """One optimisation strategy: takes the module a case builds (the untransformed "teacher")
    and returns what is timed instead, with the fidelity it is expected to keep.

    A kind registers its class by name (attnbench.engine.transforms.registry.register_transform);
    `bench run --transforms NAME` picks it.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what it does, and where it applies

    @abstractmethod
    def apply(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        """The transformed module and what was done; raises TransformUnsupported when it does not apply."""

    def applied_to(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case, seed: int) -> Applied:
        """The transform applied to the case's freshly built module (float32, on the CPU).

        The untransformed module is copied first: backend.prepare moves and casts modules in
        place, and the fidelity check needs the original in float64.
        """
        if case.mode == "train" and getattr(module, "train_call", None) is not None:
            # The module trains in its own steps (e.g. one segment at a time), which a wrapper
            # hides (autocast) or runs uncompiled under the transform's name (torch.compile).
            raise TransformUnsupported(
                f"transform {case.transform} does not apply to a train case whose workload trains in its own steps "
                "(e.g. hierarchical.transformer_xl train_step=segment); run it without the transform"
            )
        reference = copy.deepcopy(module)
        t0 = time.perf_counter()
        applied = self.apply(module, inputs, case, seed)
        applied.apply_s = time.perf_counter() - t0
        applied.reference = reference
        applied.details["apply_s"] = applied.apply_s
        return applied


# --- checks and helpers the kinds share ------------------------------------------------------


def module_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in the state dict, packed int8 weights included."""
    import torch

    seen: set[int] = set()

    def size(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return obj.numel() * obj.element_size()  # 1 for qint8
        if isinstance(obj, (tuple, list)):
            return sum(size(o) for o in obj)
        return 0

    return sum(size(v) for v in module.state_dict().values())


def require_torch_backend(case: Case) -> None:
    if case.backend not in TORCH_BACKENDS:
        raise TransformUnsupported(
            f"transform {case.transform} runs on torch eager backends ({', '.join(TORCH_BACKENDS)}), "
            f"not {case.backend}, where the module is converted before it runs"
        )
