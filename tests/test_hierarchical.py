"""hierarchical.transformer_xl and hierarchical.han: exact against float64 computations written
out directly here (no rel-shift, no padding), gradients, no n×n tensor, linear memory through
the real executor, and the workload metrics."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.registry import get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.workloads.base import Shape
from attnbench.workloads.hierarchical import (
    HANParams,
    HierarchicalAttentionNetwork,
    TransformerXLAttention,
    XLParams,
    rel_shift,
)
from tests.op_recorder import OpRecorder

load_plugins()


def qkv(B: int, h: int, n: int, d: int = 8, seed: int = 0, grad: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64).requires_grad_(grad) for _ in range(3))


def xl(n: int, B: int = 2, h: int = 3, d: int = 8, **params) -> TransformerXLAttention:
    return TransformerXLAttention(XLParams(**params), Shape(B, h, d, n)).double()


def rel_embedding(m: TransformerXLAttention, dist: torch.Tensor) -> torch.Tensor:
    """W_R R_dist with R the paper's [sin | cos] sinusoid, written out here: (..., h, d)."""
    D, h, d = m.shape.model_dim, m.shape.heads, m.shape.head_dim
    inv_freq = torch.tensor([1.0 / 10000 ** (2 * f / D) for f in range(D // 2)], dtype=torch.float64)
    ang = dist.double()[..., None] * inv_freq
    R = torch.cat([ang.sin(), ang.cos()], dim=-1)  # (..., D)
    return (R @ m.w_r.double()).unflatten(-1, (h, d))


def segment_by_hand(m, q, k, v, start: int, end: int, mem: int) -> torch.Tensor:
    """Queries start..end attending keys start−mem..end causally, every score computed directly:
    (q_i + u)·k_j + (q_i + v)·W_R R_{i−j}, over 1/√d. Recomputes from the given states."""
    d = q.shape[-1]
    qi = torch.arange(start, end)[:, None]
    kj = torch.arange(start - mem, end)[None, :]
    qs, ks, vs = q[:, :, start:end], k[:, :, start - mem : end], v[:, :, start - mem : end]
    content = (qs + m.u.double()[:, None]) @ ks.transpose(-1, -2)
    r = rel_embedding(m, (qi - kj).clamp(min=0))  # (ql, klen, h, d)
    position = torch.einsum("bhid,ijhd->bhij", qs + m.v.double()[:, None], r)
    scores = ((content + position) / math.sqrt(d)).masked_fill(kj > qi, float("-inf"))
    return torch.softmax(scores, -1) @ vs


# --- Transformer-XL: exactness ----------------------------------------------------------------


def test_rel_shift_aligns_distances() -> None:
    ql, mem = 5, 3
    klen = ql + mem
    raw = torch.arange(klen - 1, -1, -1).expand(ql, klen).double()  # column c holds distance klen−1−c
    shifted = rel_shift(raw)
    for i in range(ql):
        for j in range(i + mem + 1):
            assert shifted[i, j] == mem + i - j


@pytest.mark.parametrize("n", [1, 37, 64])
def test_one_segment_without_memory_is_dense_causal_with_direct_relative_scores(n: int) -> None:
    m = xl(n, segment=64, memory=0)
    q, k, v = qkv(2, 3, n)
    torch.testing.assert_close(m(q, k, v), segment_by_hand(m, q, k, v, 0, n, 0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(q, k, v), m.reference(q, k, v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("memory", [16, 8, 40])  # = L, shorter, spanning more than one segment
def test_memory_carried_equals_recomputing_with_previous_states(memory: int) -> None:
    L, n = 16, 16 * 4
    m = xl(n, segment=L, memory=memory)
    q, k, v = qkv(2, 3, n, seed=1)
    out = m(q, k, v)
    for s in range(0, n, L):
        expected = segment_by_hand(m, q, k, v, s, s + L, min(memory, s))
        torch.testing.assert_close(out[:, :, s : s + L], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [64, 100, 129, 7])  # multiples of L and not
@pytest.mark.parametrize(("L", "M"), [(16, 16), (16, 0), (32, 8), (8, 24)])
def test_several_segments_match_the_dense_reference_with_the_equivalent_mask(n: int, L: int, M: int) -> None:
    m = xl(n, segment=L, memory=M)
    q, k, v = qkv(2, 3, n, seed=2)
    torch.testing.assert_close(m(q, k, v), m.reference(q, k, v), rtol=1e-10, atol=1e-10)
    mask = m.reference_mask(n)
    i, j = 50 % n, 0
    assert bool(mask[i, j]) == (i - M - (i % L) <= j <= i)


def test_reference_mask_is_segment_past_plus_memory() -> None:
    m = xl(40, segment=16, memory=8)
    mask = m.reference_mask(40)
    for i in range(40):
        allowed = [j for j in range(40) if mask[i, j]]
        assert allowed == list(range(max(0, 16 * (i // 16) - 8), i + 1))


@pytest.mark.parametrize("detach", [True, False])
def test_training_gradients_match_the_reference(detach: bool) -> None:
    n = 70
    m = xl(n, B=1, h=2, segment=16, memory=16, detach_memory=detach).train()
    grads = []
    for fn in (m, m.reference):
        q, k, v = qkv(1, 2, n, seed=3, grad=True)
        out = fn(q, k, v)
        grads.append(torch.autograd.grad(out.pow(2).sum(), (q, k, v, m.u, m.v, m.w_r)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_detached_memory_stops_gradients_reaching_earlier_segments() -> None:
    n, L = 32, 16
    q, k, v = qkv(1, 2, n, seed=4, grad=True)
    for detach, zero in ((True, True), (False, False)):
        m = xl(n, B=1, h=2, segment=L, memory=L, detach_memory=detach).train()
        gk, gv = torch.autograd.grad(m(q, k, v)[:, :, L:].sum(), (k, v))
        assert bool((gk[:, :, :L] == 0).all()) == zero and bool((gv[:, :, :L] == 0).all()) == zero
    # In eval mode nothing is detached (and values never differ).
    m = xl(n, B=1, h=2, segment=L, memory=L).eval()
    (gk,) = torch.autograd.grad(m(q, k, v)[:, :, L:].sum(), (k,))
    assert (gk[:, :, :L] != 0).any()


def test_two_instances_share_the_learned_parameters() -> None:
    # The worker checks cls(params, shape).reference against another cls(params, shape).
    a, b = xl(50, segment=16, memory=16), xl(50, segment=16, memory=16)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# --- Transformer-XL: cost and memory ------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_no_n_by_n_tensor(train: bool) -> None:
    n, L, M, B, h, d = 4096, 64, 64, 1, 2, 8
    m = TransformerXLAttention(XLParams(segment=L, memory=M), Shape(B, h, d, n))
    q, k, v = (t.float().requires_grad_(train) for t in qkv(B, h, n, d))
    with OpRecorder() as rec:
        out = m(q, k, v)
        if train:
            torch.autograd.grad(out.sum(), (q, k, v))
    assert rec.largest <= max(B * h * L * (L + M + 1), B * h * n * d, (L + M) * h * d * 2)
    assert rec.largest < n * n / 64


def test_flops_count_allowed_pairs_and_the_shifted_rectangle() -> None:
    p = XLParams(segment=32, memory=16)
    shape = Shape(2, 4, 8, 100)  # segments of 32, 32, 32, 4 with memories 0, 16, 16, 16
    D = 32
    useful = (32 * 33 // 2) + 2 * (32 * 16 + 32 * 33 // 2) + (4 * 16 + 4 * 5 // 2)
    executed = 32 * 32 + 2 * 32 * 48 + 4 * 20
    proj = 2 * 48 * D * D
    assert TransformerXLAttention.flops(p, shape) == 6 * useful * D * 2 + proj
    assert TransformerXLAttention.executed_flops(p, shape) == 6 * executed * D * 2 + proj
    # Linear in n at fixed L, M (whole segments).
    a = TransformerXLAttention.flops(p, Shape(1, 4, 8, 3200)) - proj
    b = TransformerXLAttention.flops(p, Shape(1, 4, 8, 6400)) - proj
    assert b / a == pytest.approx(2, rel=0.01)
    wb = TransformerXLAttention.working_bytes(p, Shape(1, 4, 8, 3200), 4)
    assert wb == 4 * 32 * 48 * 4 + 4 * 3200 * 8 * 4


def test_memory_grows_linearly_through_the_executor() -> None:
    executor = LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))
    peaks = {}
    params = {"segment": 128, "memory": 128, "detach_memory": True, "seed": 0}
    p = XLParams(**params)
    for n in (4096, 8192):
        shape = Shape(1, 8, 64, n)
        case = Case(
            "hierarchical.transformer_xl",
            tuple(sorted(params.items())),
            "core",
            "cpu",
            "float32",
            "forward",
            1,
            8,
            64,
            n,
        )
        out = executor.run(case)
        assert out.status == "ok", out.reason
        peaks[n] = out.result.peak_memory_bytes
        assert peaks[n] < TransformerXLAttention.peak_bytes_estimate(p, shape, 4, False)
    assert 1.0 <= peaks[8192] / peaks[4096] <= 2.3, peaks


def test_case_metrics_in_both_scopes() -> None:
    cls = get_workload("hierarchical.transformer_xl")
    shape = Shape(1, 2, 8, 100)
    p = XLParams(segment=32, memory=16)
    for scope in ("core", "layer"):
        module = cls.build(p, shape, scope)
        inputs = cls.make_inputs(shape, scope, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
        module(*inputs)
        assert cls.case_metrics(module) == {"segments": 4, "segment_len": 32, "memory_len": 16}


# --- HAN ---------------------------------------------------------------------------------------


def han(n: int, T: int, encoder: str, B: int = 2, h: int = 2, d: int = 8) -> HierarchicalAttentionNetwork:
    torch.manual_seed(0)
    return HierarchicalAttentionNetwork(HANParams(sentence=T, encoder=encoder), Shape(B, h, d, n)).double()


def x_of(B: int, n: int, D: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def pool_by_hand(pool, h: torch.Tensor) -> torch.Tensor:
    alpha = torch.softmax(torch.tanh(h @ pool.proj.weight.T + pool.proj.bias) @ pool.context, dim=-1)
    return torch.einsum("nt,ntd->nd", alpha, h)


@pytest.mark.parametrize("encoder", ["attention", "gru"])
@pytest.mark.parametrize("n", [16, 11])  # one full sentence, one padded sentence
def test_han_with_one_sentence_is_its_sentence_level_computation(encoder: str, n: int) -> None:
    m = han(n, 16, encoder)
    x = x_of(2, n, 16)
    words = m.word_encoder(x)  # the unpadded sentence, no mask needed
    sentence = pool_by_hand(m.word_pool, words)  # (B, D)
    expected = pool_by_hand(m.sentence_pool, m.sentence_encoder(sentence[:, None]))
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
    # One sentence vector: pooling over it returns the encoded vector itself.
    torch.testing.assert_close(expected, m.sentence_encoder(sentence[:, None])[:, 0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_han_sentences_are_encoded_independently_and_the_last_is_masked(encoder: str) -> None:
    T, n = 16, 16 * 3 + 5
    m = han(n, T, encoder)
    x = x_of(2, n, 16, seed=1)
    sentences = [pool_by_hand(m.word_pool, m.word_encoder(x[:, s : s + T])) for s in range(0, n, T)]
    S = torch.stack(sentences, dim=1)  # (B, 4, D)
    expected = pool_by_hand(m.sentence_pool, m.sentence_encoder(S))
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
    assert HierarchicalAttentionNetwork.case_metrics(m) == {"sentences": 4, "sentence_len": T, "encoder": encoder}


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_han_forward_and_backward(encoder: str) -> None:
    cls = get_workload("hierarchical.han")
    shape = Shape(2, 2, 8, 300)
    module = cls.build(cls.make_params({"sentence": 64, "encoder": encoder}), shape, "layer")
    x = torch.randn(2, 300, 16, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *module.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0
    with pytest.raises(ValueError):
        cls.build(cls.make_params({}), shape, "core")


def test_han_costs() -> None:
    p = HANParams(sentence=64)
    shape = Shape(1, 4, 16, 64 * 10)
    assert HierarchicalAttentionNetwork.flops(p, shape) == 4 * 64 * (10 * 64 * 64 + 10 * 10)
    assert HierarchicalAttentionNetwork.flops(HANParams(encoder="gru"), shape) == 0
    for mode in ("forward", "train"):
        f = HierarchicalAttentionNetwork.case_flops(p, shape, "layer", mode)
        f2 = HierarchicalAttentionNetwork.case_flops(p, Shape(1, 4, 16, 64 * 20), "layer", mode)
        assert 1.9 < f2 / f < 2.1
    with pytest.raises(ValueError):
        HANParams(encoder="lstm")


@pytest.mark.parametrize("n", [40, 64, 100, 128])  # shorter than a sentence, one, one and a bit, two
def test_han_executed_flops_count_the_padded_sentences(n: int) -> None:
    """forward pads the text to whole sentences of T words, so it executes the same work at
    n = 40 as at n = 64 (0.1.0 recorded 4.8e6 executed FLOPs at n = 40 against 8.0e6 done).
    torch's FlopCounterMode counts the products (not the pools' element-wise weighting, 4·D
    per row), which are the rest of the executed count."""
    from torch.utils.flop_counter import FlopCounterMode

    T, shape, p = 64, Shape(1, 4, 16, n), HANParams(sentence=64)
    m = HierarchicalAttentionNetwork(p, shape)
    with FlopCounterMode(display=False) as counter:
        m(torch.randn(1, n, shape.model_dim))
    S = -(-n // T)
    rows = S * T + S  # word-level and sentence-level rows, padding included
    executed = HierarchicalAttentionNetwork.case_flops(p, shape, "layer", "forward", executed=True)
    attention = HierarchicalAttentionNetwork.executed_flops(p, shape)
    products = executed - 4 * shape.model_dim * rows
    # Whether it counts the fused attention depends on torch's build (it has no CPU formula in 2.13).
    assert counter.get_total_flops() in (products - attention, products)
    assert attention == 4 * shape.model_dim * (S * T * T + S * S)
    useful = HierarchicalAttentionNetwork.case_flops(p, shape, "layer", "forward")
    assert (useful == executed) == (n % T == 0)
    assert useful <= executed
