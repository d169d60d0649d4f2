"""The synthetic tasks of `bench quality` (attnbench.workloads.tasks): targets follow from the
tokens (brute-force solvers, themselves checked on hand-written sequences), determinism,
distances, parameter validation, chance levels and token ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnbench.workloads.tasks import IGNORE, TASKS, Task, TaskBatch, get_task
from attnbench.workloads.tasks.listops import (
    CLS,
    MED,
    PAD,
    SM,
    ListOpsParams,
    ListOpsTask,
    apply_op,
    encode,
    max_length,
)
from attnbench.workloads.tasks.mqar import MqarParams, MqarTask
from attnbench.workloads.tasks.retrieval import RetrievalParams, RetrievalTask

LENGTHS = (128, 300)  # one not a power of two


def _task(name: str, n: int, **values: object) -> Task:
    cls = get_task(name)
    return cls(cls.make_params(values), n)


def _draw(task: Task, batch: int, seed: int) -> TaskBatch:
    return task.generate(batch, torch.Generator().manual_seed(seed))


def test_registry_names_and_unknown_task() -> None:
    assert list(TASKS) == ["listops", "mqar", "retrieval"]
    assert get_task("mqar") is MqarTask
    with pytest.raises(ValueError) as info:
        get_task("x")
    assert str(info.value) == "unknown task 'x'; known: listops, mqar, retrieval"


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", ["mqar", "listops", "retrieval"])
def test_solver_reproduces_every_target_and_ranges_hold(name: str, n: int) -> None:
    task = _task(name, n)
    batch = _draw(task, 300, seed=n)
    tokens, targets, distances = batch.tokens, batch.targets, batch.distances
    for tensor in (tokens, targets, distances):
        assert tensor.shape == (300, n) and tensor.dtype == torch.int64
    assert torch.equal(task.solve(tokens), targets)

    assert int(tokens.min()) >= 0 and int(tokens.max()) < task.vocab_size
    asked = targets != IGNORE
    assert bool(asked.any(dim=1).all())  # every example asks something
    assert int(targets[asked].min()) >= 0 and int(targets[asked].max()) < task.num_classes
    assert bool((distances[~asked] == -1).all())
    if name == "listops":
        assert bool((distances == -1).all())
        assert bool(asked[:, -1].all()) and int(asked.sum()) == 300  # asked at CLS only
    else:
        assert int(distances[asked].min()) >= 2 and int(distances[asked].max()) <= n - 1


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 5 [SM 9 9 ] 6 ]", 5),  # SM 9 9 = 18 mod 10 = 8
        ("[SM 7 8 9 ]", 4),
        ("[MED 3 1 2 ]", 2),
        ("[MED 1 8 ]", 4),  # even count: (1 + 8) / 2 = 4.5, floored
        ("[MED [MAX 1 2 ] [MIN 8 9 ] 5 0 ]", 3),  # args 2 8 5 0 -> middle 2 and 5 -> 3
        ("[MAX [MED 9 9 0 ] [SM 5 5 ] [MIN 3 [MAX 1 7 ] ] ]", 9),
        ("[MIN [MAX [SM 6 6 ] [MED 2 4 ] ] 8 ]", 3),  # MAX(2, 3) = 3
        ("7", 7),
    ],
)
def test_listops_solver_on_hand_written_expressions(expression: str, value: int) -> None:
    task = ListOpsTask(ListOpsParams(min_len=1), 32)
    tokens = encode(expression, 32)
    assert int(tokens[-1]) == CLS and int(tokens[0]) == PAD
    expected = torch.full((1, 32), IGNORE, dtype=torch.int64)
    expected[0, -1] = value
    assert torch.equal(task.solve(tokens[None]), expected)


@pytest.mark.parametrize("expression", ["[MAX 2 9", "[MAX 2 ] ]", "[MAX 2 3 ] 4", "]"])
def test_listops_solver_rejects_malformed_expressions(expression: str) -> None:
    task = ListOpsTask(ListOpsParams(min_len=1), 16)
    with pytest.raises(ValueError):
        task.solve(encode(expression, 16)[None])


def test_listops_median_and_sum_match_lra_definitions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        args = rng.integers(0, 10, size=int(rng.integers(2, 11))).tolist()
        assert apply_op(MED, args) == int(np.median(args))
        assert apply_op(SM, args) == int(np.sum(args)) % 10


def test_listops_expressions_fit_between_min_len_and_n_minus_1() -> None:
    n = 300
    task = _task("listops", n)
    tokens = _draw(task, 200, seed=3).tokens
    lengths = (tokens != PAD).sum(dim=1) - 1  # minus CLS
    assert int(lengths.min()) >= n // 4 and int(lengths.max()) <= n - 1
    assert bool((tokens[:, -1] == CLS).all()) and int((tokens[:, :-1] == CLS).sum()) == 0
    # PAD only before the expression.
    first_token = torch.where(tokens != PAD, torch.arange(n), n).min(dim=1).values
    assert bool((first_token == n - 1 - lengths).all())
    assert max_length(ListOpsParams(max_depth=3, max_args=5)) == 2 + 5 * (2 + 5)


def test_recall_solver_on_hand_written_sequences() -> None:
    # keys 0..3, values 4..7 (classes 0..3), filler 8..9
    mqar = MqarTask(MqarParams(num_keys=4, num_values=4, num_filler=2, num_kv_pairs=2, num_queries=2), 8)
    tokens = torch.tensor([[2, 7, 0, 5, 8, 0, 9, 2], [1, 4, 3, 4, 3, 8, 1, 9]])
    expected = torch.tensor([[IGNORE] * 5 + [1, IGNORE, 3], [IGNORE] * 4 + [0, IGNORE, 0, IGNORE]])
    assert torch.equal(mqar.solve(tokens), expected)

    retrieval = RetrievalTask(RetrievalParams(num_keys=3, num_values=2, num_filler=2, num_distractors=0), 6)
    tokens = torch.tensor([[5, 1, 3, 6, 2, 1], [0, 4, 6, 1, 3, 0]])  # keys 0..2, values 3..4
    expected = torch.tensor([[IGNORE] * 5 + [0], [IGNORE] * 5 + [1]])
    assert torch.equal(retrieval.solve(tokens), expected)


@pytest.mark.parametrize("name", ["mqar", "listops", "retrieval"])
def test_same_seed_same_batch_and_other_seed_differs(name: str) -> None:
    task = _task(name, 128)
    a, b, c = _draw(task, 16, seed=7), _draw(task, 16, seed=7), _draw(task, 16, seed=8)
    for field in ("tokens", "targets", "distances"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.tokens, c.tokens)
    # The generator advances: two draws from one generator differ.
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(task.generate(16, g).tokens, task.generate(16, g).tokens)


def test_mqar_layout_and_distances() -> None:
    params = MqarParams()
    n, pairs = 256, params.num_kv_pairs
    batch = _draw(MqarTask(params, n), 200, seed=1)
    tokens, asked = batch.tokens, batch.targets != IGNORE
    keys = tokens[:, 0 : 2 * pairs : 2]
    assert bool((keys < params.num_keys).all())
    assert all(len(set(row)) == pairs for row in keys.tolist())  # distinct keys per sequence
    assert bool((asked.sum(dim=1) == params.num_queries).all())
    assert not bool(asked[:, : 2 * pairs].any())
    rows, cols = asked.nonzero(as_tuple=True)
    key_pos = cols - batch.distances[rows, cols]
    assert bool((key_pos % 2 == 0).all()) and bool((key_pos < 2 * pairs).all())
    assert torch.equal(tokens[rows, key_pos], tokens[rows, cols])
    assert torch.equal(tokens[rows, key_pos + 1] - params.num_keys, batch.targets[rows, cols])
    # Non-query positions after the pairs hold filler only.
    tail = tokens[:, 2 * pairs :][~asked[:, 2 * pairs :]]
    assert int(tail.min()) >= params.num_keys + params.num_values


def test_mqar_power_law_puts_most_queries_near_the_pairs() -> None:
    n = 512
    near = MqarTask(MqarParams(power_a=0.01), n)
    flat = MqarTask(MqarParams(power_a=1.0), n)
    d_near = _draw(near, 200, 0).distances
    d_flat = _draw(flat, 200, 0).distances
    median_near = float(d_near[d_near >= 0].float().median())
    median_flat = float(d_flat[d_flat >= 0].float().median())
    assert median_near < 0.25 * median_flat
    assert int(d_near.max()) > n // 2  # the tail still reaches far


@pytest.mark.parametrize("n", LENGTHS)
def test_retrieval_fixed_distance_is_exact(n: int) -> None:
    d = n // 3
    task = RetrievalTask(RetrievalParams(distance=d), n)
    batch = _draw(task, 100, seed=2)
    assert bool((batch.distances[:, -1] == d).all())
    assert bool((batch.distances[:, :-1] == -1).all())
    assert torch.equal(batch.tokens[:, n - 1 - d], batch.tokens[:, -1])  # the needle's key
    assert torch.equal(batch.tokens[:, n - d] - task.params.num_keys, batch.targets[:, -1])
    # Edge distances 2 and n-2 are allowed.
    for edge in (2, n - 2):
        edge_batch = _draw(RetrievalTask(RetrievalParams(distance=edge), n), 20, seed=0)
        assert bool((edge_batch.distances[:, -1] == edge).all())
        assert torch.equal(
            RetrievalTask(RetrievalParams(distance=edge), n).solve(edge_batch.tokens), edge_batch.targets
        )


def test_retrieval_distance_range_and_key_counts() -> None:
    n = 300
    task = RetrievalTask(RetrievalParams(distance_min=40, distance_max=60), n)
    batch = _draw(task, 400, seed=4)
    d = batch.distances[:, -1]
    assert int(d.min()) >= 40 and int(d.max()) <= 60
    assert len(set(d.tolist())) > 15  # spread over the range
    full = _draw(_task("retrieval", n), 400, seed=4).distances[:, -1]
    assert int(full.min()) >= 2 and int(full.max()) <= n - 2 and int(full.max()) > n * 3 // 4

    keys = task.params.num_keys
    for row in batch.tokens.tolist():
        seen = [t for t in row if t < keys]
        assert seen.count(row[-1]) == 2  # the needle's key: planted once, asked once
        assert len(seen) == 2 + task.params.num_distractors
        assert len(set(seen)) == 1 + task.params.num_distractors  # distractor keys are other keys


@pytest.mark.parametrize(
    ("name", "n", "values", "fragment"),
    [
        ("mqar", 20, {"num_kv_pairs": 8, "num_queries": 8}, "need 2*8+8 = 24 <= n"),
        ("mqar", 256, {"num_queries": 9}, "num_queries=9"),
        ("mqar", 256, {"num_kv_pairs": 10, "num_keys": 9, "num_queries": 2}, "num_keys=9"),
        ("mqar", 256, {"power_a": 0}, "power_a"),
        ("mqar", 256, {"num_keys": True}, "num_keys must be an integer"),
        ("mqar", 256, {"bogus": 1}, "unknown parameter 'bogus' for task mqar"),
        ("retrieval", 100, {"distance": 99}, "distance=99 exceeds n-2 = 98"),
        ("retrieval", 100, {"distance_max": 99}, "distance_max=99 exceeds n-2"),
        ("retrieval", 100, {"distance_min": 99}, "distance_min=99 exceeds n-2"),
        ("retrieval", 100, {"distance_min": 1}, "distance_min must be an integer >= 2"),
        ("retrieval", 100, {"distance_min": 50, "distance_max": 40}, "below distance_min"),
        ("retrieval", 16, {"num_distractors": 4}, "needs n >= 3*4+5 = 17"),
        ("retrieval", 100, {"num_distractors": 40, "num_keys": 32}, "num_keys >= 41"),
        ("listops", 100, {"min_len": 100}, "min_len=100 exceeds n-1 = 99"),
        ("listops", 512, {"max_depth": 3, "max_args": 5}, "allow at most 37 tokens"),
        ("listops", 512, {"value_p": 1.0, "min_len": 20}, "need 1%"),
        ("listops", 100, {"value_p": 1.5}, "value_p must be in [0.0, 1.0]"),
        ("listops", 100, {"max_depth": 1}, "max_depth must be an integer >= 2"),
        ("listops", 4, {}, "n must be >= 5"),
        ("listops", 100, {"depth": 3}, "unknown parameter 'depth' for task listops; known: max_depth"),
    ],
)
def test_bad_params_raise_one_line_value_error(name: str, n: int, values: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        _task(name, n, **values)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        _draw(_task("mqar", 64), 0, seed=0)


def test_params_round_trip_and_defaults() -> None:
    for cls in TASKS.values():
        defaults = cls.default_params()
        assert cls.make_params(defaults) == cls.Params()
        assert cls.summary and "\n" not in cls.summary
    assert MqarTask.default_params()["power_a"] == 0.01
    assert RetrievalTask.default_params()["num_distractors"] == 4
    assert ListOpsTask.default_params()["value_p"] == 0.25


def test_chance_levels() -> None:
    assert _task("mqar", 128, num_values=50).chance() == pytest.approx(1 / 50)
    assert _task("retrieval", 128, num_values=20).chance() == pytest.approx(1 / 20)

    task = _task("listops", 128)
    share = task.chance()
    assert 0.1 < share < 1
    # The docstring's definition: the majority class share of 2000 seed-0 expressions.
    answers = _draw(task, 2000, seed=0).targets[:, -1]
    assert share == pytest.approx(float(torch.bincount(answers, minlength=10).max()) / 2000)
    assert _task("listops", 128).chance() == share  # cached per parameters and n
