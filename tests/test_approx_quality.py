"""`--quality approx`: the structured-input generator, the per-variant key patterns and the
figures that compare a variant with exact full attention (issue 26)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.registry import WORKLOADS, load_plugins
from attnbench.engine.approx_quality import approx_figures
from attnbench.workloads.base import AttentionVariant, Shape
from attnbench.workloads.reference import causal_mask
from attnbench.workloads.structured_inputs import (
    StructureParams,
    long_distance_range,
    structured_inputs,
    structured_qkv,
)

load_plugins()

FIGURES = ("rel_err", "cosine", "pattern_mass", "partner_recall", "long_range_mass")


def case_of(variant: str, n: int, heads: int = 2, head_dim: int = 16, **params: Any) -> tuple[type, Any, Case]:
    """The variant class, its params and a core case, parameters resolved as a run resolves them."""
    cls = WORKLOADS[variant]
    values = cls.resolve_params({**cls.default_params(), **params}, Shape(1, heads, head_dim, n))
    case = Case(variant, tuple(sorted(values.items())), "core", "cpu", "float32", "forward", 1, heads, head_dim, n)
    return cls, cls.make_params(values), case


def figures(variant: str, n: int, structure: StructureParams, heads: int = 2, head_dim: int = 16, **params: Any):
    cls, p, case = case_of(variant, n, heads, head_dim, **params)
    return approx_figures(cls, p, case, structure)


def module(variant: str, n: int, heads: int = 2, head_dim: int = 16, **params: Any) -> AttentionVariant:
    cls, p, _ = case_of(variant, n, heads, head_dim, **params)
    return cls(p, Shape(1, heads, head_dim, n))


# --- the generator -------------------------------------------------------------------------


def test_partner_distances_follow_the_parameters() -> None:
    params = StructureParams(long_range_share=0.3, local_mean=5.0, long_min_frac=0.25, seed=3)
    n = 4096
    s = structured_inputs(1, 4, n, 8, params)
    i = torch.arange(n)
    dist = (s.partner - i).abs()
    assert s.partner.dtype == torch.int64 and s.partner.shape == (1, 4, n)
    assert ((s.partner >= 0) & (s.partner < n)).all() and (dist >= 1).all()
    assert abs(s.long_range.double().mean().item() - 0.3) < 0.02  # 16384 draws: 3.5 standard errors
    lo, hi = long_distance_range(n, params)
    assert (lo, hi) == (1024, n - 1)
    # Long: uniform on [lo, min(hi, reach)], reach = max(i, n − 1 − i), the farthest query i can go.
    cap = torch.maximum(i, n - 1 - i).clamp(max=hi).expand_as(dist)[s.long_range]
    far = dist[s.long_range]
    assert (far >= lo).all() and (far <= cap).all()
    expected = ((lo + cap) / 2).double().mean().item()
    assert abs(far.double().mean().item() - expected) < 50  # ~4900 draws: std of the mean ~13
    # Geometric with mean 5: far from the ends, reflection never changes a distance.
    assert abs(dist[~s.long_range].double().mean().item() - 5.0) < 0.2
    # Both directions, about equally.
    later = (s.partner > i)[~s.long_range].double().mean().item()
    assert 0.45 < later < 0.55


def test_partners_are_reflected_into_the_sequence_and_the_ends_are_no_hubs() -> None:
    # Every distance is long (>= 6 of 10): queries 4 and 5 reach only 5 away and get the farther end.
    n = 10
    s = structured_inputs(2, 3, n, 4, StructureParams(long_range_share=1.0, long_min_frac=0.6, seed=1))
    i = torch.arange(n)
    reach = torch.maximum(i, n - 1 - i)
    dist = (s.partner - i).abs()
    assert ((s.partner >= 0) & (s.partner < n)).all()
    assert (dist <= reach).all() and (dist >= reach.clamp(max=6)).all()
    assert (s.partner[..., 4] == 9).all() and (s.partner[..., 5] == 0).all()
    one = structured_inputs(1, 1, 1, 4, StructureParams())
    assert one.partner.tolist() == [[[0]]]
    # All long-range: no key is the partner of many queries (clamping onto the ends would make hubs).
    s = structured_inputs(1, 2, 4096, 4, StructureParams(long_range_share=1.0))
    hits = torch.stack([torch.bincount(s.partner[0, z], minlength=4096) for z in range(2)])
    assert hits.max() <= 12


def test_the_partner_stands_strength_above_the_other_scores() -> None:
    s = structured_inputs(1, 2, 1024, 64, StructureParams(strength=7.0, noise=0.5, seed=2))
    scores = s.q @ s.k.transpose(-1, -2) / 8.0
    partner = scores.gather(-1, s.partner.unsqueeze(-1)).squeeze(-1)
    others = scores.masked_fill(torch.nn.functional.one_hot(s.partner, 1024).bool(), float("nan"))
    assert abs(partner.mean().item() - 7.0) < 0.05
    assert abs(others.nanmean().item()) < 0.02
    # Other scores: std √(strength²/d + noise²).
    assert abs(others[~others.isnan()].std().item() - math.sqrt(49 / 64 + 0.25)) < 0.02


def test_generator_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = structured_qkv(1, 2, 50, 8, StructureParams(seed=5))
    b = structured_qkv(1, 2, 50, 8, StructureParams(seed=5))
    c = structured_qkv(1, 2, 50, 8, StructureParams(seed=6))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert structured_qkv(1, 2, 50, 8, StructureParams(), dtype=torch.float32)[0].dtype == torch.float32


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("long_range_share", -0.1),
        ("long_range_share", 1.5),
        ("long_range_share", float("nan")),
        ("local_mean", 0.5),
        ("long_min_frac", 0.0),
        ("long_min_frac", 1.0),
        ("strength", -1.0),
        ("noise", -0.1),
        ("seed", -1),
    ],
)
def test_bad_structure_params_are_one_line_value_errors(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field) as info:
        StructureParams(**{field: value})
    assert "\n" not in str(info.value)


# --- the patterns variants apply ----------------------------------------------------------------


def test_default_patterns_come_from_the_reference_mask() -> None:
    q = k = torch.zeros(1, 2, 40, 16, dtype=torch.float64)
    assert module("full.sdpa", 40).input_pattern(q, k) is None
    assert torch.equal(module("full.naive", 40, causal=True).input_pattern(q, k)[0, 0], causal_mask(40))
    for variant, params in (
        ("sparse.sliding_window", {"window": 8, "global_tokens": 2}),
        ("hierarchical.transformer_xl", {"segment": 8, "memory": 4}),
    ):
        m = module(variant, 40, **params)
        pattern = m.input_pattern(q, k)
        assert pattern.shape == (1, 1, 40, 40)
        assert torch.equal(pattern[0, 0], m.reference_mask(40))


def test_lsh_pattern_depends_on_the_inputs() -> None:
    m = module("sparse.lsh", 64, chunk=8)
    g = torch.Generator().manual_seed(0)
    q1, q2, k = (torch.randn(1, 2, 64, 16, generator=g, dtype=torch.float64) for _ in range(3))
    p1, p2 = m.input_pattern(q1, k), m.input_pattern(q2, k)
    assert p1.shape == (1, 2, 64, 64) and p1.dtype == torch.bool
    assert not torch.equal(p1, p2)
    assert torch.equal(p1, m.pattern(q1) > 0)
    # Each query sees at most its chunk and the previous one in each of the 2 rounds.
    assert (p1.sum(-1) <= 2 * 2 * 8).all()


def test_bigbird_per_head_patterns_differ_and_shared_ones_do_not() -> None:
    n, common = 128, {"block": 8, "random_blocks": 3, "attention": "block_sparse"}
    q = k = torch.zeros(1, 4, n, 16, dtype=torch.float64)
    per_head = module("sparse.bigbird", n, heads=4, random_per_head=True, **common).input_pattern(q, k)
    assert per_head.shape == (1, 4, n, n)
    assert not torch.equal(per_head[0, 0], per_head[0, 1])
    shared_module = module("sparse.bigbird", n, heads=4, **common)
    shared = shared_module.input_pattern(q, k)
    assert shared.shape == (1, 1, n, n)
    assert torch.equal(shared[0, 0], shared_module.reference_mask(n))
    assert torch.equal(per_head[0, 0], shared[0, 0])  # head 0 draws what the shared layout draws
    assert module("sparse.bigbird", 64, heads=4, attention="full").input_pattern(q[..., :64, :], k) is None


# --- the figures ------------------------------------------------------------------------------------


def test_full_attention_is_its_own_reference() -> None:
    f = figures("full.sdpa", 300, StructureParams(seed=1))
    assert f["rel_err"] < 1e-10 and abs(f["cosine"] - 1.0) < 1e-12
    assert f["pattern_mass"] == 1.0 and f["partner_recall"] == 1.0 and f["long_range_mass"] == 1.0
    assert f["pattern_mass_reason"] is None and f["reference"] == "full" and f["note"] is None
    assert (f["seq_len"], f["heads"]) == (300, 2)
    assert f["generator"] == StructureParams(seed=1).to_json()
    causal = figures("full.naive", 200, StructureParams(), causal=True)
    assert causal["reference"] == "full causal" and causal["rel_err"] < 1e-10


def test_sliding_window_loses_long_range_dependencies() -> None:
    # Strong enough for the partner to carry most of full attention's mass at n = 517 (at d = 64 the
    # planted part adds only strength²/d to the other scores' variance).
    local = StructureParams(long_range_share=0.0, local_mean=2.0, strength=12.0)
    far = StructureParams(long_range_share=1.0, local_mean=2.0, strength=12.0)
    near_f = figures("sparse.sliding_window", 517, local, head_dim=64, window=64)
    far_f = figures("sparse.sliding_window", 517, far, head_dim=64, window=64)
    assert near_f["pattern_mass"] > 0.9 and near_f["partner_recall"] > 0.99 and near_f["rel_err"] < 0.2
    assert near_f["long_range_mass"] is None  # no long-range query
    assert far_f["pattern_mass"] < 0.5 and far_f["partner_recall"] < 0.5
    assert far_f["long_range_mass"] == pytest.approx(far_f["pattern_mass"])
    assert far_f["rel_err"] > 3 * near_f["rel_err"] and far_f["cosine"] < near_f["cosine"] - 0.5


def test_partner_recall_is_the_share_of_partners_in_the_window() -> None:
    structure = StructureParams(long_range_share=0.4, local_mean=30.0, seed=4)
    n, heads, window = 517, 3, 64
    f = figures("sparse.sliding_window", n, structure, heads=heads, window=window)
    _, _, _, partner = structured_qkv(1, heads, n, 16, structure)
    inside = ((partner - torch.arange(n)).abs() <= window // 2).double().mean().item()
    assert 0.2 < inside < 0.8  # a case that tells something
    assert f["partner_recall"] == pytest.approx(inside, abs=1e-12)


def _brute_force(structure: StructureParams, n: int, heads: int, d: int, allowed, causal: bool) -> dict[str, float]:
    """pattern_mass, long_range_mass and partner_recall with plain loops over heads, queries and keys."""
    s = structured_inputs(1, heads, n, d, structure)
    masses, long_masses, recalls = [], [], []
    for z in range(heads):
        q, k = s.q[0, z].tolist(), s.k[0, z].tolist()
        for i in range(n):
            visible = [j for j in range(n) if not causal or j <= i]
            score = {j: sum(a * b for a, b in zip(q[i], k[j], strict=True)) / math.sqrt(d) for j in visible}
            top = max(score.values())
            weight = {j: math.exp(x - top) for j, x in score.items()}
            total = sum(weight.values())
            mass = sum(w for j, w in weight.items() if allowed(i, j)) / total
            masses.append(mass)
            if s.long_range[0, z, i]:
                long_masses.append(mass)
            p = int(s.partner[0, z, i])
            if p in weight:
                recalls.append(1.0 if allowed(i, p) else 0.0)
    return {
        "pattern_mass": sum(masses) / len(masses),
        "long_range_mass": sum(long_masses) / len(long_masses),
        "partner_recall": sum(recalls) / len(recalls),
    }


@pytest.mark.parametrize("causal", [False, True])
def test_pattern_figures_match_a_brute_force_count(causal: bool) -> None:
    n, heads, d = 23, 2, 8
    window, dilation, g = 4, 2, 1
    structure = StructureParams(long_range_share=0.5, local_mean=3.0, strength=3.0, seed=7)

    def allowed(i: int, j: int) -> bool:
        band = abs(i - j) <= window // 2 * dilation and (i - j) % dilation == 0
        return (band or i < g or j < g) and (not causal or j <= i)

    f = figures(
        "sparse.sliding_window", n, structure, heads=heads, head_dim=d,
        window=window, dilation=dilation, global_tokens=g, causal=causal,
    )  # fmt: skip
    expected = _brute_force(structure, n, heads, d, allowed, causal)
    assert f["reference"] == ("full causal" if causal else "full")
    for name, value in expected.items():
        assert f[name] == pytest.approx(value, abs=1e-12), name
    assert 0.0 < f["pattern_mass"] < 1.0


def test_lsh_and_bigbird_figures_use_their_own_patterns() -> None:
    structure = StructureParams(strength=10.0, seed=2)
    lsh = figures("sparse.lsh", 128, structure, chunk=16)
    assert "ignores k" in lsh["note"] and lsh["pattern_mass"] < 1.0
    bb = figures("sparse.bigbird", 256, structure, heads=4, block=16, random_per_head=True, attention="block_sparse")
    assert 0.0 < bb["pattern_mass"] < 1.0 and 0.0 < bb["partner_recall"] <= 1.0 and bb["rel_err"] > 0.0


def test_transformer_xl_is_compared_with_causal_full_attention_and_says_so() -> None:
    f = figures("hierarchical.transformer_xl", 96, StructureParams(), segment=16, memory=16)
    assert f["reference"] == "full causal"
    assert "relative-position" in f["note"]
    assert 0.0 < f["pattern_mass"] < 1.0 and f["rel_err"] > 0.0


@pytest.mark.parametrize("variant", ["adaptive.act", "adaptive.universal", "hierarchical.han"])
def test_layer_only_variants_are_unavailable_with_a_reason(variant: str) -> None:
    cls = WORKLOADS[variant]
    case = Case(
        variant, tuple(sorted(cls.default_params().items())), "layer", "cpu", "float32", "forward", 1, 2, 16, 64
    )
    f = approx_figures(cls, cls.make_params(cls.default_params()), case, StructureParams())
    assert f == {"unavailable": f"{variant} has no core attention to compare with full attention"}


def test_long_cases_are_compared_at_the_cap() -> None:
    f = approx_figures(*case_of("sparse.sliding_window", 5000, heads=8, window=16), StructureParams(), max_len=300)
    assert (f["seq_len"], f["heads"]) == (300, 4)


def test_figures_are_deterministic_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = figures("sparse.bigbird", 256, StructureParams(seed=9), block=16, attention="block_sparse")
    assert torch.equal(torch.get_rng_state(), state)
    b = figures("sparse.bigbird", 256, StructureParams(seed=9), block=16, attention="block_sparse")
    c = figures("sparse.bigbird", 256, StructureParams(seed=10), block=16, attention="block_sparse")
    assert a == b
    assert all(a[name] != c[name] for name in FIGURES)


def test_a_variant_without_a_key_pattern_gets_null_pattern_figures_with_the_reason() -> None:
    from attnbench.workloads.full import SdpaAttention

    class NoPattern(SdpaAttention):  # a plugin whose attention is no masked softmax (not registered)
        name = "test.no_pattern"

        def input_pattern(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
            raise NotImplementedError("test.no_pattern mixes keys without a pattern")

    _, params, case = case_of("full.sdpa", 64)
    f = approx_figures(NoPattern, params, case, StructureParams())
    assert f["pattern_mass"] is None and f["partner_recall"] is None and f["long_range_mass"] is None
    assert f["pattern_mass_reason"] == "test.no_pattern mixes keys without a pattern"
    assert f["rel_err"] < 1e-10  # the output figures do not need a pattern
