"""The implementation axis: one attention design, computed by different code.

A case's `impl` names an `Implementation`. It builds the module the harness times from the
variant's parameters: same inputs (`variant.make_inputs`) and same output as the variant's own
(`native`) module, so the worker verifies and times it exactly as it does native. An
implementation that cannot run a case says why (`supports`), and the case is recorded as
`unsupported` with that reason, as a backend's refusal is.
"""

from __future__ import annotations

from abc import ABC
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from attnbench.core.registry import declare_base
from attnbench.core.sdpa import MATH, SdpaChoice
from attnbench.workloads.shape import Shape

if TYPE_CHECKING:
    from attnbench.workloads.base import AttentionVariant


class Implementation(ABC):
    """How a case's attention is computed. Classmethods only: an implementation holds no state;
    what it builds is an `nn.Module` that does."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # Compiles on its first call (flex): that call's seconds are compile time, and the dispatcher
    # recorder must stay off it (torch does not compile under a dispatch mode).
    compiles_on_first_call: ClassVar[bool] = False

    @classmethod
    def availability(cls) -> str | None:
        """Why this implementation cannot run on this machine at all (a library missing: say how
        to install it), else None."""
        return None

    @classmethod
    def supports(cls, variant: type[AttentionVariant], params: Any, scope: str, backend: str) -> str | None:
        """Why it cannot run this case (variant, its parameters, scope, backend), else None."""
        return None

    @classmethod
    def supports_dtype(cls, variant: type[AttentionVariant], params: Any, dtype: str) -> str | None:
        """Why it cannot run this case in `dtype` (a kernel's precision, e.g. half only), else None.
        Asked only once `supports` has accepted the variant, parameters, scope and backend."""
        return None

    @classmethod
    def build(cls, variant: type[AttentionVariant], params: Any, shape: Shape, scope: str) -> nn.Module:
        """The module timed: takes `variant.make_inputs(shape, scope, ...)`, returns what the
        variant's own module returns for them. Called only when `supports` returned None."""
        raise NotImplementedError(f"implementation '{cls.name}' builds no module")

    @classmethod
    def case_metrics(cls, module: nn.Module) -> dict[str, Any]:
        """Figures known after timing (e.g. {"block_mask_s": ...}), merged into the record's
        `workload_metrics` like a variant's own. JSON-serialisable values only."""
        return {}

    # --- hooks with defaults that fit every implementation timed in the core scope ----------
    @classmethod
    def peak_estimate(
        cls,
        variant: type[AttentionVariant],
        params: Any,
        shape: Shape,
        scope: str,
        itemsize: int,
        mode: str,
        sdpa: SdpaChoice = MATH,
    ) -> int | None:
        """A generous estimate of the case's peak memory above its inputs, for the analytic
        check that skips cases which cannot fit; None: the variant's own estimate applies."""
        return None

    @classmethod
    def verify_module(cls, variant: type[AttentionVariant], params: Any, shape: Shape) -> nn.Module:
        """The module checked against the reference before timing, in the core scope:
        (B, h, n, d) q, k, v -> (B, h, n, d). By default, what `build` gives for the core scope.

        An implementation that runs in the layer scope only (its module projects Q/K/V itself)
        overrides this and `verify_reference` to check its attention inside that layer."""
        return cls.build(variant, params, shape, "core")

    @classmethod
    def verify_reference(cls, module: nn.Module, defined: AttentionVariant, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The float64 output that `module` (from `verify_module`) must match for these float64
        inputs. By default the design's own: `defined` is the variant's module at the same
        shape, whose `reference` is the dense definition. An implementation whose pattern
        differs from the design's canonical one (e.g. its own random-block draw) returns its
        own pattern's reference here, and says how it differs in `case_metrics`."""
        return defined.reference(q, k, v)


declare_base("impl", Implementation)
