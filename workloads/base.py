"""The attention-variant base class, shapes, and the scope (core / layer) plumbing.

A variant is an ``nn.Module`` whose ``forward(q, k, v)`` maps (B, h, n, d) tensors to a
(B, h, n, d) output. Beside it live its parameters (a frozen dataclass), its analytic
cost and the dense mask that defines what it computes, so tests can check it against a
float64 reference.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnbench.core.registry import declare_base
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.reference import dense_probabilities, dense_reference
from attnbench.workloads.shape import (  # noqa: F401 - re-exported: variants and plugins import them from here
    FAMILIES,
    FFN_MULT,
    MODES,
    SCOPES,
    TRAIN_FLOP_FACTOR_ATTENTION,
    TRAIN_FLOP_FACTOR_LINEAR,
    NoParams,
    Shape,
    require_int,
)
from attnbench.workloads.step_range import step_range  # noqa: F401 - re-exported for variants


class AttentionVariant(nn.Module, ABC):
    """One attention design. Subclasses set the class attributes and implement forward."""

    name: ClassVar[str]  # "family.variant"
    family: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type] = NoParams
    # True when time and memory grow about linearly in n; selects variants for long suites.
    subquadratic: ClassVar[bool] = False
    # Parameters that resolve_params settles from the length (e.g. an "auto" bucket count):
    # recorded with each case, but they do not split a scaling curve.
    derived_params: ClassVar[tuple[str, ...]] = ()
    scopes: ClassVar[tuple[str, ...]] = SCOPES
    # Parameters added after the variant was first defined, each with the value that computes
    # what cases computed before the parameter existed. At that value a parameter stays out of
    # the case identity, so those cases keep their case_id (see docs/result-format.md).
    neutral_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Any, shape: Shape) -> None:
        super().__init__()
        self.params = params
        self.shape = shape

    @abstractmethod
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, h, n, d) x3 -> (B, h, n, d)."""

    # --- analytic cost (core attention, forward, whole batch) -------------------------
    @classmethod
    @abstractmethod
    def flops(cls, params: Any, shape: Shape) -> float:
        """Useful FLOPs of one forward call of the attention core, 2 per multiply-add."""

    @classmethod
    def executed_flops(cls, params: Any, shape: Shape) -> float:
        """FLOPs the implementation performs, masked, padded or repeated work included.

        At least `flops`; records carry both so efficiency is never overstated.
        """
        return cls.flops(params, shape)

    @classmethod
    @abstractmethod
    def working_bytes(cls, params: Any, shape: Shape, itemsize: int) -> int:
        """Analytic minimum memory above the inputs for one forward call, output included."""

    @classmethod
    def peak_bytes_estimate(cls, params: Any, shape: Shape, itemsize: int, train: bool, sdpa: SdpaChoice = MATH) -> int:
        """A generous estimate of the peak above the inputs, used to skip cases that cannot fit."""
        inputs = 3 * shape.batch * shape.heads * shape.seq_len * shape.head_dim * itemsize
        return 2 * cls.working_bytes(params, shape, itemsize) + (2 * inputs if train else 0)

    # --- definition, for correctness checks ---------------------------------------------
    def reference_mask(self, n: int) -> Tensor | None:
        """(n, n) bool, True where query i may attend key j; None means all pairs."""
        return None

    def reference(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """What this variant computes, the slow obvious way, in float64."""
        return dense_reference(q, k, v, self.reference_mask(q.shape[-2]))

    def input_pattern(self, q: Tensor, k: Tensor) -> Tensor | None:
        """(B|1, h|1, n, n) bool: which keys each query may see for these inputs; None: no
        fixed pattern restricts them (all pairs). By default the input-independent
        `reference_mask`; variants whose pattern depends on the inputs or the head override it.
        Dense: for the approximation figures at moderate n, never in a timed forward."""
        mask = self.reference_mask(q.shape[-2])
        return None if mask is None else mask.view(1, 1, *mask.shape)

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, h, n, n) float64: the attention probabilities this variant's definition gives
        these inputs, for attention maps (`bench quality --maps`). By default softmax(q·kᵀ/√d)
        over `input_pattern`; variants that score differently override it. Dense: moderate n only."""
        return dense_probabilities(q, k, self.input_pattern(q, k))

    @classmethod
    def verify_length(cls, params: Any, n: int, cap: int) -> int:
        """The length at which the worker checks this variant against its reference before
        timing: the case's own, capped so the dense reference stays cheap. Variants whose
        path changes with length raise the cap so the check runs the path being timed."""
        return min(n, cap)

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        """Figures the workload itself knows after timing (e.g. ponder steps, segments), for
        the case record's `workload_metrics`. If it holds "flops" or "flops_executed" (per
        call, as run), those replace the analytic figures, whose own values stay under
        "analytic_flops" / "analytic_flops_executed". JSON-serialisable values only."""
        return {}

    # --- parameters ---------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Params)]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.Params())

    @classmethod
    def make_params(cls, values: dict[str, Any]) -> Any:
        return cls.Params(**values)

    @classmethod
    def resolve_params(cls, values: dict[str, Any], shape: Shape) -> dict[str, Any]:
        """Settle parameters that depend on the shape (e.g. "auto" choices) so the case
        records, and is identified by, what actually runs. Raise ValueError if impossible."""
        return values

    @classmethod
    def definition_revision(cls, params: dict[str, Any], scope: str) -> int:
        """1 while a case with these (resolved) parameters computes what it computed when the
        variant was first defined. A correction that changes what is computed, with no new
        parameter to tell the two apart, raises it for the cases it changes: their case_id
        changes, because the old numbers measured something else."""
        return 1

    # --- building a workload for a scope -------------------------------------------------
    @classmethod
    def build(cls, params: Any, shape: Shape, scope: str) -> nn.Module:
        """The module the harness times: the attention alone, or a layer around it."""
        attention = cls(params, shape)
        if scope == "core":
            return attention
        from attnbench.workloads.layer import PreNormLayer

        return PreNormLayer(attention, shape)

    @classmethod
    def make_inputs(
        cls, shape: Shape, scope: str, dtype: torch.dtype, device: torch.device, generator: torch.Generator
    ) -> tuple[Tensor, ...]:
        B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
        if scope == "core":
            return tuple(
                torch.randn(B, h, n, d, generator=generator, dtype=torch.float32).to(device, dtype) for _ in range(3)
            )  # q, k, v: (B, h, n, d)
        x = torch.randn(B, n, shape.model_dim, generator=generator, dtype=torch.float32)  # (B, n, D)
        return (x.to(device, dtype),)

    @classmethod
    def case_flops(cls, params: Any, shape: Shape, scope: str, mode: str, executed: bool = False) -> float:
        """FLOPs of one call of the case: useful ones, or with `executed` those actually performed."""
        attention = cls.executed_flops(params, shape) if executed else cls.flops(params, shape)
        other = 0.0
        if scope == "layer":
            from attnbench.workloads.layer import PreNormLayer

            other = PreNormLayer.linear_flops(shape)
        if mode == "train":
            return attention * TRAIN_FLOP_FACTOR_ATTENTION + other * TRAIN_FLOP_FACTOR_LINEAR
        return attention + other

    @classmethod
    def case_min_bytes(cls, params: Any, shape: Shape, scope: str, itemsize: int) -> int:
        core = cls.working_bytes(params, shape, itemsize)
        if scope == "layer":
            from attnbench.workloads.layer import PreNormLayer

            core += PreNormLayer.activation_bytes(shape, itemsize)
        return core

    @classmethod
    def case_peak_estimate(
        cls, params: Any, shape: Shape, scope: str, itemsize: int, mode: str, sdpa: SdpaChoice = MATH
    ) -> int:
        train = mode == "train"
        peak = cls.peak_bytes_estimate(params, shape, itemsize, train, sdpa)
        if scope == "layer":
            from attnbench.workloads.layer import PreNormLayer

            peak += PreNormLayer.activation_bytes(shape, itemsize) * (4 if train else 2)
            peak += PreNormLayer.weight_bytes(shape, itemsize) * (3 if train else 1)
        return peak


declare_base("workload", AttentionVariant)
