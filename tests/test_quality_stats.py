"""Quality statistics over seeds (t interval, Pareto front, Kendall's tau) and LRA's published accuracies."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest

from attnbench.analysis.lra_accuracy import label_for, lra_table, published_order
from attnbench.analysis.quality_stats import (
    KendallTau,
    SeedSummary,
    _inversion_counts,
    kendall_tau,
    pareto_front,
    rank_agreement,
    seed_summary,
)

# ----------------------------------------------------------------------------- seed_summary


def test_seed_summary_is_the_student_t_interval_of_the_mean() -> None:
    s = seed_summary([1.0, 2.0, 3.0])
    half = 4.302653 * (1 / math.sqrt(3))  # t_{0.975, 2} · s / √n with s = 1
    assert s.mean == pytest.approx(2.0)
    assert s.seeds == 3 and s.values == (1.0, 2.0, 3.0)
    assert s.ci_low == pytest.approx(2.0 - half, rel=1e-6)
    assert s.ci_high == pytest.approx(2.0 + half, rel=1e-6)
    assert s.half_width() == pytest.approx(half, rel=1e-6)
    narrower = seed_summary([1.0, 2.0, 3.0], confidence=0.90)  # t_{0.95, 2} = 2.919986
    assert narrower.half_width() == pytest.approx(2.919986 / math.sqrt(3), rel=1e-6)


def test_seed_summary_with_one_seed_has_a_mean_but_no_interval() -> None:
    s = seed_summary([0.7])
    assert s == SeedSummary(0.7, None, None, 1, (0.7,))
    assert s.half_width() is None


def test_failed_seeds_are_dropped_and_not_counted() -> None:
    s = seed_summary([None, 0.5, float("nan"), 0.7])
    assert s.seeds == 2 and s.values == (0.5, 0.7)
    assert s.mean == pytest.approx(0.6)
    assert s.ci_low is not None and s.ci_high is not None
    nothing = seed_summary([None, None])
    assert nothing == SeedSummary(None, None, None, 0, ())
    assert nothing.half_width() is None


def test_interval_passes_the_bounds_unless_asked_to_clip() -> None:
    values = [0.95, 0.99, 1.0]
    raw = seed_summary(values)
    assert raw.ci_high is not None and raw.ci_high > 1.0  # the raw t interval, as documented
    clipped = seed_summary(values, bounds=(0.0, 1.0))
    assert clipped.ci_high == 1.0 and clipped.ci_low == pytest.approx(raw.ci_low)
    assert clipped.half_width() == pytest.approx(raw.mean - raw.ci_low)  # the larger (unclipped) side


def test_seed_summary_rejects_a_bad_confidence_or_bounds() -> None:
    with pytest.raises(ValueError, match="confidence"):
        seed_summary([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="bounds"):
        seed_summary([1.0, 2.0], bounds=(1.0, 0.0))


def test_seed_summary_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    values = [0.61, 0.64, 0.58, 0.66, 0.63]
    s = seed_summary(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=stats.sem(values))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


# ----------------------------------------------------------------------------- pareto_front


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    # (cost, quality): cheaper and better is better
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (2.0, 0.4), (4.0, 0.9)]
    assert pareto_front(points) == [True, True, False, False, True]


def test_pareto_front_ties_and_duplicates() -> None:
    # Duplicates beat neither each other nor are beaten: both stay on the front.
    assert pareto_front([(1.0, 0.5), (1.0, 0.5), (2.0, 0.6)]) == [True, True, True]
    # Same cost, lower quality: beaten (as good in cost, strictly worse in quality).
    assert pareto_front([(1.0, 0.5), (1.0, 0.4)]) == [True, False]
    # Same quality, higher cost: beaten.
    assert pareto_front([(1.0, 0.5), (1.5, 0.5)]) == [True, False]
    # A duplicate of a beaten point is beaten too.
    assert pareto_front([(0.5, 0.9), (1.0, 0.5), (1.0, 0.5)]) == [True, False, False]


def test_pareto_front_excludes_missing_points() -> None:
    nan = float("nan")
    points = [(1.0, None), (nan, 0.9), None, (2.0, 0.3), (0.5, nan)]
    # The missing points would beat (2.0, 0.3) if they counted; they are off the front and beat nothing.
    assert pareto_front(points) == [False, False, False, True, False]
    assert pareto_front([]) == []


# ----------------------------------------------------------------------------- kendall_tau


def test_perfect_agreement_of_four_is_exact() -> None:
    k = kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])
    assert k == KendallTau(1.0, pytest.approx(2 / 24), 4, "exact")
    reverse = kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])
    assert reverse.tau == -1.0 and reverse.p_value == pytest.approx(2 / 24)


def test_exact_distribution_is_the_count_of_permutations_by_inversions() -> None:
    for n in range(1, 7):
        counts = [0] * (n * (n - 1) // 2 + 1)
        for perm in itertools.permutations(range(n)):
            counts[sum(perm[i] > perm[j] for i in range(n) for j in range(i + 1, n))] += 1
        assert _inversion_counts(n) == counts


def test_exact_p_by_listing_every_permutation() -> None:
    """p = the share of permutations whose |tau| is at least the observed one (two-sided, no ties)."""
    x = [1, 2, 3, 4, 5, 6]
    y = [2, 1, 4, 3, 6, 5]
    k = kendall_tau(x, y)
    taus = [kendall_tau(x, list(p)).tau for p in itertools.permutations(y)]
    share = sum(abs(t) >= abs(k.tau) - 1e-12 for t in taus) / len(taus)
    assert k.method == "exact" and k.tau == pytest.approx(9 / 15)
    assert k.p_value == pytest.approx(share)


def test_ties_or_more_than_ten_pairs_use_the_normal_approximation() -> None:
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]).method == "normal approximation"
    assert kendall_tau(list(range(11)), list(range(11))).method == "normal approximation"
    assert kendall_tau(list(range(10)), list(range(10))).method == "exact"


def test_tau_b_by_hand_with_ties() -> None:
    # x = 1 1 2 3, y = 1 2 2 3: pairs (i<j): 12 tie x; 13 C; 14 C; 23 tie y; 24 C; 34 C
    # tau-b = (4 - 0) / √((6 - 1)(6 - 1)) = 0.8
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]).tau == pytest.approx(0.8)


@pytest.mark.parametrize("n", [2, 3, 5, 7, 10])
def test_exact_p_matches_scipy(n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(n)
    for _ in range(20):
        x = rng.sample(range(100), n)
        y = rng.sample(range(100), n)
        k = kendall_tau(x, y)
        ref = stats.kendalltau(x, y, method="exact")
        assert k.method == "exact"
        assert k.tau == pytest.approx(ref.statistic, abs=1e-12)
        assert k.p_value == pytest.approx(ref.pvalue, rel=1e-9)


@pytest.mark.parametrize("n", [4, 8, 15, 40])
def test_normal_approximation_with_ties_matches_scipy(n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1000 + n)
    compared = 0
    for _ in range(20):
        x = [rng.randint(0, 4) for _ in range(n)]  # many ties
        y = [rng.randint(0, 6) + 0.5 * xi for xi in x]
        if len(set(x)) < 2 or len(set(y)) < 2 or len(set(x)) == len(set(y)) == n:
            continue  # no ordering, or no ties (n = 4 may draw none)
        k = kendall_tau(x, y)
        ref = stats.kendalltau(x, y, method="asymptotic")
        assert k.method == "normal approximation"
        assert k.tau == pytest.approx(ref.statistic, abs=1e-12)
        assert k.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
        compared += 1
    assert compared >= 10


def test_normal_approximation_without_ties_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    x = list(range(25))
    y = [v + rng.gauss(0, 6) for v in x]
    k = kendall_tau(x, y)
    ref = stats.kendalltau(x, y, method="asymptotic")
    assert k.method == "normal approximation"
    assert (k.tau, k.p_value) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue, rel=1e-9))


def test_kendall_tau_refuses_what_has_no_answer() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau([1.0], [2.0])
    with pytest.raises(ValueError, match="paired"):
        kendall_tau([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no ordering"):
        kendall_tau([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0])


def test_rank_agreement_over_the_shared_names() -> None:
    published = {"a": 40.0, "b": 30.0, "c": 20.0, "d": 10.0, "only_published": 5.0}
    measured = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.75, "only_measured": 0.1}
    k = rank_agreement(published, measured)
    assert k is not None and k.n == 4
    assert k.tau == pytest.approx(4 / 6)  # one discordant pair of six (c, d)
    # Fewer than 3 shared real values: nothing to say.
    assert rank_agreement(published, {"a": 0.9, "b": 0.8, "c": None}) is None
    assert rank_agreement({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}) is None
    # All measured equal: no ordering to agree with.
    assert rank_agreement(published, {"a": 0.5, "b": 0.5, "c": 0.5}) is None


# ----------------------------------------------------------------------------- LRA's Table 1

# The one printed average that disagrees with its own row (the paper's, not a transcription slip:
# every transcription of Table 1 prints 51.39 beside these five accuracies, which average 51.476).
PAPER_AVERAGE_SLIPS = {"Sinkhorn Trans.": (51.39, 51.48)}


def test_lra_averages_are_the_mean_of_the_five_tasks() -> None:
    table = lra_table()
    assert len(table.models) == 11
    slips = {}
    for model, row in table.models.items():
        values = [row[t] for t in table.average_of]
        assert all(v is not None for v in values), model
        mean = round(sum(values) / len(values), 2)  # type: ignore[arg-type]
        if not math.isclose(mean, table.average[model], abs_tol=1e-9):
            slips[model] = (table.average[model], mean)
    assert slips == PAPER_AVERAGE_SLIPS


def test_lra_table_shape_and_path_x_fails_everywhere() -> None:
    table = lra_table()
    assert "Tay et al. 2021" in table.source and "Table 1" in table.source
    assert table.tasks == ("ListOps", "Text", "Retrieval", "Image", "Pathfinder", "Path-X")
    assert all(row["Path-X"] is None for row in table.models.values())
    assert table.models["Transformer"]["ListOps"] == 36.37
    assert table.models["Performer"]["Pathfinder"] == 77.05
    assert table.average["BigBird"] == 55.01
    assert dataclasses.is_dataclass(table)
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.source = "x"  # type: ignore[misc]


def test_lra_models_map_onto_our_variants_and_tasks() -> None:
    table = lra_table()
    assert table.variant_of == {
        "Transformer": "full.sdpa",
        "Local Attention": "sparse.sliding_window",
        "Longformer": "sparse.sliding_window",
        "Reformer": "sparse.lsh",
        "BigBird": "sparse.bigbird",
    }
    assert table.params_of["Local Attention"] == {"global_tokens": 0}
    assert table.params_of["Longformer"] == {"global_tokens": "nonzero"}
    assert all(table.note_of[m] for m in table.variant_of)
    assert table.task_of == {t: ("listops" if t == "ListOps" else None) for t in table.tasks}
    assert "NOT the same task" in table.task_note_of["Retrieval"]


def test_the_params_predicate_names_a_real_sliding_window_parameter() -> None:
    pytest.importorskip("torch")
    from attnbench.workloads.sparse.sliding_window import SlidingWindowParams

    fields = {f.name: f.default for f in dataclasses.fields(SlidingWindowParams)}
    for model in ("Local Attention", "Longformer"):
        assert set(lra_table().params_of[model]) <= set(fields), model
    assert fields["global_tokens"] == 0  # a default case is Local Attention


def test_measured_cases_get_the_published_labels() -> None:
    window = {"window": 512, "dilation": 1, "causal": False}
    assert (
        label_for("sparse.sliding_window", {**window, "global_tokens": 0}) == "sparse.sliding_window (Local Attention)"
    )
    assert label_for("sparse.sliding_window", {**window, "global_tokens": 8}) == "sparse.sliding_window (Longformer)"
    assert label_for("sparse.sliding_window", window) is None  # a parameter missing never matches
    assert label_for("full.sdpa", {}) == "full.sdpa"
    assert label_for("sparse.lsh", {"bucket_size": 64}) == "sparse.lsh"
    assert label_for("full.naive", {}) is None


def test_published_order_ranks_the_models_we_have() -> None:
    order = published_order("ListOps")
    assert list(order) == [
        "sparse.lsh",
        "full.sdpa",
        "sparse.bigbird",
        "sparse.sliding_window (Longformer)",
        "sparse.sliding_window (Local Attention)",
    ]
    assert order["sparse.lsh"] == 37.27
    assert published_order("Avg")["sparse.bigbird"] == 55.01
    assert published_order("Path-X") == {}
    with pytest.raises(ValueError, match="unknown LRA task"):
        published_order("listops")


def test_published_order_feeds_rank_agreement() -> None:
    published = published_order("ListOps")
    measured = {label: 100 - i for i, label in enumerate(published)}  # the same order
    k = rank_agreement(published, measured)
    assert k is not None and k.tau == 1.0 and k.method == "exact" and k.p_value == pytest.approx(2 / 120)
