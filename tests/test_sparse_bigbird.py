"""sparse.bigbird: exact against its dense float64 reference, the layout as defined, and sparse for real."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.core.cases import Case, Sweep
from attnbench.core.registry import WORKLOADS, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.engine.expand import expand
from attnbench.workloads.base import Shape
from attnbench.workloads.reference import causal_mask, dense_reference
from attnbench.workloads.sparse import bigbird
from attnbench.workloads.sparse.bigbird import BigBirdAttention, BigBirdParams, block_layout, num_blocks, random_blocks
from tests.op_recorder import OpRecorder

load_plugins()


def make(n: int, B: int = 2, h: int = 3, d: int = 8, **params) -> BigBirdAttention:
    return BigBirdAttention(BigBirdParams(**params), Shape(B, h, d, n))


def qkv(n: int, B: int = 2, h: int = 3, d: int = 8, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))


def brute_force_mask(n: int, b: int, r: int, seed: int, causal: bool, head: int = 0, heads: int = 1) -> torch.Tensor:
    """The layout straight from its definition, one (query, key) pair at a time: the random
    blocks of head `head` among `heads` independent draws."""
    nb = num_blocks(n, b)
    rand = random_blocks(nb, r, seed, heads)[head].tolist()
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        qb = i // b
        for j in range(n):
            kb = j // b
            glob = qb in (0, nb - 1) or kb in (0, nb - 1)
            allowed = glob or abs(qb - kb) <= 1 or kb in rand[qb - 1]
            mask[i, j] = allowed and (j <= i or not causal)
    return mask


def test_registered_with_its_defaults() -> None:
    cls = WORKLOADS["sparse.bigbird"]
    assert cls is BigBirdAttention and cls.family == "sparse" and cls.subquadratic
    assert cls.default_params() == {
        "block": 64,
        "random_blocks": 3,
        "random_per_head": False,
        "seed": 0,
        "causal": False,
        "attention": "auto",
    }
    # random_per_head=False is what every case computed before the parameter existed.
    assert cls.neutral_params == {"random_per_head": False}
    assert cls.definition_revision(cls.default_params(), "core") == 1
    assert BigBirdParams().full_threshold == 704


# b=8, r=1: block-sparse from n=41 (6 blocks), "auto" falls back up to n=56.
def assert_gradients_match(module: torch.nn.Module, mask: torch.Tensor, n: int, proj_seed: int, seed: int) -> None:
    """The module's input gradients against the dense float64 reference with `mask`, through a
    random projection of the output (so every output element weighs differently)."""
    proj = torch.randn(2, 3, n, 8, generator=torch.Generator().manual_seed(proj_seed), dtype=torch.float64)
    grads = []
    for f in (module, lambda q, k, v: dense_reference(q, k, v, mask)):
        q, k, v = (t.requires_grad_(True) for t in qkv(n, seed=seed))
        grads.append(torch.autograd.grad((f(q, k, v) * proj).sum(), (q, k, v)))
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(
    ("n", "block", "r"),
    [(41, 8, 1), (48, 8, 1), (57, 8, 1), (64, 8, 1), (100, 8, 1), (57, 8, 2), (96, 8, 2), (203, 8, 2), (130, 16, 0)],
)
def test_matches_float64_reference(n: int, block: int, r: int, causal: bool) -> None:
    module = make(n, block=block, random_blocks=r, causal=causal, attention="block_sparse")
    q, k, v = qkv(n)
    got = module(q, k, v)
    assert got.shape == q.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, module.reference(q, k, v), rtol=1e-10, atol=1e-10)


def test_auto_just_above_the_threshold_is_block_sparse_and_exact() -> None:
    p = BigBirdParams(block=8, random_blocks=2)  # threshold (5 + 4)·8 = 72
    assert p.mode(72) == "full" and p.mode(73) == "block_sparse"
    for causal in (False, True):
        module = make(73, causal=causal, block=8, random_blocks=2)
        mask = module.reference_mask(73)
        assert mask is not None and not mask.all()
        q, k, v = qkv(73, seed=3)
        torch.testing.assert_close(module(q, k, v), dense_reference(q, k, v, mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_fallback_is_full_attention_at_and_below_the_threshold(causal: bool) -> None:
    values = {"block": 8, "random_blocks": 1, "seed": 0, "causal": causal, "attention": "auto"}

    def ran(n: int) -> str:
        return BigBirdAttention.resolve_params(dict(values), Shape(2, 3, 8, n))["attention"]

    assert [ran(n) for n in (10, 55, 56, 57)] == ["full", "full", "full", "block_sparse"]
    for attention in ("auto", "full"):
        module = make(56, block=8, random_blocks=1, causal=causal, attention=attention)
        q, k, v = qkv(56)
        expected = dense_reference(q, k, v, causal_mask(56) if causal else None)
        torch.testing.assert_close(module(q, k, v), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(module.reference(q, k, v), expected, rtol=1e-12, atol=1e-12)
    # Full attention is also allowed on long sequences when asked for.
    assert BigBirdParams(attention="full").mode(10_000) == "full"


def test_forcing_block_sparse_on_too_short_a_sequence_raises() -> None:
    values = {"block": 8, "random_blocks": 2, "seed": 0, "causal": False, "attention": "block_sparse"}
    # 7 blocks needed: n > 48.
    assert BigBirdAttention.resolve_params(dict(values), Shape(1, 1, 8, 49))["attention"] == "block_sparse"
    with pytest.raises(ValueError, match="block_sparse"):
        BigBirdAttention.resolve_params(dict(values), Shape(1, 1, 8, 48))
    module = make(48, **values)
    with pytest.raises(ValueError, match="n > 48"):
        module(*qkv(48))
    with pytest.raises(ValueError):
        module.reference_mask(48)


@pytest.mark.parametrize(
    "bad",
    [
        {"block": 0},
        {"block": 2.5},
        {"block": True},
        {"random_blocks": -1},
        {"seed": "x"},
        {"causal": 1},
        {"random_per_head": 1},
        {"attention": "sparse"},
    ],
)
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        BigBirdParams(**bad)


def test_sweep_records_which_attention_ran() -> None:
    sweep = Sweep(variants=("sparse.bigbird",), backends=("cpu",), seq_lens=(256, 704, 705, 1031, 4096))
    ran = {c.seq_len: c.params_dict["attention"] for c in expand(sweep)}
    assert ran == {256: "full", 704: "full", 705: "block_sparse", 1031: "block_sparse", 4096: "block_sparse"}
    forced = dataclasses.replace(
        sweep, seq_lens=(256,), params=(("sparse.bigbird", (("attention", ("block_sparse",)),)),)
    )
    with pytest.raises(Exception, match="n=256"):
        expand(forced)


# --- the layout ---------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "b", "r", "seed"), [(41, 8, 1, 0), (100, 8, 2, 5), (131, 8, 3, 1), (96, 4, 2, 9)])
def test_mask_is_the_definition(n: int, b: int, r: int, seed: int, causal: bool) -> None:
    mask = make(n, block=b, random_blocks=r, seed=seed, causal=causal, attention="block_sparse").reference_mask(n)
    assert torch.equal(mask, brute_force_mask(n, b, r, seed, causal))


@pytest.mark.parametrize(("nb", "r", "seed"), [(6, 1, 0), (7, 2, 1), (8, 3, 2), (40, 3, 3), (200, 5, 4), (9, 0, 0)])
def test_random_blocks_are_distinct_and_not_already_attended(nb: int, r: int, seed: int) -> None:
    table, valid = block_layout(nb, r, seed)
    assert table.shape == (1, nb - 2, 5 + r) and valid.shape == table.shape[1:]
    for row, blocks in enumerate(table[0].tolist()):
        i = row + 1
        assert blocks[:5] == [i - 1, i, i + 1, 0, nb - 1]
        rand = blocks[5:]
        assert len(set(rand)) == r and all(0 < x < nb - 1 and abs(x - i) > 1 for x in rand)
    assert valid.sum() == valid.numel() - 2 and not valid[0, 0] and not valid[-1, 2]


def test_random_blocks_cover_every_candidate() -> None:
    # Uniform over the candidates: with many seeds every allowed block of row i shows up.
    nb, r = 10, 2
    seen = [set() for _ in range(nb - 2)]
    for seed in range(60):
        for row, blocks in enumerate(random_blocks(nb, r, seed)[0].tolist()):
            seen[row].update(blocks)
    for row, blocks in enumerate(seen):
        i = row + 1
        assert blocks == set(range(1, nb - 1)) - {i - 1, i, i + 1}


def test_same_seed_same_layout_different_seed_different_layout() -> None:
    n = 640
    a = make(n, block=16, random_blocks=3, seed=7).reference_mask(n)
    assert torch.equal(a, make(n, block=16, random_blocks=3, seed=7).reference_mask(n))
    assert not torch.equal(a, make(n, block=16, random_blocks=3, seed=8).reference_mask(n))
    # And the fast path follows the seed: the same inputs give different outputs.
    q, k, v = qkv(n, B=1, h=1)
    out7 = make(n, B=1, h=1, block=16, random_blocks=3, seed=7)(q, k, v)
    assert torch.equal(out7, make(n, B=1, h=1, block=16, random_blocks=3, seed=7)(q, k, v))
    assert not torch.allclose(out7, make(n, B=1, h=1, block=16, random_blocks=3, seed=8)(q, k, v))


@settings(max_examples=30, deadline=None)
@given(
    block=st.sampled_from([2, 4, 8]),
    r=st.integers(0, 3),
    extra_blocks=st.integers(0, 6),
    tail=st.integers(1, 8),
    causal=st.booleans(),
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_reference(block, r, extra_blocks, tail, causal, batch, heads, seed) -> None:
    nb = 5 + r + extra_blocks
    n = (nb - 1) * block + min(tail, block)
    module = make(n, B=batch, h=heads, block=block, random_blocks=r, seed=seed, causal=causal, attention="block_sparse")
    q, k, v = qkv(n, B=batch, h=heads, seed=seed % 1000)
    mask = module.reference_mask(n)
    if n <= 64:
        assert torch.equal(mask, brute_force_mask(n, block, r, seed, causal))
    torch.testing.assert_close(module(q, k, v), dense_reference(q, k, v, mask), rtol=1e-10, atol=1e-10)
    # Useful FLOPs are exactly the mask's pairs; executed ones include the masked work.
    shape = Shape(batch, heads, 8, n)
    assert BigBirdAttention.flops(module.params, shape) == 4.0 * int(mask.sum()) * heads * 8 * batch
    assert BigBirdAttention.executed_flops(module.params, shape) >= BigBirdAttention.flops(module.params, shape)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), block=st.sampled_from([4, 8, 16]), r=st.integers(0, 3), causal=st.booleans())
def test_property_auto_resolves_by_hf_rule(n, block, r, causal) -> None:
    values = {"block": block, "random_blocks": r, "seed": 0, "causal": causal, "attention": "auto"}
    ran = BigBirdAttention.resolve_params(values, Shape(1, 1, 8, n))["attention"]
    assert ran == ("full" if n <= (5 + 2 * r) * block else "block_sparse")


# --- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [64, 75])
def test_gradients_match_dense_reference(n: int, causal: bool) -> None:
    module = make(n, block=8, random_blocks=2, causal=causal, attention="block_sparse")
    mask = module.reference_mask(n)
    assert_gradients_match(module, mask, n, proj_seed=1, seed=2)


# --- low precision ---------------------------------------------------------------------------
def test_bfloat16_is_close_to_float64() -> None:
    n = 300
    module = make(n, block=16, random_blocks=2, attention="block_sparse", d=32)
    q, k, v = qkv(n, d=32)
    got = module(*(t.to(torch.bfloat16) for t in (q, k, v)))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), module.reference(q, k, v), rtol=0, atol=5e-2)


# --- sparse for real ---------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_no_quadratic_tensor_is_ever_built(causal: bool) -> None:
    n, b, r, B, h, d = 4096, 32, 3, 1, 2, 16
    module = make(n, B=B, h=h, d=d, block=b, random_blocks=r, causal=causal)
    assert module.params.mode(n) == "block_sparse"
    q, k, v = (t.requires_grad_(True) for t in qkv(n, B=B, h=h, d=d, dtype=torch.float32))
    with OpRecorder() as seen:
        out = module(q, k, v)
        out.sum().backward()
    assert seen.largest <= 1.2 * B * h * n * (3 + 2 + r) * b  # the middle blocks' scores
    assert seen.largest < B * h * n * n / 10


def test_cost_methods() -> None:
    p = BigBirdParams()
    long = Shape(2, 8, 64, 16384)
    D = long.model_dim
    useful, executed = BigBirdAttention.flops(p, long), BigBirdAttention.executed_flops(p, long)
    # docs/cost-model.md: ≈ 4nD·b(7+r) per sequence, exact here up to the edge blocks.
    approx = 4 * long.seq_len * D * 64 * (7 + 3) * long.batch
    assert 0.97 * approx < useful < approx and useful <= executed < 1.01 * approx
    causal = dataclasses.replace(p, causal=True)
    assert BigBirdAttention.flops(causal, long) < 0.6 * useful
    assert BigBirdAttention.flops(causal, long) <= BigBirdAttention.executed_flops(causal, long)
    # Padded lengths execute padding work, never less than the useful count.
    odd = dataclasses.replace(long, seq_len=5000)
    assert BigBirdAttention.executed_flops(p, odd) > BigBirdAttention.flops(p, odd)
    # The fallback is dense.
    short = Shape(1, 8, 64, 700)
    assert BigBirdAttention.flops(p, short) == BigBirdAttention.executed_flops(p, short) == 4.0 * 700**2 * 512
    assert BigBirdAttention.case_flops(p, long, "core", "train") == 3.5 * useful
    # Working memory grows linearly in n (a run's buffers are a constant on top); the estimate
    # is above the minimum and training doubles.
    w1, w2, w4 = (
        BigBirdAttention.working_bytes(p, dataclasses.replace(long, seq_len=m), 4) for m in (8192, 16384, 32768)
    )
    assert w4 - w2 == 2 * (w2 - w1) > 0
    fwd = BigBirdAttention.peak_bytes_estimate(p, long, 4, train=False)
    assert fwd > BigBirdAttention.working_bytes(p, long, 4)
    assert BigBirdAttention.peak_bytes_estimate(p, long, 4, train=True) >= 2 * fwd


@pytest.fixture(scope="module")
def executor() -> LocalExecutor:
    return LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))


@pytest.mark.slow  # real workers at several lengths, 5-8 s: CI runs it (-m slow), tests/test_memory.py too
def test_peak_memory_grows_linearly(executor: LocalExecutor) -> None:
    peaks = {}
    for n in (4096, 8192):
        shape = Shape(1, 8, 64, n)
        params = BigBirdAttention.resolve_params(BigBirdAttention.default_params(), shape)
        assert params["attention"] == "block_sparse"
        case = Case("sparse.bigbird", tuple(sorted(params.items())), "core", "cpu", "float32", "forward", 1, 8, 64, n)
        out = executor.run(case)
        assert out.status == "ok", out.reason
        peaks[n] = out.result.peak_memory_bytes
        assert peaks[n] <= BigBirdAttention.peak_bytes_estimate(BigBirdParams(**params), shape, 4, train=False)
    assert 1.6 <= peaks[8192] / peaks[4096] <= 2.3, peaks
    # Far below one (h, n, n) float32 score buffer.
    assert peaks[8192] < 8 * 8192**2 * 4 / 4


def test_layout_tables_are_cached() -> None:
    module = make(200, block=8, random_blocks=2, attention="block_sparse")
    q, k, v = qkv(200)
    module(q, k, v)
    plan = module._plans[(200, 2, 3, q.device)]
    module(q, k, v)
    assert module._plans[(200, 2, 3, q.device)] is plan and len(module._plans) == 1
    assert math.isfinite(float(module(q, k, v).sum()))


def test_verification_length_keeps_the_block_sparse_path() -> None:
    # With big blocks the worker's usual 1031-token check would be too short for the layout.
    p = BigBirdAttention.make_params({"block": 256, "random_blocks": 3, "attention": "block_sparse"})
    n = BigBirdAttention.verify_length(p, 8192, 1031)
    assert 1031 < n <= 8192
    assert p.mode(n) == "block_sparse"
    assert BigBirdAttention.verify_length(BigBirdAttention.make_params({}), 8192, 1031) == 1031


# --- runs of middle blocks -------------------------------------------------------------------
@pytest.mark.parametrize("blocks_per_run", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("n", "r"), [(100, 2), (123, 1), (96, 0)])
def test_short_runs_match_reference_and_its_gradients(
    monkeypatch: pytest.MonkeyPatch, blocks_per_run: int, causal: bool, n: int, r: int
) -> None:
    # At the test sizes one run covers every middle block; force several runs (B·h = 6 heads).
    b = 8
    monkeypatch.setattr(bigbird, "CHUNK_SCORES", blocks_per_run * 6 * b * b * (5 + r))
    module = make(n, block=b, random_blocks=r, causal=causal, attention="block_sparse")
    plan = module._plan(n, 2, 3, torch.device("cpu"))
    assert len(plan.chunks) > 2 and all(end - first <= blocks_per_run for first, end, _ in plan.chunks)
    mask = module.reference_mask(n)
    q, k, v = qkv(n, seed=4)
    torch.testing.assert_close(module(q, k, v), dense_reference(q, k, v, mask), rtol=1e-10, atol=1e-10)
    assert_gradients_match(module, mask, n, proj_seed=5, seed=6)


@pytest.mark.parametrize("causal", [False, True])
def test_inference_buffers_are_bounded_by_a_run(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    # Every head at once, the middle blocks in runs of CHUNK_SCORES score elements: nothing
    # but the inputs' own copies, the output and the global rows grows with n; a run's
    # gathered sliding and random blocks are copies of that run's blocks only.
    n, b, r, B, h, d = 3990, 32, 3, 2, 2, 16  # a partial last block
    run_blocks = 8
    monkeypatch.setattr(bigbird, "CHUNK_SCORES", run_blocks * B * h * b * b * (5 + r))
    module = make(n, B=B, h=h, d=d, block=b, random_blocks=r, causal=causal)
    assert bigbird._per_chunk(b, r, B * h, bigbird.CHUNK_SCORES) == run_blocks
    q, k, v = qkv(n, B=B, h=h, d=d, dtype=torch.float32)
    with OpRecorder(keep_calls=True) as rec:
        out = module(q, k, v)
    torch.testing.assert_close(out.double(), module.reference(q, k, v), rtol=1e-4, atol=1e-4)
    run_scores = B * h * run_blocks * b * (5 + r) * b
    for func, _, outs in rec.calls:
        for t in outs:
            if t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
                continue  # the result itself, written in place
            assert t.numel() <= max(B * h * n * d, B * h * 2 * b * n, run_scores), func
            if func is torch.ops.aten.index.Tensor:  # a run's random blocks, every head at once
                assert t.numel() <= B * h * run_blocks * r * b * d
            if func is torch.ops.aten.clone.default:  # a run's sliding windows (and scaled queries)
                assert t.numel() <= B * h * run_blocks * 3 * b * d, func


def test_heads_are_batched_not_looped() -> None:
    """One set of ops for every batch row and head: the op count does not grow with B·h
    (a loop over heads would make GPU timings launch-bound)."""

    def ops(B: int, h: int, per_head: bool) -> int:
        n = 300
        module = make(n, B=B, h=h, block=8, random_blocks=2, random_per_head=per_head, attention="block_sparse")
        q, k, v = (t.requires_grad_(True) for t in qkv(n, B=B, h=h))
        module(q, k, v)  # the layout tables are built once per length, batch and head count
        with OpRecorder() as rec:
            out = module(q, k, v)
            torch.autograd.grad(out.sum(), (q, k, v))
        return rec.ops

    # (With B·h = 1 some reshapes are views instead of copies, so start at 2.)
    counts = {ops(B, h, per_head) for B, h in ((1, 2), (1, 4), (3, 5), (2, 8)) for per_head in (False, True)}
    assert len(counts) == 1, counts


def test_cost_methods_follow_what_runs() -> None:
    p = BigBirdParams()
    shape = Shape(1, 8, 64, 8192)
    nb, b, r, tail = 128, 64, 3, 64
    M = nb - 2
    # Global rows against every key; middle blocks: 3 sliding (2 for block nb−2), b + tail global
    # keys and r random blocks each.
    pairs = (b + tail) * 8192 + M * b * (b + tail + r * b) + b * b * (3 * M - 1)
    assert BigBirdAttention.executed_flops(p, shape) == 4.0 * pairs * shape.model_dim
    # The forward's peak estimate counts one run (an accelerator's: 64 blocks, whatever n), not
    # a score buffer for all middle blocks (1022 at 64K).
    for m in (32768, 65536):
        run = BigBirdAttention._run_elements(p, dataclasses.replace(shape, seq_len=m), bigbird.CHUNK_SCORES_ACCELERATOR)
        assert run[0] == 8 * 64 * b * (5 + r) * b


def test_runs_are_cache_sized_on_cpu_and_large_elsewhere() -> None:
    n, B, h = 65536, 1, 8
    module = make(n, B=B, h=h, d=64)
    for device, budget, blocks in (("cpu", bigbird.CHUNK_SCORES, 2), ("meta", bigbird.CHUNK_SCORES_ACCELERATOR, 64)):
        plan = module._plan(n, B, h, torch.device(device))
        # 8 heads × blocks × 64 × 512 scores per run: 2 MiB (CPU), 64 MiB (elsewhere) in float32.
        assert bigbird._per_chunk(64, 3, B * h, budget) == blocks
        assert max(end - first for first, end, _ in plan.chunks) == blocks
        assert len(plan.chunks) == -(-1021 // blocks) + 1  # uniform runs, then block nb−2 alone


def test_executed_flops_are_what_torch_counts() -> None:
    """torch's FlopCounterMode counts every product the block-sparse path runs (with and without
    autograd, which take different routes): exactly executed_flops."""
    from torch.utils.flop_counter import FlopCounterMode

    for n, causal, per_head in itertools.product((100, 128, 203), (False, True), (False, True)):
        module = make(n, block=8, random_blocks=2, causal=causal, random_per_head=per_head, attention="block_sparse")
        expected = BigBirdAttention.executed_flops(module.params, Shape(2, 3, 8, n))
        for grad in (False, True):
            q, k, v = (t.requires_grad_(grad) for t in qkv(n, dtype=torch.float32))
            with FlopCounterMode(display=False) as counter:
                module(q, k, v)
            assert counter.get_total_flops() == expected, (n, causal, per_head, grad)


# --- random blocks drawn per head (HF) ---------------------------------------------------------
def test_shared_draw_is_unchanged() -> None:
    # The draw every case made before random_per_head existed (pinned), and head 0 of a
    # per-head draw is that same draw.
    shared = [[5, 8], [5, 7], [5, 6], [1, 8], [2, 7], [3, 4], [1, 3], [3, 4]]
    assert random_blocks(10, 2, 0).tolist() == [shared]
    assert random_blocks(10, 2, 0, 4)[0].tolist() == shared


@pytest.mark.parametrize(("nb", "r", "seed", "heads"), [(8, 1, 0, 3), (12, 3, 5, 4), (40, 2, 1, 8)])
def test_per_head_draws_are_independent_and_valid(nb: int, r: int, seed: int, heads: int) -> None:
    table, valid = block_layout(nb, r, seed, heads)
    assert table.shape == (heads, nb - 2, 5 + r) and valid.shape == (nb - 2, 5 + r)
    for z in range(heads):
        for row, blocks in enumerate(table[z].tolist()):
            i = row + 1
            assert blocks[:5] == [i - 1, i, i + 1, 0, nb - 1]
            rand = blocks[5:]
            assert len(set(rand)) == r and all(0 < x < nb - 1 and abs(x - i) > 1 for x in rand)
    # Heads draw on their own: not all alike (HF draws each head's blocks separately).
    assert any(not torch.equal(table[0], table[z]) for z in range(1, heads))


def test_per_head_draws_cover_every_candidate_in_every_head() -> None:
    nb, r, heads = 10, 2, 3
    seen = [[set() for _ in range(nb - 2)] for _ in range(heads)]
    for seed in range(60):
        table = random_blocks(nb, r, seed, heads).tolist()
        for z in range(heads):
            for row, blocks in enumerate(table[z]):
                seen[z][row].update(blocks)
    for z in range(heads):
        for row, blocks in enumerate(seen[z]):
            assert blocks == set(range(1, nb - 1)) - {row, row + 1, row + 2}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "b", "r", "seed"), [(41, 8, 1, 0), (100, 8, 2, 5), (131, 8, 3, 1)])
def test_per_head_masks_are_the_definition(n: int, b: int, r: int, seed: int, causal: bool) -> None:
    h = 3
    params = dict(block=b, random_blocks=r, seed=seed, causal=causal, attention="block_sparse")
    module = make(n, h=h, random_per_head=True, **params)
    masks = module.head_masks(n)
    assert masks.shape == (h, n, n)
    for z in range(h):
        assert torch.equal(masks[z], brute_force_mask(n, b, r, seed, causal, head=z, heads=h))
    # The recorded picture is head 0's, which is the shared layout.
    shared = make(n, h=h, **params)
    assert torch.equal(module.reference_mask(n), masks[0])
    assert torch.equal(module.reference_mask(n), shared.reference_mask(n))
    assert shared.head_masks(n).shape == (1, n, n)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize(("n", "r"), [(57, 1), (100, 2), (203, 2), (96, 3)])
def test_per_head_draws_match_their_reference_and_gradients(n: int, r: int, causal: bool) -> None:
    module = make(n, block=8, random_blocks=r, causal=causal, random_per_head=True, attention="block_sparse")
    masks = module.head_masks(n)  # (h, n, n)
    q, k, v = qkv(n, seed=7)
    got = module(q, k, v)
    torch.testing.assert_close(got, dense_reference(q, k, v, masks), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, module.reference(q, k, v), rtol=1e-10, atol=1e-10)
    # Really per head: the shared layout's result differs on heads 1 and 2, not on head 0.
    shared = dense_reference(q, k, v, masks[0])
    torch.testing.assert_close(got[:, 0], shared[:, 0], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got[:, 1:], shared[:, 1:])
    assert_gradients_match(module, masks, n, proj_seed=8, seed=9)


@pytest.mark.parametrize("causal", [False, True])
def test_per_head_flops_count_every_heads_pairs(causal: bool) -> None:
    n, h = 203, 4
    module = make(n, h=h, block=8, random_blocks=3, causal=causal, random_per_head=True, attention="block_sparse")
    shape = Shape(2, h, 8, n)
    pairs = [int(m.sum()) for m in module.head_masks(n)]
    assert BigBirdAttention.flops(module.params, shape) == 4.0 * sum(pairs) * 8 * 2
    # Causal: a random block after its query block carries no weight, and each head's draw
    # puts a different number there; without causal every head has the same count.
    assert (len(set(pairs)) > 1) == causal
    shared = dataclasses.replace(module.params, random_per_head=False)
    assert BigBirdAttention.executed_flops(module.params, shape) == BigBirdAttention.executed_flops(shared, shape)


def test_per_head_draws_at_the_default_verification_length() -> None:
    # The worker's check: defaults at n = 1031 (auto: block-sparse), float32 against float64.
    module = make(1031, B=1, h=4, d=16, random_per_head=True)
    assert module.params.mode(1031) == "block_sparse"
    q, k, v = qkv(1031, B=1, h=4, d=16)
    got = module(*(t.float() for t in (q, k, v)))
    assert (got.double() - module.reference(q, k, v)).abs().max() < 1e-4


def test_case_ids_keep_the_shared_draw_and_split_the_per_head_one() -> None:
    def case(scope: str = "core", **values) -> Case:
        params = (("sparse.bigbird", tuple((k, (v,)) for k, v in values.items())),)
        sweep = Sweep(variants=("sparse.bigbird",), backends=("cpu",), seq_lens=(4096,), scopes=(scope,), params=params)
        [c] = expand(sweep)
        return c

    shared, per_head = case(), case(random_per_head=True)
    # The id a case had before random_per_head existed: its parameters without it.
    before = Case(
        "sparse.bigbird",
        tuple((k, v) for k, v in shared.params if k != "random_per_head"),
        "core",
        "cpu",
        "float32",
        "forward",
        1,
        8,
        64,
        4096,
    )
    assert shared.case_id == before.case_id and shared.revision == 1
    assert per_head.case_id != shared.case_id and per_head.revision == 1
    assert case(scope="layer").revision == 1
