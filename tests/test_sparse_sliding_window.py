"""sparse.sliding_window: the mask against its definition, the forward and its gradients against
the dense float64 reference, and proof that nothing n×n is ever built."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.core.cases import Case
from attnbench.core.registry import WORKLOADS, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.workloads.base import Shape
from attnbench.workloads.reference import dense_reference
from attnbench.workloads.sparse.sliding_window import SlidingWindowAttention, SlidingWindowParams, allowed_pairs
from tests.op_recorder import OpRecorder

load_plugins()


def make(n: int, B: int = 2, h: int = 3, d: int = 8, **params) -> SlidingWindowAttention:
    return SlidingWindowAttention(SlidingWindowParams(**params), Shape(B, h, d, n))


def qkv(n: int, B: int = 2, h: int = 3, d: int = 8, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))


def brute_force_mask(n: int, window: int, global_tokens: int, dilation: int, causal: bool) -> torch.Tensor:
    """The definition, one pair at a time: keys i + k·dilation for |k| ≤ window/2 (Longformer's
    dilation keeps the key count and widens the reach), plus the global rows and columns."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            band = abs(i - j) <= (window // 2) * dilation and (i - j) % dilation == 0
            ok = band or i < global_tokens or j < global_tokens
            mask[i, j] = ok and (j <= i or not causal)
    return mask


def check_against_reference(n: int, B: int = 2, h: int = 3, d: int = 8, seed: int = 0, **params) -> None:
    module = make(n, B, h, d, **params)
    q, k, v = qkv(n, B, h, d, seed)
    got = module(q, k, v)
    assert got.shape == q.shape and got.dtype == torch.float64
    expected = dense_reference(q, k, v, module.reference_mask(n))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# --- parameters and registration -----------------------------------------------------------------


def test_registered_with_defaults() -> None:
    cls = WORKLOADS["sparse.sliding_window"]
    assert cls is SlidingWindowAttention
    assert cls.family == "sparse" and cls.subquadratic
    assert cls.default_params() == {"window": 512, "global_tokens": 0, "dilation": 1, "causal": False}


@pytest.mark.parametrize(
    "bad",
    [{"window": 3}, {"window": 0}, {"window": -2}, {"window": 1}, {"dilation": 0}, {"global_tokens": -1}],
    ids=str,
)
def test_invalid_params_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SlidingWindowParams(**bad)


# --- the mask is the definition ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "window", "global_tokens", "dilation", "causal"),
    list(itertools.product([1, 7, 20], [2, 6], [0, 3], [1, 2, 3], [False, True])),
)
def test_mask_is_the_definition(n: int, window: int, global_tokens: int, dilation: int, causal: bool) -> None:
    p = dict(window=window, global_tokens=global_tokens, dilation=dilation, causal=causal)
    mask = make(n, **p).reference_mask(n)
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    assert torch.equal(mask, brute_force_mask(n, **p))
    assert mask.diagonal().all()  # every row has at least itself


def test_band_has_window_plus_one_keys_away_from_the_edges() -> None:
    mask = make(64, window=8).reference_mask(64)
    assert mask.sum(1)[4:-4].eq(9).all()
    assert mask.sum(1)[0] == 5  # edge rows have fewer
    # Dilation keeps W + 1 keys and multiplies the reach: offsets 0, ±2, ±4, ±6, ±8.
    assert make(64, window=8, dilation=2).reference_mask(64).sum(1)[8:-8].eq(9).all()


def test_dilation_follows_the_longformer_paper() -> None:
    """allenai's kernel scores key i + d·(j − w): with W = 16 and d = 2, 17 keys within ±16
    (in 0.1.0 dilation thinned the band instead: 9 keys within ±8)."""
    n, i = 100, 50
    row = make(n, window=16, dilation=2).reference_mask(n)[i]
    keys = row.nonzero().flatten().tolist()
    assert keys == [i + 2 * k for k in range(-8, 9)]
    assert len(keys) == 17 and max(keys) - i == 16 and i - min(keys) == 16
    p = SlidingWindowParams(window=16, dilation=2)
    assert allowed_pairs(p, n) == int(make(n, window=16, dilation=2).reference_mask(n).sum())


# --- forward against the dense float64 reference ----------------------------------------------------

# window 16: blocks of 8. Lengths: 1, below a block, a block, just above, a window, just
# above, a multiple, and two that are not.
LENGTHS = [1, 5, 8, 9, 16, 17, 64, 100, 129]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("global_tokens", [0, 3])
@pytest.mark.parametrize("dilation", [1, 3])
def test_matches_reference(n: int, causal: bool, global_tokens: int, dilation: int) -> None:
    check_against_reference(n, window=16, global_tokens=global_tokens, dilation=dilation, causal=causal)


@pytest.mark.parametrize(
    "params",
    [
        {"window": 2},  # blocks of one
        {"window": 4, "dilation": 5},  # reach ±10 in steps of 5: itself and four keys
        {"window": 8, "global_tokens": 40},  # more global tokens than the sequence
        {"window": 8, "global_tokens": 40, "causal": True},
        {"window": 200, "global_tokens": 2},  # whole sequence in one block
        {"window": 12, "global_tokens": 10, "dilation": 2, "causal": True},  # globals inside the band
    ],
    ids=str,
)
def test_edge_configurations(params: dict) -> None:
    for n in (1, 13, 37):
        check_against_reference(n, **params)


def test_default_window_at_the_verification_length() -> None:
    # What the worker checks: the default W = 512 at n = 1031 (not a multiple of 256), float32.
    module = make(1031, B=1, h=2, d=16)
    q, k, v = qkv(1031, B=1, h=2, d=16)
    got = module(*(t.float() for t in (q, k, v)))
    assert (got.double() - module.reference(q, k, v)).abs().max() < 1e-4


def test_non_contiguous_inputs() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 50, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    module = make(50, window=10, global_tokens=2, dilation=2)
    torch.testing.assert_close(module(q, k, v), module.reference(q, k, v), rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 160),
    half=st.integers(1, 40),
    global_tokens=st.integers(0, 12),
    dilation=st.integers(1, 5),
    causal=st.booleans(),
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(
    n: int, half: int, global_tokens: int, dilation: int, causal: bool, batch: int, heads: int, seed: int
) -> None:
    p = dict(window=2 * half, global_tokens=global_tokens, dilation=dilation, causal=causal)
    check_against_reference(n, batch, heads, 4, seed, **p)
    assert allowed_pairs(SlidingWindowParams(**p), n) == int(make(n, **p).reference_mask(n).sum())


@pytest.mark.parametrize("global_tokens", [0, 4])
def test_bfloat16_close_to_float64(global_tokens: int) -> None:
    n = 300
    module = make(n, B=1, h=2, d=32, window=64, global_tokens=global_tokens, causal=True)
    q, k, v = qkv(n, B=1, h=2, d=32)
    got = module(*(t.bfloat16() for t in (q, k, v)))
    assert got.dtype == torch.bfloat16
    assert (got.double() - module.reference(q, k, v)).abs().max() < 5e-2


# --- training: gradients through the dense masked reference -----------------------------------------


@pytest.mark.parametrize(
    ("n", "params"),
    [
        (100, {"window": 16}),
        (100, {"window": 16, "causal": True}),
        (77, {"window": 12, "global_tokens": 3, "dilation": 2}),
        (130, {"window": 8, "global_tokens": 5, "causal": True}),
        (9, {"window": 16, "global_tokens": 2, "dilation": 3, "causal": True}),
    ],
    ids=str,
)
def test_gradients_match_reference(n: int, params: dict) -> None:
    module = make(n, **params)
    proj = torch.randn(2, 3, n, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    results = []
    for fn in (module, lambda q, k, v: dense_reference(q, k, v, module.reference_mask(n))):
        q, k, v = (t.requires_grad_(True) for t in qkv(n))
        out = fn(q, k, v)
        results.append((out.detach(), *torch.autograd.grad((out * proj).sum(), (q, k, v))))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# --- never n×n: sizes of every tensor any op produces -------------------------------------------------


def record(module, n: int, h: int, d: int, train: bool) -> OpRecorder:
    q, k, v = (t.requires_grad_(train) for t in qkv(n, B=1, h=h, d=d, dtype=torch.float32))
    with OpRecorder() as rec:
        out = module(q, k, v)
        if train:
            torch.autograd.grad(out.sum(), (q, k, v))
    return rec


def test_recorder_sees_a_dense_score_matrix() -> None:
    naive = WORKLOADS["full.naive"](WORKLOADS["full.naive"].Params(), Shape(1, 2, 16, 512))
    assert record(naive, 512, 2, 16, train=False).largest >= 2 * 512 * 512


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("params", [{"window": 64, "global_tokens": 4}, {"window": 64, "dilation": 2, "causal": True}])
def test_no_tensor_grows_faster_than_n_times_window(params: dict, train: bool) -> None:
    n, h, d = 4096, 2, 16
    rec = record(make(n, B=1, h=h, d=d, **params), n, h, d, train)
    bound = 2 * h * n * (params["window"] + params.get("global_tokens", 0))
    assert rec.largest < bound < h * n * n // 16


def test_number_of_ops_does_not_grow_with_n() -> None:
    # A constant number of tensor ops per call, forward and backward: no loop over tokens or
    # blocks. Only padding branches depend on n, and only on n mod (dilation × block) = 16 here.
    params = {"window": 32, "global_tokens": 3, "dilation": 2}
    counts = [record(make(n, B=1, h=2, d=8, **params), n, 2, 8, train=True).ops for n in (1001, 2601, 4201)]
    assert counts[0] == counts[1] == counts[2]


# --- memory, through the real executor ------------------------------------------------------------------


def test_peak_memory_grows_linearly() -> None:
    executor = LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))
    params = tuple(sorted({"window": 256, "global_tokens": 0, "dilation": 1, "causal": False}.items()))
    peaks = {}
    for n in (4096, 8192):
        case = Case("sparse.sliding_window", params, "core", "cpu", "float32", "forward", 1, 8, 64, n)
        out = executor.run(case)
        assert out.status == "ok", out.reason
        peaks[n] = out.result.peak_memory_bytes
        shape, p = Shape(1, 8, 64, n), SlidingWindowParams(window=256)
        assert peaks[n] <= SlidingWindowAttention.peak_bytes_estimate(p, shape, 4, train=False)
    assert 1.6 <= peaks[8192] / peaks[4096] <= 2.3, peaks


# --- costs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "params"),
    list(
        itertools.product(
            [1, 9, 100, 257],
            [
                {"window": 16},
                {"window": 16, "causal": True},
                {"window": 16, "global_tokens": 5, "dilation": 3},
                {"window": 6, "global_tokens": 300, "causal": True},
            ],
        )
    ),
    ids=str,
)
def test_flops_count_the_mask_and_executed_covers_them(n: int, params: dict) -> None:
    p, shape = SlidingWindowParams(**params), Shape(2, 3, 8, n)
    pairs = int(make(n, **params).reference_mask(n).sum())
    assert SlidingWindowAttention.flops(p, shape) == 4 * pairs * 24 * 2
    assert SlidingWindowAttention.executed_flops(p, shape) >= SlidingWindowAttention.flops(p, shape)
    assert SlidingWindowAttention.working_bytes(p, shape, 4) == 2 * 3 * (pairs + n * 8) * 4


def test_flops_against_the_published_formula_and_look_around_overhead() -> None:
    shape = Shape(1, 8, 64, 8192)
    D, n, W, g = 512, 8192, 512, 2
    p = SlidingWindowParams(window=W, global_tokens=g)
    approx = 4 * n * D * (W + 1) + 8 * g * n * D  # docs/cost-model.md, edges ignored
    assert 0.97 < SlidingWindowAttention.flops(p, shape) / approx <= 1
    plain = SlidingWindowParams(window=W)
    ratio = SlidingWindowAttention.executed_flops(plain, shape) / SlidingWindowAttention.flops(plain, shape)
    assert 1.49 < ratio < 1.55  # 3 blocks of W/2 keys for W + 1 useful ones
    fwd = SlidingWindowAttention.peak_bytes_estimate(plain, shape, 4, train=False)
    assert SlidingWindowAttention.working_bytes(plain, shape, 4) < fwd
    assert fwd < SlidingWindowAttention.peak_bytes_estimate(plain, shape, 4, train=True)
