"""sparse.lsh (Reformer): exact against its dense float64 reference, seeded hashing, gradients,
no n×n tensor anywhere, linear memory growth through the real executor, honest costs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.backends.base import eager_step
from attnbench.core.cases import Case, Sweep
from attnbench.core.registry import get_workload
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.engine.expand import expand
from attnbench.workloads.base import Shape
from attnbench.workloads.reference import dense_reference
from attnbench.workloads.sparse import lsh
from attnbench.workloads.sparse.lsh import (
    SEED_STRIDE,
    LSHAttention,
    LSHParams,
    auto_buckets,
    bucket_factors,
    lsh_buckets,
)
from tests.op_recorder import OpRecorder, new_tensors


def qkv(B: int, h: int, n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))


def make(n: int, B: int = 2, h: int = 3, d: int = 8, **params) -> LSHAttention:
    return LSHAttention(LSHParams(**params), Shape(B, h, d, n))


def check(n: int, B: int = 2, h: int = 3, d: int = 8, data_seed: int = 0, **params) -> None:
    q, k, v = qkv(B, h, n, d, data_seed)
    module = make(n, B, h, d, **params)
    got = module(q, k, v)
    assert got.shape == q.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, module.reference(q, k, v), rtol=1e-10, atol=1e-10)


def reformer_keys(q: torch.Tensor) -> torch.Tensor:
    """Hugging Face's `_len_and_dim_norm` line by line (`_len_norm`, eps 1e-6, then · rsqrt(d));
    trax's `attend` for shared QK is the same (`length_normalized(k)`, then `k / sqrt(d)`)."""
    variance = torch.mean(q**2, -1, keepdim=True)
    norm_q = q * torch.rsqrt(variance + 1e-6)
    return norm_q * torch.rsqrt(torch.tensor(q.shape[-1], dtype=q.dtype))


def unscaled(q: torch.Tensor) -> torch.Tensor:
    """Keys for `dense_reference`, which divides by √d: Reformer's scores are q·k̂ without it."""
    return reformer_keys(q) * math.sqrt(q.shape[-1])


# --- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hashes", [1, 3])
@pytest.mark.parametrize("n", [1, 20, 32, 33, 64, 100, 161])  # ≤ c, = c, c+1, several chunks, on and off
def test_matches_dense_reference(n: int, hashes: int, causal: bool) -> None:
    check(n, chunk=32, hashes=hashes, causal=causal)


def test_matches_with_explicit_buckets_and_two_chunks() -> None:
    check(64, chunk=32, hashes=2, buckets=2)  # two buckets: long runs of one bucket across chunks
    check(60, chunk=32, hashes=2, buckets=16, causal=True)  # two chunks, the second padded


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "auto"), [(257, (256, 16)), (301, (256, 32))])  # c = 2: 16·16 and 32·8
def test_matches_with_factorised_buckets(n: int, auto: tuple[int, int], causal: bool) -> None:
    assert auto_buckets(n, 2) == auto
    check(n, chunk=2, hashes=2, causal=causal)
    check(n // 2, chunk=8, hashes=3, buckets=24, bucket_factor=4, causal=causal)  # explicit, 4·6


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 90),
    chunk=st.integers(1, 40),
    hashes=st.integers(1, 4),
    causal=st.booleans(),
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    data_seed=st.integers(0, 1000),
)
def test_property_matches_reference(
    n: int, chunk: int, hashes: int, causal: bool, batch: int, heads: int, seed: int, data_seed: int
) -> None:
    check(n, batch, heads, 4, data_seed, chunk=chunk, hashes=hashes, causal=causal, seed=seed)


@pytest.mark.parametrize("n", [2, 17, 32])
def test_single_chunk_is_dense_attention_with_self_masked(n: int) -> None:
    q, k, v = qkv(2, 3, n)
    allowed = ~torch.eye(n, dtype=torch.bool)
    expected = dense_reference(q, unscaled(q), v, allowed)  # −1e5 and −∞ agree when a query has other keys
    for hashes in (1, 3):
        got = make(n, chunk=32, hashes=hashes)(q, k, v)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # Causal: query 0 has only itself, which the −1e5 convention attends (−∞ would give nothing).
    got = make(n, chunk=32, hashes=2, causal=True)(q, k, v)
    expected = dense_reference(q, unscaled(q), v, torch.ones(n, n, dtype=torch.bool).tril(-1))
    torch.testing.assert_close(got[:, :, 1:], expected[:, :, 1:], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[:, :, 0], v[:, :, 0], rtol=1e-12, atol=1e-12)


def test_single_token_attends_itself() -> None:
    q, k, v = qkv(1, 2, 1)
    torch.testing.assert_close(make(1, 1, 2, chunk=64)(q, k, v), v)


def test_k_is_ignored_shared_qk() -> None:
    q, k, v = qkv(2, 3, 50)
    module = make(50, chunk=16)
    torch.testing.assert_close(module(q, k, v), module(q, torch.randn_like(k), v), rtol=0, atol=0)


def test_scale_is_reformers_unit_length_keys_without_a_further_root_d() -> None:
    # One chunk (n ≤ c): dense attention with the self mask, so the scores are visible.
    # q = (1, 0), (0, 2), (3, 4): unit keys (1, 0), (0, 1), (0.6, 0.8) up to the 1e-6.
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 3, 2)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64).view(1, 1, 3, 2)
    module = make(3, 1, 1, 2, chunk=64)
    got = module(q, q, v)[0, 0]
    # The reference code's computation: q · k̂ᵀ, own position −1e5, softmax, · v.
    dots = q[0, 0] @ reformer_keys(q)[0, 0].T
    dots.fill_diagonal_(-1e5)
    torch.testing.assert_close(got, torch.softmax(dots, -1) @ v[0, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.reference(q, q, v)[0, 0], got, rtol=1e-12, atol=1e-12)
    # Pinned: query 0 scores 0 and 0.6 against keys 1 and 2 (not 0.6/√2); query 2 scores 3 and 4.
    w = math.exp(0.6) / (1 + math.exp(0.6))  # 0.6457
    e3, e4 = math.exp(3.0), math.exp(4.0)
    w1 = math.exp(1.6) / (1 + math.exp(1.6))  # query 1: 0 and 1.6 against keys 0 and 2
    pinned = torch.tensor([[w, 1.0], [1.0, w1], [e3 / (e3 + e4), e4 / (e3 + e4)]], dtype=torch.float64)
    torch.testing.assert_close(got, pinned, rtol=0, atol=1e-5)  # the 1e-6 epsilon moves them by < 1e-5
    assert abs(float(got[0, 0]) - 0.645656) < 1e-6  # with a further 1/√2 it would be 0.6045


# --- hashing ---------------------------------------------------------------------------------


def test_bucket_assignment_matches_a_direct_computation() -> None:
    B, h, n, d, nb, hashes, seed = 2, 3, 11, 8, 6, 2, 5
    q, _, _ = qkv(B, h, n, d)
    got = lsh_buckets(q, (nb,), hashes, seed)
    assert got.shape == (B, h, hashes, n) and got.dtype == torch.long
    x = q.float() / q.float().norm(dim=-1, keepdim=True)
    for r in range(hashes):
        rot = torch.randn(h, d, nb // 2, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + r))
        for b in range(B):
            for head in range(h):
                xr = x[b, head] @ rot[head]  # (n, nb/2), one rotation per head
                expected = torch.cat([xr, -xr], dim=-1).argmax(dim=-1)
                assert torch.equal(got[b, head, r], expected)
    assert int(got.min()) >= 0 and int(got.max()) < nb
    # Hashing runs in float32, so the float64 reference and a float32 fast path agree.
    assert torch.equal(lsh_buckets(q.float(), (nb,), hashes, seed), got)


def test_factorised_buckets_combine_as_trax_and_hugging_face() -> None:
    # trax hash_vecs / HF _hash_vectors with a list [f1, f2]: one rotation of (f1 + f2)/2
    # columns, b1 from the first f1/2, b2 from the next f2/2, bucket b1 + f1·b2.
    B, h, n, d, f1, f2, hashes, seed = 2, 3, 50, 8, 4, 6, 2, 3
    q, _, _ = qkv(B, h, n, d)
    got = lsh_buckets(q, (f1, f2), hashes, seed)
    x = q.float() / q.float().norm(dim=-1, keepdim=True)
    for r in range(hashes):
        rot = torch.randn(h, d, (f1 + f2) // 2, generator=torch.Generator().manual_seed(seed * SEED_STRIDE + r))
        xr = torch.einsum("bhnd,hdk->bhnk", x, rot)
        r1, r2 = xr[..., : f1 // 2], xr[..., f1 // 2 :]
        b1 = torch.cat([r1, -r1], dim=-1).argmax(dim=-1)
        b2 = torch.cat([r2, -r2], dim=-1).argmax(dim=-1)
        assert torch.equal(got[:, :, r], b1 + f1 * b2)
    assert int(got.min()) >= 0 and int(got.max()) < f1 * f2
    assert len(got.unique()) > max(f1, f2)  # both factors really vary


def trax_auto_buckets(n: int, c: int) -> int | list[int]:
    """trax LSHSelfAttention.hash_vectors' automatic n_buckets, as it writes it."""
    n_buckets = 2 * max(1, n // c)
    if n_buckets <= 128:
        return n_buckets
    n_buckets_div = 2 ** math.ceil(math.log2(math.sqrt(n_buckets)))
    n_buckets_rest = 2 * (n_buckets // (2 * n_buckets_div))
    return [n_buckets_div, n_buckets_rest]


def test_auto_buckets_follow_trax_and_factorise_above_128() -> None:
    for c in (1, 2, 7, 32, 64, 100):
        for n in (*range(1, 4 * 130 * c, max(1, c // 3)), 32768, 65536, 100_000, 262_144):
            total, factor = auto_buckets(n, c)
            trax = trax_auto_buckets(n, c)
            if isinstance(trax, int):
                assert (total, factor) == (trax, 0)
            else:
                assert (factor, total // factor) == tuple(trax) and total == trax[0] * trax[1]
    # Default chunk 64: one rotation through n = 4159 (128 buckets), two above.
    assert auto_buckets(4096, 64) == (128, 0) and auto_buckets(4159, 64) == (128, 0)
    assert auto_buckets(4160, 64) == (128, 16)  # n_b = 130 → 16 · 8
    assert auto_buckets(8256, 64) == (256, 32)  # n_b = 258 → 32 · 8
    assert [auto_buckets(n, 64) for n in (8192, 16384, 32768, 65536)] == [(256, 16), (512, 32), (1024, 32), (2048, 64)]


def test_same_seed_same_buckets_and_output_other_seed_differs() -> None:
    q, k, v = qkv(2, 3, 200)
    a, b, other = make(200, chunk=16, seed=7), make(200, chunk=16, seed=7), make(200, chunk=16, seed=8)
    assert torch.equal(a.pattern(q), b.pattern(q))
    assert torch.equal(a(q, k, v), b(q, k, v))
    nb = a.factors(200)
    assert torch.equal(lsh_buckets(q, nb, 2, 7), lsh_buckets(q, nb, 2, 7))
    assert not torch.equal(lsh_buckets(q, nb, 2, 7), lsh_buckets(q, nb, 2, 8))
    assert not torch.equal(a.pattern(q), other.pattern(q))
    assert not torch.allclose(a(q, k, v), other(q, k, v))


def test_pattern_is_chunk_windows_with_self() -> None:
    n, c, hashes = 160, 16, 2  # ten full chunks: every round's window holds exactly 2c keys
    q, _, _ = qkv(2, 3, n)
    count = make(n, chunk=c, hashes=hashes).pattern(q)
    assert count.shape == (2, 3, n, n)
    assert int(count.max()) <= hashes
    assert torch.equal(count.diagonal(dim1=-2, dim2=-1), torch.full((2, 3, n), hashes))  # own chunk
    assert int((count > 0).sum(-1).max()) <= hashes * 2 * c
    assert int((count > 0).sum(-1).min()) >= 2 * c
    assert torch.equal(count.sum(-1), torch.full((2, 3, n), hashes * 2 * c))  # duplicates counted
    mask = make(n, chunk=c).reference_mask(n)
    assert mask.shape == (n, n) and mask.dtype == torch.bool and bool(mask.diagonal().all())


# --- training mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "causal"), [(100, False), (77, True), (20, False)])
def test_gradients_match_dense_reference(n: int, causal: bool) -> None:
    q, k, v = (t.requires_grad_(True) for t in qkv(2, 2, n))
    module = make(n, 2, 2, chunk=16, hashes=3, causal=causal)
    proj = torch.randn(2, 2, n, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = torch.autograd.grad((module(q, k, v) * proj).sum(), (q, k, v), allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad((module.reference(q, k, v) * proj).sum(), (q, v))
    assert torch.equal(got[1], torch.zeros_like(k))  # k is not used (shared QK): zero gradient
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got[2], want[1], rtol=1e-9, atol=1e-10)


def test_train_step_of_the_harness_runs() -> None:
    # The backend differentiates with respect to every input, k included.
    shape = Shape(1, 2, 8, 100)
    inputs = LSHAttention.make_inputs(shape, "core", torch.float32, torch.device("cpu"), torch.Generator())
    grads = eager_step(LSHAttention(LSHParams(chunk=16), shape), inputs, "train")()
    assert len(grads) == 3 and not grads[1].any() and all(torch.isfinite(g).all() for g in grads)


def test_layer_scope_runs_with_strided_projections() -> None:
    shape = Shape(2, 2, 8, 70)
    layer = LSHAttention.build(LSHParams(chunk=16), shape, "layer").double()
    x = torch.randn(2, 70, 16, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()


# --- really sparse ---------------------------------------------------------------------------


def largest_tensor(n: int, train: bool = False, **params) -> int:
    B, h, d = 1, 2, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, d, generator=g) for _ in range(3))
    module = make(n, B, h, d, **params)
    with OpRecorder() as mode:
        if train:
            q.requires_grad_(True)
            v.requires_grad_(True)
            module(q, k, v).sum().backward()
        else:
            with torch.no_grad():
                module(q, k, v)
    return mode.largest


def test_no_n_by_n_tensor_is_built() -> None:
    n, c, hashes, B, h = 4096, 32, 2, 1, 2
    assert auto_buckets(n, c) == (256, 16)  # factorised: a projection of (16 + 16)/2 columns
    largest = largest_tensor(n, chunk=c, hashes=hashes)
    # Without autograd a group holds one round's scores at most, B·h·n·2c here (the budget
    # allows more); the per-round hashing projection B·h·n·(f1 + f2)/2 is smaller.
    assert largest == B * h * n * 2 * c
    assert largest <= B * h * n * n / 16
    # At fixed buckets the largest tensor grows exactly linearly, forward and backward.
    for train in (False, True):
        small = largest_tensor(2048, train, chunk=c, hashes=hashes, buckets=64)
        assert largest_tensor(4096, train, chunk=c, hashes=hashes, buckets=64) == 2 * small


@pytest.mark.slow  # real workers at several lengths, 5-8 s: CI runs it (-m slow), tests/test_memory.py too
def test_memory_grows_linearly_through_the_executor() -> None:
    executor = LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))
    peaks, working = {}, {}
    for n in (4096, 8192):
        shape = Shape(1, 8, 64, n)
        params = LSHAttention.resolve_params(LSHAttention.default_params(), shape)
        case = Case("sparse.lsh", tuple(sorted(params.items())), "core", "cpu", "float32", "forward", 1, 8, 64, n)
        out = executor.run(case)
        assert out.status == "ok", out.reason
        peaks[n] = out.result.peak_memory_bytes
        p = LSHAttention.make_params(params)
        assert (
            LSHAttention.working_bytes(p, shape, 4) / 2
            < peaks[n]
            < LSHAttention.peak_bytes_estimate(p, shape, 4, False)
        )
        working[n] = LSHAttention.working_bytes(p, shape, 4)
    # The output grows with n, one group's scratch does not: the peak grows by about the
    # output's growth (8 MiB here), never faster than n.
    grown = working[8192] - working[4096]
    assert 0.5 * grown <= peaks[8192] - peaks[4096] <= 2 * grown, peaks
    assert peaks[8192] / peaks[4096] <= 2.3, peaks


# --- without autograd: chunks in groups of a fixed score budget ------------------------------


def group_chunks(monkeypatch: pytest.MonkeyPatch, chunks: int, chunk: int) -> None:
    """Groups of `chunks` chunks (c queries against 2c keys each)."""
    monkeypatch.setattr(lsh, "GROUP_SCORES", chunks * chunk * 2 * chunk)


# 1 and 3 chunks: runs inside one sorted sequence; 12: several whole sequences per group (a
# sequence is 2 to 6 chunks of 32 at these lengths), never two rounds of one head.
@pytest.mark.parametrize("chunks", [1, 3, 12])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hashes", [1, 3])
def test_grouped_forward_matches_reference(
    monkeypatch: pytest.MonkeyPatch, chunks: int, causal: bool, hashes: int
) -> None:
    group_chunks(monkeypatch, chunks, 32)
    for n in (33, 64, 100, 161):
        check(n, chunk=32, hashes=hashes, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hashes", [1, 3])
def test_groups_change_nothing(monkeypatch: pytest.MonkeyPatch, causal: bool, hashes: int) -> None:
    n = 1001  # not a multiple of the chunk
    module = make(n, chunk=16, hashes=hashes, causal=causal)
    q, k, v = (t.float() for t in qkv(2, 3, n, seed=5))
    outs = []
    for chunks in (10**9, 40, 3, 1):  # one group per round, then smaller and smaller ones
        group_chunks(monkeypatch, chunks, 16)
        outs.append(module(q, k, v))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)
    # Autograd's path (one group, the rounds combined by one softmax) computes the same.
    q.requires_grad_(True)
    torch.testing.assert_close(module(q, k, v).detach(), outs[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_forward_holds_one_group_at_a_time(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    # Without autograd nothing made per group grows with n: what is larger than one group's
    # scratch (its scores, gathered keys and values) is made once per call (hashing, sorting,
    # the result), and nothing is larger than the result.
    B, h, d, c, chunks = 1, 2, 8, 8, 8
    group_chunks(monkeypatch, chunks, c)
    bound = chunks * 2 * c * max(c, d)
    large, groups = {}, {}
    for n in (1024, 4096):
        q, k, v = (t.float() for t in qkv(B, h, n, d))
        with torch.no_grad(), OpRecorder(keep_calls=True) as rec:
            out = make(n, B, h, d, chunk=c, hashes=2, buckets=16, causal=causal)(q, k, v)
        made = new_tensors(rec)
        assert max(m for _, m in made) <= out.numel() + d  # the result and its padding row
        products = [m for f, m in made if f is torch.ops.aten.bmm.default]
        hashing = B * h * n * 16 // 2  # one per round, (B, h, n, n_b/2)
        assert products.count(hashing) == 2
        scores = [m for m in products if m != hashing]
        assert max(scores) == chunks * c * 2 * c
        large[n] = len([m for _, m in made if m > bound])
        groups[n] = len(scores) // 2  # scores, then P·V
        del rec, made
    assert large[1024] == large[4096]  # made once per call, not per group
    assert groups[4096] == 4 * groups[1024] == 4 * 2 * B * h * 1024 // c // chunks


def test_hashing_projection_is_n_times_the_factor_sum() -> None:
    # Above the threshold the per-round projection is (B, h, n, (f1 + f2)/2), not n·n_b/2.
    B, h, d, n = 1, 2, 8, 10_000
    buckets, factor = auto_buckets(n, 64)
    assert (buckets, factor) == (256, 32)  # n_b = 312 → 32 · 8
    x = torch.randn(B, h, n, d, generator=torch.Generator().manual_seed(0))
    for factors, columns in (((32, 8), 20), ((256,), 128)):
        with OpRecorder() as mode:
            lsh_buckets(x, factors, 2, 0)
        assert mode.largest == B * h * n * columns


# --- costs and parameters --------------------------------------------------------------------


def test_flops_follow_the_reference_formula_and_executed_is_at_least_useful() -> None:
    shape = Shape(batch=2, heads=8, head_dim=64, seq_len=4096)
    p = LSHParams(hashes=2, chunk=64, buckets=128)
    D = 512
    assert LSHAttention.flops(p, shape) == 2 * (8 * 2 * 4096 * 64 * D + 4096 * D * 128 * 2)
    assert LSHAttention.executed_flops(p, shape) == LSHAttention.flops(p, shape)  # no padding at 4096
    for n in (1, 30, 64, 65, 1000, 1031, 4096):
        for params in (LSHParams(), LSHParams(hashes=4, chunk=32, causal=True), LSHParams(chunk=100, buckets=8)):
            s = Shape(1, 8, 64, n)
            assert LSHAttention.executed_flops(params, s) >= LSHAttention.flops(params, s) > 0
            assert LSHAttention.peak_bytes_estimate(params, s, 4, True) > LSHAttention.working_bytes(params, s, 4)
    # Padding is executed work: 1000 pads to 1024.
    s = Shape(1, 8, 64, 1000)
    assert auto_buckets(1000, 64) == (30, 0)
    hashing = 1000 * D * 30 * 2
    assert LSHAttention.executed_flops(LSHParams(), s) == 4 * 2 * 1024 * 128 * D + hashing
    assert LSHAttention.flops(LSHParams(), s) == 4 * 2 * 1000 * 128 * D + hashing


def test_expand_records_the_resolved_bucket_count_per_length() -> None:
    assert get_workload("sparse.lsh") is LSHAttention
    assert LSHAttention.subquadratic and LSHAttention.family == "sparse"
    cases = expand(Sweep(variants=("sparse.lsh",), backends=("cpu",), seq_lens=(100, 1024, 4096)))
    got = {c.seq_len: c.params_dict["buckets"] for c in cases}
    assert got == {100: 2, 1024: 32, 4096: 128}
    assert all(c.params_dict["hashes"] == 2 and c.params_dict["chunk"] == 64 for c in cases)
    assert all(c.params_dict["bucket_factor"] == 0 for c in cases)
    fixed = Sweep(
        variants=("sparse.lsh",),
        backends=("cpu",),
        seq_lens=(100, 4096),
        params=(("sparse.lsh", (("buckets", (8,)),)),),
    )
    assert {c.params_dict["buckets"] for c in expand(fixed)} == {8}


def test_factors_are_recorded_with_each_case_and_every_case_is_revision_2() -> None:
    sweep = Sweep(variants=("sparse.lsh",), backends=("cpu",), seq_lens=(4096, 8192, 10_000, 32768))
    cases = {c.seq_len: c for c in expand(sweep)}
    got = {n: (c.params_dict["buckets"], c.params_dict["bucket_factor"]) for n, c in cases.items()}
    assert got == {4096: (128, 0), 8192: (256, 16), 10_000: (256, 32), 32768: (1024, 32)}
    for n, (total, f1) in got.items():
        module = LSHAttention(LSHAttention.make_params(cases[n].params_dict), Shape(1, 8, 64, n))
        factors = module.factors(n)
        assert math.prod(factors) == total and factors == ((total,) if f1 == 0 else (f1, total // f1))
    # Both are derived from the length: one scaling curve, and every LSH case is redefined.
    assert set(LSHAttention.derived_params) == {"buckets", "bucket_factor"}
    assert len({c.group_key(LSHAttention.derived_params) for c in cases.values()}) == 1
    assert {c.revision for c in cases.values()} == {2}
    assert LSHAttention.definition_revision(LSHAttention.default_params(), "layer") == 2


def test_counted_flops_equal_the_formula_above_the_threshold() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    shape = Shape(1, 2, 8, 8256)  # 129 chunks of 64: auto buckets 256 = 32 · 8
    p = LSHAttention.make_params(LSHAttention.resolve_params(LSHAttention.default_params(), shape))
    assert (p.buckets, p.bucket_factor) == (256, 32)
    q, k, v = (torch.randn(1, 2, 8256, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        LSHAttention(p, shape)(q, k, v)
    assert counter.get_total_flops() == LSHAttention.executed_flops(p, shape)
    with FlopCounterMode(display=False) as counter:
        lsh_buckets(q, bucket_factors(p.buckets, p.bucket_factor), p.hashes, p.seed)
    hashing = 8256 * 16 * (32 + 8) * 2  # n·D·(f1 + f2)·n_r
    assert counter.get_total_flops() == hashing == LSHAttention._hash_flops(p, shape)
    # One rotation of the same 256 buckets would cost 256/40 = 6.4 times as much.
    one = LSHParams(buckets=256)
    assert LSHAttention._hash_flops(one, shape) == 8256 * 16 * 256 * 2


@pytest.mark.parametrize(
    "bad",
    [{"hashes": 0}, {"chunk": 0}, {"buckets": 3}, {"buckets": -2}, {"seed": -1}, {"causal": "yes"}, {"hashes": 1.5},
     {"chunk": True}, {"bucket_factor": 4}, {"buckets": 24, "bucket_factor": 3}, {"buckets": 24, "bucket_factor": 8},
     {"buckets": 24, "bucket_factor": 5}, {"buckets": 24, "bucket_factor": -4}, {"buckets": 24, "bucket_factor": 24}],
)  # fmt: skip
def test_invalid_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        LSHParams(**bad)


def test_float32_output_close_to_reference() -> None:
    q, k, v = qkv(1, 2, 300, 64)
    module = make(300, 1, 2, 64)
    got = module(q.float(), k.float(), v.float())
    assert math.isfinite(float(got.abs().max()))
    torch.testing.assert_close(got.double(), module.reference(q, k, v), rtol=0, atol=1e-4)
