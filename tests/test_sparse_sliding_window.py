"""sparse.sliding_window: the mask against its definition, the forward and its gradients against
the dense float64 reference, and proof that nothing n×n is ever built."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.core.cases import Case
from attnbench.core.registry import WORKLOADS, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.workloads.base import AttentionVariant, Shape
from attnbench.workloads.layer import PreNormLayer
from attnbench.workloads.reference import dense_reference
from attnbench.workloads.sparse import sliding_window
from attnbench.workloads.sparse.sliding_window import (
    LongformerLayer,
    SlidingWindowAttention,
    SlidingWindowParams,
    allowed_pairs,
)
from tests.op_recorder import OpRecorder, new_tensors

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
    # With autograd, one group: a constant number of tensor ops per call, forward and backward,
    # no loop over tokens or blocks. Only padding branches depend on n, and only on
    # n mod (dilation × block) = 16 here.
    params = {"window": 32, "global_tokens": 3, "dilation": 2}
    counts = [record(make(n, B=1, h=2, d=8, **params), n, 2, 8, train=True).ops for n in (1001, 2601, 4201)]
    assert counts[0] == counts[1] == counts[2]


# --- look-around of several blocks either side (the default window's b = 64) --------------------------


@pytest.mark.parametrize("block", [2, 3, 5])  # half = 8: a = 4, 2, 1 blocks either side (b = 2, 4, 8)
@pytest.mark.parametrize(
    "params",
    [
        {"window": 16},
        {"window": 16, "causal": True},
        {"window": 16, "global_tokens": 3, "dilation": 3},
        {"window": 16, "global_tokens": 10, "dilation": 2, "causal": True},
    ],
    ids=str,
)
def test_wider_look_around_matches_reference(monkeypatch: pytest.MonkeyPatch, block: int, params: dict) -> None:
    monkeypatch.setattr(sliding_window, "BLOCK", block)
    lay = sliding_window._layout(SlidingWindowParams(**params), 100)
    assert lay.a == 8 // block and lay.a * lay.b >= 8  # the window covers the band
    for n in (7, 9, 64, 100, 129):  # shorter than the band, multiples of the block and not
        check_against_reference(n, **params)
    for blocks in (1, 3):  # groups shorter than the look-around, inside one subsequence
        monkeypatch.setattr(sliding_window, "GROUP_SCORES", blocks * lay.b * (lay.span + lay.g))
        check_against_reference(129, **params)


def test_default_window_blocks_of_64() -> None:
    lay = sliding_window._layout(SlidingWindowParams(), 8192)
    assert (lay.a, lay.b, lay.span) == (4, 64, 576)
    short = sliding_window._layout(SlidingWindowParams(), 200)  # one block: the whole sequence
    assert (lay.a, short.b, short.nb) == (4, 200, 1) and short.a == 1


# --- without autograd: query blocks in groups of a fixed score budget ----------------------------------


def group_blocks(monkeypatch: pytest.MonkeyPatch, blocks: int, window: int, global_tokens: int = 0) -> None:
    """Groups of `blocks` query blocks (window/2 queries against 1.5·window + g keys each)."""
    b = window // 2
    monkeypatch.setattr(sliding_window, "GROUP_SCORES", blocks * b * (3 * b + global_tokens))


GROUPED = [
    {"window": 16},
    {"window": 16, "causal": True},
    {"window": 16, "global_tokens": 3, "dilation": 3},
    {"window": 12, "global_tokens": 10, "dilation": 2, "causal": True},
]


# 1 and 3 blocks: runs inside one subsequence; 40: several whole subsequences per group.
@pytest.mark.parametrize("blocks", [1, 3, 40])
@pytest.mark.parametrize("params", GROUPED, ids=str)
def test_grouped_forward_matches_reference(monkeypatch: pytest.MonkeyPatch, blocks: int, params: dict) -> None:
    group_blocks(monkeypatch, blocks, params["window"], params.get("global_tokens", 0))
    for n in (9, 64, 100, 129):  # one block, multiples of the block and not
        check_against_reference(n, **params)


@pytest.mark.parametrize("params", [*GROUPED, {"window": 64, "global_tokens": 4}], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_groups_change_nothing(monkeypatch: pytest.MonkeyPatch, params: dict, dtype: torch.dtype) -> None:
    n = 1001
    module = make(n, **params)
    q, k, v = (t.to(dtype) for t in qkv(n, seed=5))
    outs = []
    for blocks in (10**9, 40, 3, 1):  # one group, then smaller and smaller ones
        group_blocks(monkeypatch, blocks, params["window"], params.get("global_tokens", 0))
        outs.append(module(q, k, v))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)
    # Autograd's path (one group, out of place) computes the same.
    q.requires_grad_(True)
    torch.testing.assert_close(module(q, k, v).detach(), outs[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("params", [{"window": 16, "global_tokens": 3}, {"window": 16, "dilation": 2, "causal": True}])
def test_forward_holds_one_group_at_a_time(monkeypatch: pytest.MonkeyPatch, params: dict) -> None:
    # Without autograd nothing made per group grows with n: what is larger than one group's
    # scratch is made once per call (the result, the masks' tables, the global rows), and
    # nothing is larger than the result.
    B, h, d, b, blocks = 1, 2, 8, 8, 4
    g = params.get("global_tokens", 0)
    group_blocks(monkeypatch, blocks, params["window"], g)
    bound = blocks * b * (3 * b + g)  # one group's scores; its gathered rows are fewer
    large, groups = {}, {}
    for n in (1024, 4096):
        q, k, v = qkv(n, B, h, d, dtype=torch.float32)
        with torch.no_grad(), OpRecorder(keep_calls=True) as rec:
            out = make(n, B, h, d, **params)(q, k, v)
        made = new_tensors(rec)
        assert max(m for _, m in made) <= out.numel()
        band = [m for f, m in made if f is torch.ops.aten.baddbmm.default]  # one per group
        assert max(band) <= bound
        large[n] = sorted(m for _, m in made if m > bound)
        groups[n] = len(band)
        del rec, made
    assert len(large[1024]) == len(large[4096])  # made once per call, not per group
    assert groups[4096] >= 4 * groups[1024] - 4 > 4  # while the groups grew with n


# --- memory, through the real executor ------------------------------------------------------------------


@pytest.mark.slow  # real workers at several lengths, 5-8 s: CI runs it (-m slow), tests/test_memory.py too
def test_peak_memory_grows_linearly() -> None:
    executor = LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))
    params = tuple(sorted({"window": 256, "global_tokens": 0, "dilation": 1, "causal": False}.items()))
    peaks, working = {}, {}
    for n in (4096, 8192):
        case = Case("sparse.sliding_window", params, "core", "cpu", "float32", "forward", 1, 8, 64, n)
        out = executor.run(case)
        assert out.status == "ok", out.reason
        peaks[n] = out.result.peak_memory_bytes
        shape, p = Shape(1, 8, 64, n), SlidingWindowParams(window=256)
        assert peaks[n] <= SlidingWindowAttention.peak_bytes_estimate(p, shape, 4, train=False)
        working[n] = SlidingWindowAttention.working_bytes(p, shape, 4)
    # The output grows with n, one group's scores do not: the peak grows by about the output's
    # growth (8 MiB here), never faster than n.
    grown = working[8192] - working[4096]
    assert 0.5 * grown <= peaks[8192] - peaks[4096] <= 2 * grown, peaks
    assert peaks[8192] / peaks[4096] <= 2.3, peaks


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
    # Working memory: the output, one group's scores (at these sizes the only group: every
    # padded folded row against its 3b + g keys) and the global rows' (g, n) scores.
    m = -(-n // p.dilation)
    b = min(p.window // 2, m)
    rows, g = p.dilation * -(-m // b) * b, min(p.global_tokens, n)
    assert SlidingWindowAttention.working_bytes(p, shape, 4) == 2 * 3 * (n * 8 + rows * (3 * b + g) + g * n) * 4


def test_working_memory_is_the_output_and_one_group() -> None:
    # At the default window a group is 56 blocks of 64 queries against 9·64 = 576 keys on a CPU,
    # for any length: only the output grows with n.
    p = SlidingWindowParams()
    group = 56 * 64 * 576
    for n in (32768, 65536):
        output = 8 * n * 64
        assert SlidingWindowAttention.working_bytes(p, Shape(1, 8, 64, n), 4) == (output + group) * 4
    # 32K: far below the (n, 1.5·W) scores of every head, which the forward held before.
    estimate = SlidingWindowAttention.peak_bytes_estimate(p, Shape(1, 8, 64, 32768), 4, train=False)
    assert estimate < 8 * 32768 * 768 * 4


def test_flops_against_the_published_formula_and_look_around_overhead() -> None:
    shape = Shape(1, 8, 64, 8192)
    D, n, W, g = 512, 8192, 512, 2
    p = SlidingWindowParams(window=W, global_tokens=g)
    approx = 4 * n * D * (W + 1) + 8 * g * n * D  # docs/cost-model.md, edges ignored
    assert 0.97 < SlidingWindowAttention.flops(p, shape) / approx <= 1
    plain = SlidingWindowParams(window=W)
    ratio = SlidingWindowAttention.executed_flops(plain, shape) / SlidingWindowAttention.flops(plain, shape)
    assert 1.13 < ratio < 1.15  # 9 blocks of W/8 keys (b = 64) for W + 1 useful ones, edges included
    fwd = SlidingWindowAttention.peak_bytes_estimate(plain, shape, 4, train=False)
    assert SlidingWindowAttention.working_bytes(plain, shape, 4) < fwd
    assert fwd < SlidingWindowAttention.peak_bytes_estimate(plain, shape, 4, train=True)


# --- case identity ----------------------------------------------------------------------------------------


def test_definition_revision_marks_the_changed_cases() -> None:
    rev = SlidingWindowAttention.definition_revision
    base = {"window": 512, "global_tokens": 0, "dilation": 1, "causal": False}
    for scope in ("core", "layer"):
        assert rev(base, scope) == 1
        assert rev({**base, "dilation": 2}, scope) == 2  # dilation follows the paper now
        assert rev({**base, "dilation": 3, "global_tokens": 4}, scope) == 2
    # Global projections exist only in the layer scope; the core computes what it did.
    assert rev({**base, "global_tokens": 4}, "core") == 1
    assert rev({**base, "global_tokens": 4}, "layer") == 2
    assert rev({**base, "global_tokens": 4, "causal": True}, "layer") == 2
    assert SlidingWindowAttention.neutral_params == {}


# --- the layer scope: Longformer's own global projections -------------------------------------------------


def layer_by_hand(layer: LongformerLayer, x: torch.Tensor, **params) -> torch.Tensor:
    """The pre-norm layer written out with Longformer's global attention (allenai's
    query_global, key_global, value_global): the global rows use Q_g of the global tokens
    against K_g and V_g of every token; the other rows attend their band and the global
    columns with the ordinary q, k, v. Dense, masked, one product at a time."""
    base = layer.layer
    B, n, D = x.shape
    h, d = layer.heads, layer.head_dim
    g = min(params.get("global_tokens", 0), n)

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, m, D) -> (B, h, m, d)
        return t.view(B, -1, h, d).transpose(1, 2)

    def attend(q, k, v, allowed):
        s = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))
        return torch.softmax(s, -1) @ v

    hid = F.layer_norm(x, (D,), base.norm1.weight, base.norm1.bias, base.norm1.eps)
    w, b = base.qkv.weight.chunk(3), base.qkv.bias.chunk(3)
    q, k, v = (heads(F.linear(hid, w[i], b[i])) for i in range(3))
    qg = heads(F.linear(hid[:, :g], layer.query_global.weight, layer.query_global.bias))
    wg, bg = layer.kv_global.weight.chunk(2), layer.kv_global.bias.chunk(2)
    kg, vg = (heads(F.linear(hid, wg[i], bg[i])) for i in range(2))
    allowed = brute_force_mask(
        n, params["window"], params.get("global_tokens", 0), params.get("dilation", 1), params.get("causal", False)
    )
    rows = attend(q, k, v, allowed)  # band and global columns: ordinary q, k, v
    glob = attend(qg, kg, vg, allowed[:g])  # global rows: their own projections, every (earlier) key
    a = torch.cat([glob, rows[:, :, g:]], 2).transpose(1, 2).reshape(B, n, D)
    x = x + F.linear(a, base.proj.weight, base.proj.bias)
    first, _, second = base.ffn
    hid = F.layer_norm(x, (D,), base.norm2.weight, base.norm2.bias, base.norm2.eps)
    return x + F.linear(F.gelu(F.linear(hid, first.weight, first.bias)), second.weight, second.bias)


def build_layer(n: int, B: int = 2, h: int = 3, d: int = 8, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return SlidingWindowAttention.build(SlidingWindowParams(**params), Shape(B, h, d, n), "layer").double()


LAYER_PARAMS = [
    {"window": 16, "global_tokens": 3},
    {"window": 16, "global_tokens": 3, "causal": True},
    {"window": 12, "global_tokens": 5, "dilation": 2},
    {"window": 8, "global_tokens": 10, "dilation": 3, "causal": True},  # globals inside the band
    {"window": 8, "global_tokens": 40},  # more global tokens than some sequences
]


@pytest.mark.parametrize("n", [1, 9, 16, 37, 100])
@pytest.mark.parametrize("params", LAYER_PARAMS, ids=str)
def test_layer_scope_matches_the_layer_by_hand(n: int, params: dict) -> None:
    layer = build_layer(n, **params)
    assert isinstance(layer, LongformerLayer)
    x = torch.randn(2, n, 24, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer_by_hand(layer, x, **params), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("params", LAYER_PARAMS[:4], ids=str)
def test_layer_scope_gradients_match_the_layer_by_hand(params: dict) -> None:
    n = 37
    layer = build_layer(n, **params)
    weights = [layer.query_global.weight, layer.kv_global.weight, layer.layer.qkv.weight]
    proj = torch.randn(2, n, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for f in (layer, lambda x: layer_by_hand(layer, x, **params)):
        x = torch.randn(2, n, 24, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
        grads.append(torch.autograd.grad((f(x) * proj).sum(), [x, *weights]))
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # The global projections are used (allenai trains them; they are not dead weights).
    assert grads[0][1].abs().sum() > 0 and grads[0][2].abs().sum() > 0


def test_global_projections_feed_the_global_rows_only() -> None:
    """As allenai's kernel: Q_g, K_g, V_g make the g global rows; every other row attends the
    global tokens through the ordinary k and v, so it does not see the global projections."""
    n, g = 64, 4
    layer = build_layer(n, window=8, global_tokens=g)
    x = torch.randn(2, n, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = layer(x)
    with torch.no_grad():
        layer.query_global.weight.add_(0.5)
        layer.kv_global.weight.mul_(-1.5)
    after = layer(x)
    assert not torch.allclose(before[:, :g], after[:, :g])
    torch.testing.assert_close(before[:, g:], after[:, g:], rtol=0, atol=0)


def test_without_global_tokens_the_layer_is_the_plain_one() -> None:
    shape = Shape(2, 3, 8, 100)
    p = SlidingWindowParams(window=16)
    assert type(SlidingWindowAttention.build(p, shape, "layer")) is PreNormLayer
    assert SlidingWindowAttention.case_flops(p, shape, "layer", "forward") == (
        SlidingWindowAttention.flops(p, shape) + PreNormLayer.linear_flops(shape)
    )
    # With global tokens the core scope is unchanged: the core gets one q, k, v.
    pg = SlidingWindowParams(window=16, global_tokens=3)
    assert type(SlidingWindowAttention.build(pg, shape, "core")) is SlidingWindowAttention
    assert SlidingWindowAttention.case_flops(pg, shape, "core", "forward") == SlidingWindowAttention.flops(pg, shape)
    module = make(100, window=16, global_tokens=3)
    q, k, v = qkv(100)
    torch.testing.assert_close(module(q, k, v), module(q, k, v, global_qkv=(q[:, :, :3], k, v)), rtol=0, atol=0)


def test_pruning_transforms_refuse_the_longformer_layer() -> None:
    # prune_heads and distill rebuild a PreNormLayer; they must not drop the global projections.
    from attnbench.engine.transforms.heads import is_layer

    assert not is_layer(build_layer(50, window=8, global_tokens=2))
    assert is_layer(build_layer(50, window=8))


@pytest.mark.parametrize(
    ("n", "params"),
    list(itertools.product([9, 100, 257], [{"window": 16, "global_tokens": 3}, *LAYER_PARAMS[1:4]])),
    ids=str,
)
def test_layer_flops_count_the_global_projections(n: int, params: dict) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    p, shape = SlidingWindowParams(**params), Shape(2, 3, 8, n)
    D, g = 24, min(params["global_tokens"], n)
    extra = 2 * (4 * n * D * D + 2 * g * D * D)  # K_g and V_g over n tokens, Q_g over g; batch 2
    assert SlidingWindowAttention.global_projection_flops(p, shape) == extra
    linear = PreNormLayer.linear_flops(shape)
    for executed in (False, True):
        attention = (SlidingWindowAttention.executed_flops if executed else SlidingWindowAttention.flops)(p, shape)
        assert SlidingWindowAttention.case_flops(p, shape, "layer", "forward", executed) == attention + linear + extra
        assert SlidingWindowAttention.case_flops(p, shape, "layer", "train", executed) == (
            3.5 * attention + 3 * (linear + extra)
        )
    # torch counts every product the layer runs: exactly the executed count.
    layer = SlidingWindowAttention.build(p, shape, "layer")
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(2, n, D))
    assert counter.get_total_flops() == SlidingWindowAttention.case_flops(p, shape, "layer", "forward", executed=True)
    # The core alone, too.
    with FlopCounterMode(display=False) as counter:
        make(n, **params)(*qkv(n, dtype=torch.float32))
    assert counter.get_total_flops() == SlidingWindowAttention.executed_flops(p, shape)


def test_layer_memory_counts_the_global_projections() -> None:
    shape, itemsize = Shape(2, 8, 64, 4096), 4
    D, n = shape.model_dim, shape.seq_len
    plain, glob = SlidingWindowParams(window=256), SlidingWindowParams(window=256, global_tokens=4)
    cls = SlidingWindowAttention
    core = cls.working_bytes(glob, shape, itemsize) - cls.working_bytes(plain, shape, itemsize)
    # Two n×D buffers (K_g, V_g) and Q_g's g×D, per batch row.
    outputs = 2 * (2 * n + 4) * D * itemsize
    assert cls.case_min_bytes(glob, shape, "layer", itemsize) - cls.case_min_bytes(plain, shape, "layer", itemsize) == (
        core + outputs
    )
    assert cls.case_min_bytes(glob, shape, "core", itemsize) == cls.working_bytes(glob, shape, itemsize)
    for mode, factor in (("forward", 1), ("train", 3)):
        peak = cls.case_peak_estimate(glob, shape, "layer", itemsize, mode)
        base = AttentionVariant.case_peak_estimate.__func__(cls, glob, shape, "layer", itemsize, mode)
        assert peak - base == outputs * (2 if mode == "train" else 1) + 3 * D * D * itemsize * factor


def test_case_ids_change_only_where_the_definition_did() -> None:
    from attnbench.core.cases import Sweep
    from attnbench.engine.expand import expand

    def case(scope: str, **values) -> Case:
        params = (("sparse.sliding_window", tuple((k, (v,)) for k, v in values.items())),)
        sweep = Sweep(
            variants=("sparse.sliding_window",), backends=("cpu",), seq_lens=(4096,), scopes=(scope,), params=params
        )
        [c] = expand(sweep)
        return c

    def before(c: Case) -> str:  # the id the same parameters had before revisions existed
        return Case(c.variant, c.params, c.scope, "cpu", "float32", "forward", 1, 8, 64, 4096).case_id

    unchanged = [case("core"), case("layer"), case("core", global_tokens=4), case("layer", causal=True)]
    changed = [case("core", dilation=2), case("layer", dilation=2), case("layer", global_tokens=4)]
    assert all(c.revision == 1 and c.case_id == before(c) for c in unchanged)
    assert all(c.revision == 2 and c.case_id != before(c) for c in changed)
