"""How far a variant's output is from exact full attention on structured inputs (`--quality approx`).

Verification asks whether a variant computes its own definition; this asks how well that
definition approximates full attention softmax(q·kᵀ/√d)·v, on inputs whose queries each match
one planted key, near or far (attnbench.workloads.structured_inputs). Both sides run in
float64 on the CPU at batch 1, at most 4 heads and at most APPROX_MAX_LEN positions (the
variant's `verify_length`, so a variant whose path changes with the length runs the path being
timed). The variant's own module computes its side, not the case's backend or implementation:
their agreement with the definition is verification's business.

Figures (means over heads and queries):

- rel_err: ‖out − full‖_F / ‖full‖_F; cosine: mean cosine of out_i and full_i.
- pattern_mass: the share of full attention's probability mass on the keys the variant's
  pattern (`input_pattern`) lets each query see; 1.0 when no pattern restricts them.
- partner_recall: the share of queries whose planted partner key is in the pattern, among
  those whose partner the reference can see at all (with a causal reference, partners at or
  before the query: a later partner is invisible to both sides, so it says nothing about
  the variant).
- long_range_mass: pattern_mass over the queries whose partner was drawn as long-range.

Must never run inside the timed region: it builds dense (n, n) float64 matrices.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.cases import Case
from attnbench.engine.identity import PROBE_SEED
from attnbench.workloads.base import AttentionVariant, Shape
from attnbench.workloads.structured_inputs import StructuredInputs, StructureParams, structured_inputs

APPROX_MAX_LEN = 2048  # the dense float64 comparison costs h*n^2 doubles; longer cases are compared at this length
APPROX_MAX_HEADS = 4
# Variants whose definition is causal without a `causal` parameter saying so.
CAUSAL_BY_DEFINITION = frozenset({"hierarchical.transformer_xl"})
NOTES = {
    "hierarchical.transformer_xl": (
        "Transformer-XL adds relative-position scores (u, v, W_R·R) that full attention lacks; compared with "
        "plain causal full attention anyway (its mask is causal by definition), so rel_err and cosine include "
        "the position terms as well as the segment-and-memory restriction"
    ),
    "sparse.lsh": (
        "LSH attention shares query and key: it ignores k and attends to the normalised queries, so its output "
        "differs from full attention on (q, k, v) beyond what its buckets leave out"
    ),
}


def approx_figures(
    cls: type[AttentionVariant],
    params: Any,
    case: Case,
    structure: StructureParams,
    max_len: int = APPROX_MAX_LEN,
) -> dict[str, Any]:
    """The approximation figures of the case's variant (see the module docstring).

    params: the case's, as cls.make_params(case.params_dict). Returns {"unavailable": reason}
    for a variant with no core attention (layer-only designs)."""
    if "core" not in cls.scopes:
        return {"unavailable": f"{cls.name} has no core attention to compare with full attention"}
    n = cls.verify_length(params, case.seq_len, max_len)
    h = min(case.heads, APPROX_MAX_HEADS)
    shape = Shape(batch=1, heads=h, head_dim=case.head_dim, seq_len=n)
    inputs = structured_inputs(1, h, n, case.head_dim, structure, dtype=torch.float64)
    causal = bool(getattr(params, "causal", False)) or cls.name in CAUSAL_BY_DEFINITION

    # Weights a variant draws without a seed of its own are fixed as verification fixes them,
    # without disturbing the global generator the caller may still use.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(PROBE_SEED)
        module = cls(params, shape).to(torch.float64)
        out = module(inputs.q, inputs.k, inputs.v)
        if not torch.isfinite(out).all():
            return {"unavailable": f"{cls.name} gave non-finite outputs on the structured inputs at n={n}"}
        try:
            pattern = module.input_pattern(inputs.q, inputs.k)
            reason = None
        except NotImplementedError as exc:
            pattern, reason = None, str(exc) or f"{cls.name} defines no key pattern"
        figures = _compare(out.detach(), inputs, pattern, reason is None, causal)

    return {
        "seq_len": n,
        "heads": h,
        "generator": structure.to_json(),
        "reference": "full causal" if causal else "full",
        **figures,
        "pattern_mass_reason": reason,
        "note": NOTES.get(cls.name),
    }


def _full_probs(q: Tensor, k: Tensor, causal: bool) -> Tensor:
    """softmax(q·kᵀ/√d), causal-masked when asked: (..., n, n) float64."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
    if causal:
        n = q.shape[-2]
        scores.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    # In place: at n = 2048 every (n, n) pass is a noticeable share of the figures' time.
    probs = scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return probs.div_(probs.sum(-1, keepdim=True))


def _compare(
    out: Tensor, inputs: StructuredInputs, pattern: Tensor | None, has_pattern: bool, causal: bool
) -> dict[str, Any]:
    """The figures, one head at a time so that one (n, n) probability matrix is alive at once."""
    _, h, n, _ = out.shape
    err_sq = full_sq = 0.0
    cosines, masses, recalls = [], [], []
    positions = torch.arange(n)
    for z in range(h):
        q, k, v = (t[0, z] for t in (inputs.q, inputs.k, inputs.v))  # (n, d)
        probs = _full_probs(q, k, causal)  # (n, n)
        full = probs @ v
        err_sq += (out[0, z] - full).square().sum().item()
        full_sq += full.square().sum().item()
        cosines.append(F.cosine_similarity(out[0, z], full, dim=-1))  # (n,)
        if not has_pattern:
            continue
        partner = inputs.partner[0, z]
        if pattern is None:  # all pairs: every key, and so every partner, is visible
            masses.append(torch.ones(n, dtype=torch.float64))
            recalls.append(torch.ones(n, dtype=torch.bool))
        else:
            seen = pattern[0, min(z, pattern.shape[1] - 1)]  # (n, n): this head's, or the shared one
            masses.append(probs.masked_fill_(~seen, 0.0).sum(-1))  # probs is not needed after this
            recalls.append(seen[positions, partner])
        if causal:  # a later partner is invisible to the reference too: it tells nothing
            recalls[-1] = recalls[-1][partner <= positions]
    figures: dict[str, Any] = {
        "rel_err": math.sqrt(err_sq / full_sq) if full_sq > 0 else None,
        "cosine": torch.cat(cosines).mean().item(),
        "pattern_mass": None,
        "partner_recall": None,
        "long_range_mass": None,
    }
    if not has_pattern:
        return figures
    mass = torch.stack(masses)  # (h, n)
    recall = torch.cat(recalls)
    long_range = inputs.long_range[0]  # (h, n)
    figures["pattern_mass"] = mass.mean().item()
    figures["partner_recall"] = recall.double().mean().item() if recall.numel() else None
    figures["long_range_mass"] = mass[long_range].mean().item() if long_range.any() else None
    return figures
