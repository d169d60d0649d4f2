"""Expanding a sweep into its cases: each variant's parameter grid, resolved at each length."""

from __future__ import annotations

import itertools
from typing import Any

from attnbench.core.cases import BASELINE_VARIANT, Case, Sweep
from attnbench.core.errors import UserError
from attnbench.core.registry import get_impl, get_workload
from attnbench.workloads.shape import Shape


def expand(sweep: Sweep) -> list[Case]:
    """All cases of a sweep, grouped into scaling curves, each curve by increasing length.

    Ordering by length matters: after a length runs out of memory, the longer ones of the
    same curve are skipped.

    A variant that has none of the requested scopes (a whole-model workload such as the
    Universal Transformer has no bare-attention form) runs in its own first scope, which the
    case records, rather than silently dropping out of "all". So that its row still has a
    baseline, the sweep's full.sdpa, when it has one, runs in that scope too.

    Every implementation (`impls`) gives its own cases, also where it cannot run the case:
    the worker records those as unsupported, with the reason.
    """
    for impl in sweep.impls:
        get_impl(impl)  # an unknown name is a user error, with a suggestion
    cases: dict[str, Case] = {}
    fallback: list[str] = []
    for variant in sweep.variants:
        cls = get_workload(variant)
        scopes = [s for s in sweep.scopes if s in cls.scopes] or [cls.scopes[0]]
        fallback += [s for s in scopes if s not in sweep.scopes and s not in fallback]
        _add_variant(cases, sweep, variant, scopes)
    if BASELINE_VARIANT in sweep.variants:
        extra = [s for s in fallback if s in get_workload(BASELINE_VARIANT).scopes]
        _add_variant(cases, sweep, BASELINE_VARIANT, extra)
    # Stable: the baseline's added curves join its own, each curve still by increasing length.
    return sorted(cases.values(), key=lambda c: sweep.variants.index(c.variant))


def _add_variant(cases: dict[str, Case], sweep: Sweep, variant: str, scopes: list[str]) -> None:
    """The variant's cases in these scopes, over its parameter grid and every other axis."""
    cls = get_workload(variant)
    chosen = sweep.params_for(variant)
    defaults = cls.default_params()
    names = sorted(defaults)
    grids = [chosen.get(name, (defaults[name],)) for name in names]
    for values in itertools.product(*grids):
        chosen_values = dict(zip(names, values, strict=True))
        try:
            cls.make_params(chosen_values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid parameters for {variant}: {exc}") from None
        for scope in scopes:
            for backend, dtype, mode, b, h, d, t, tr, impl, n in (
                (name, *rest)
                for name in sweep.backends
                for rest in itertools.product(
                    sweep.axis_for(name, "dtypes"),
                    sweep.modes,
                    sweep.axis_for(name, "batch"),
                    sweep.heads,
                    sweep.head_dim,
                    sweep.threads,
                    sweep.transforms,
                    sweep.impls,
                    sorted(sweep.seq_lens),
                )
            ):
                try:
                    at_length = cls.resolve_params(dict(chosen_values), Shape(b, h, d, n))
                except ValueError as exc:
                    raise UserError(f"invalid parameters for {variant} at n={n}: {exc}") from None
                resolved = tuple(sorted(at_length.items()))
                neutral = tuple(k for k, v in resolved if _is_neutral(cls.neutral_params, k, v))
                revision = cls.definition_revision(at_length, scope)
                case = Case(variant, resolved, scope, backend, dtype, mode, b, h, d, n, t, tr, revision, neutral, impl)
                cases.setdefault(case.case_id, case)


def _is_neutral(neutral: dict[str, Any], name: str, value: Any) -> bool:
    """Whether a parameter holds the value that reproduces the definition from before it
    existed (the type too: False must not stand for 0)."""
    return name in neutral and type(neutral[name]) is type(value) and neutral[name] == value
