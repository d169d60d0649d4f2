"""How close a transformed module stays to the untransformed one: each transform states its
Tolerance beside its code, and the worker measures against the untransformed module run in
float64 on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn


@dataclass(frozen=True)
class Tolerance:
    """What a transform is expected to keep: rel_err at most, cosine at least."""

    rel_err: float
    min_cosine: float


def fidelity_of(y: Tensor, y_ref: Tensor, tol: Tolerance) -> dict[str, Any]:
    """Relative error and cosine similarity of y against y_ref, in float64, and whether within tol."""
    import torch

    a = y.detach().to("cpu", torch.float64).flatten()
    r = y_ref.detach().to("cpu", torch.float64).flatten()
    rel = ((a - r).norm() / r.norm()).item()
    cos = torch.nn.functional.cosine_similarity(a, r, dim=0).item()
    within = bool(rel <= tol.rel_err and cos >= tol.min_cosine)  # NaN compares False: flagged
    return {
        "rel_err": rel,
        "cosine": cos,
        "tolerance": {"rel_err": tol.rel_err, "min_cosine": tol.min_cosine},
        "within": within,
        "reference": "untransformed module, float64, CPU, same inputs (forward output)",
    }


def measure_fidelity(
    module: nn.Module, reference: nn.Module, inputs: tuple[Tensor, ...], tol: Tolerance
) -> dict[str, Any]:
    import torch

    # Same grad mode as the timed step (no torch.no_grad around the transformed module): a
    # compiled module guards on grad mode and would otherwise compile a second graph here.
    out = module(*inputs)
    with torch.no_grad():
        ref_module = reference.to("cpu", torch.float64)
        x64 = tuple(t.detach().to("cpu", torch.float64) for t in inputs)
        y_ref = ref_module(*x64)
    result = fidelity_of(out, y_ref, tol)
    if len(x64) == 1 and x64[0].shape == y_ref.shape:
        # A residual layer's output is mostly its input; the error of what the layer adds
        # (y - x) is the more sensitive figure, recorded beside the output's.
        update = fidelity_of(out.detach().to("cpu", torch.float64) - x64[0], y_ref - x64[0], tol)
        result["update_rel_err"] = update["rel_err"]
        result["update_cosine"] = update["cosine"]
    return result
