"""hierarchical.transformer_xl and hierarchical.han: exact against float64 computations written
out directly here (no rel-shift, no padding), gradients, no n×n tensor, linear memory through
the real executor, the workload metrics, and FLOP formulas against counted products. For
Transformer-XL also the reference's per-segment costs (per_segment) and one-segment-per-step
training (train_step=segment)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from attnbench.backends.base import eager_step
from attnbench.core.cases import Case, Sweep
from attnbench.core.registry import get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.local import LocalExecutor
from attnbench.engine.expand import expand
from attnbench.workloads.base import Shape
from attnbench.workloads.hierarchical import (
    HANParams,
    HierarchicalAttentionNetwork,
    TransformerXLAttention,
    TransformerXLLayer,
    XLParams,
    rel_shift,
)
from attnbench.workloads.layer import PreNormLayer
from tests.op_recorder import OpRecorder

load_plugins()


class ProductCounter(TorchDispatchMode):
    """FLOPs of the products torch's FlopCounterMode knows (mm, addmm, bmm, ...), without its
    module tracker, which fails under autograd.grad (the train call's backward). Fused
    attention is left out: whether torch counts it depends on its build."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        count = flop_registry.get(func._overloadpacket)
        if count is not None and "scaled_dot_product" not in str(func):
            self.total += count(*args, **(kwargs or {}), out_val=out)
        return out


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


@pytest.mark.parametrize("per_segment", [False, True])
@pytest.mark.parametrize("detach", [True, False])
def test_training_gradients_match_the_reference(detach: bool, per_segment: bool) -> None:
    n = 70
    m = xl(n, B=1, h=2, segment=16, memory=16, detach_memory=detach, per_segment=per_segment).train()
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


@pytest.mark.parametrize("per_segment", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_no_n_by_n_tensor(train: bool, per_segment: bool) -> None:
    n, L, M, B, h, d = 4096, 64, 64, 1, 2, 8
    m = TransformerXLAttention(XLParams(segment=L, memory=M, per_segment=per_segment), Shape(B, h, d, n))
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


@pytest.mark.slow  # real workers at several lengths, 5-8 s: CI runs it (-m slow), tests/test_memory.py too
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


# --- Transformer-XL: the reference's per-segment costs (per_segment) --------------------------


def test_new_parameters_default_to_the_earlier_definition() -> None:
    # Cases that do not set them keep their ids (workloads/base.py, neutral_params).
    assert TransformerXLAttention.neutral_params == {"per_segment": False, "train_step": "sequence"}
    defaults = TransformerXLAttention.default_params()
    assert all(defaults[k] == v for k, v in TransformerXLAttention.neutral_params.items())
    with pytest.raises(ValueError, match="detach_memory"):
        XLParams(train_step="segment", detach_memory=False)
    with pytest.raises(ValueError, match="train_step"):
        XLParams(train_step="layer")


def test_cases_at_the_new_parameters_neutral_values_keep_their_ids() -> None:
    """A default case's id is the one it had before per_segment and train_step existed (its
    parameters then: detach_memory, memory, segment, seed); setting either changes the id."""
    sweep = Sweep(("hierarchical.transformer_xl",), ("cpu",), (1024,), modes=("train",), scopes=("core", "layer"))
    for case in expand(sweep):
        before = {k: v for k, v in case.params if k not in ("per_segment", "train_step")}
        old = dataclasses.replace(case, params=tuple(sorted(before.items())), neutral_params=())
        assert case.case_id == old.case_id
    for name, value in (("per_segment", (True,)), ("train_step", ("segment",))):
        params = (("hierarchical.transformer_xl", ((name, value),)),)
        changed = expand(dataclasses.replace(sweep, params=params, scopes=("core",)))
        (case,) = changed
        default = next(c for c in expand(sweep) if c.scope == "core")
        assert case.case_id != default.case_id


@pytest.mark.parametrize("scope", ["core", "layer"])
@pytest.mark.parametrize("per_segment", [False, True])
def test_r_net_runs_once_per_call_or_once_per_segment(scope: str, per_segment: bool) -> None:
    """kimiyoung's r_net(r) runs in every segment (and layer); the default computes W_R R once."""
    n, L, M = 100, 16, 24  # 7 segments
    shape = Shape(1, 2, 8, n)
    module = TransformerXLAttention.build(XLParams(segment=L, memory=M, per_segment=per_segment), shape, scope)
    core = module if scope == "core" else module.attention
    lengths = []
    rel = core._rel
    core._rel = lambda distances, like: lengths.append(len(distances)) or rel(distances, like)
    module(*TransformerXLAttention.make_inputs(shape, scope, torch.float32, torch.device("cpu"), torch.Generator()))
    # Each segment's M+L (fewer in the first ones and the last) distances, or the longest once.
    assert lengths == ([16, 32, 40, 40, 40, 40, 28] if per_segment else [40])


@pytest.mark.parametrize("n", [100, 64, 7])
def test_per_segment_core_is_the_same_definition(n: int) -> None:
    m = xl(n, segment=16, memory=24, per_segment=True)
    q, k, v = qkv(2, 3, n, seed=2)
    torch.testing.assert_close(m(q, k, v), m.reference(q, k, v), rtol=1e-10, atol=1e-10)


def layer_by_hand(layer: PreNormLayer, x: torch.Tensor, L: int, M: int, detach: bool) -> torch.Tensor:
    """The reference's layer, pre-norm, segment by segment: the memory is the previous M input
    rows (SG(·) with detach), normed and projected with Q, K, V together with the segment's
    rows as qkv_net(cat([mems, w])) does; scores as segment_by_hand; then proj and the FFN."""
    B, n, D = x.shape
    h, d = layer.heads, layer.head_dim
    att = layer.attention
    out = []
    for s in range(0, n, L):
        e, m = min(s + L, n), min(M, s)
        mem = x[:, s - m : s].detach() if detach else x[:, s - m : s]
        c = torch.cat([mem, x[:, s:e]], dim=1)  # (B, m+ql, D)
        hc = F.layer_norm(c, (D,), layer.norm1.weight, layer.norm1.bias)
        q, k, v = (
            (hc @ w.T + b).view(B, -1, h, d).transpose(1, 2)  # (B, h, m+ql, d)
            for w, b in zip(layer.qkv.weight.chunk(3), layer.qkv.bias.chunk(3), strict=True)
        )
        a = segment_by_hand(att, q, k, v, m, m + e - s, m).transpose(1, 2).reshape(B, e - s, D)
        y = x[:, s:e] + a @ layer.proj.weight.T + layer.proj.bias
        out.append(y + layer.ffn(F.layer_norm(y, (D,), layer.norm2.weight, layer.norm2.bias)))
    return torch.cat(out, dim=1)


def xl_layer(n: int, **params) -> TransformerXLLayer:
    torch.manual_seed(0)
    shape = Shape(2, 3, 8, n)
    layer = TransformerXLAttention.build(XLParams(**params), shape, "layer").double()
    assert isinstance(layer, TransformerXLLayer) and isinstance(layer, PreNormLayer)
    return layer


@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("n", [70, 64])
def test_per_segment_layer_is_the_reference_layer_values_and_gradients(n: int, detach: bool) -> None:
    L, M = 16, 24
    layer = xl_layer(n, segment=L, memory=M, per_segment=True, detach_memory=detach).train()
    weights = list(layer.parameters())
    grads = []
    for fn in (layer, lambda x: layer_by_hand(layer, x, L, M, detach)):
        x = torch.randn(2, n, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
        out = fn(x)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [x, *weights]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_per_segment_layer_gives_the_memory_rows_gradient_to_w_k_and_w_v() -> None:
    """The one difference the default keeps: with keys cached after projection, W_k and W_v
    get no gradient from the memory rows; re-projected each segment they do, as in the paper.
    The values, and the input's gradient (memory detached either way), are the same."""
    n = 64
    x = torch.randn(2, n, 24, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    got = {}
    for per_segment in (False, True):
        layer = xl_layer(n, segment=16, memory=16, per_segment=per_segment).train()
        out = layer(x)
        got[per_segment] = (out, *torch.autograd.grad(out.pow(2).sum(), [x, layer.qkv.weight]))
    (out0, gx0, gw0), (out1, gx1, gw1) = got[False], got[True]
    torch.testing.assert_close(out0, out1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx0, gx1, rtol=1e-10, atol=1e-10)
    D = 24
    torch.testing.assert_close(gw0[:D], gw1[:D], rtol=1e-10, atol=1e-10)  # W_q: queries are the segment's own
    assert (gw0[D:] - gw1[D:]).abs().max() > 1e-3  # W_k, W_v


@pytest.mark.parametrize("n", [100, 64, 7])
@pytest.mark.parametrize("per_segment", [False, True])
@pytest.mark.parametrize("scope", ["core", "layer"])
def test_executed_flops_are_the_counted_products(scope: str, per_segment: bool, n: int) -> None:
    """torch's FlopCounterMode over one forward call equals the executed count exactly; useful
    FLOPs do not depend on per_segment (repeated work is executed, not useful)."""
    L, M = 16, 24
    shape, p = Shape(2, 3, 8, n), XLParams(segment=L, memory=M, per_segment=per_segment)
    module = TransformerXLAttention.build(p, shape, scope)
    inputs = TransformerXLAttention.make_inputs(shape, scope, torch.float32, torch.device("cpu"), torch.Generator())
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    executed = TransformerXLAttention.case_flops(p, shape, scope, "forward", executed=True)
    assert counter.get_total_flops() == executed
    plain = XLParams(segment=L, memory=M)
    assert TransformerXLAttention.case_flops(p, shape, scope, "forward") == TransformerXLAttention.case_flops(
        plain, shape, scope, "forward"
    )
    if n == 100 and per_segment:
        # Segments with 0, 16, 24, 24, 24, 24, 24 memory rows and 16, 32, 40, 40, 40, 40, 28 key
        # slots: r_net over 236 distances instead of 40, and 136 memory rows projected again.
        D, B = 24, 2
        extra = 2 * (236 - 40) * D * D + (6 * 136 * D * D * B if scope == "layer" else 0)
        assert executed - TransformerXLAttention.case_flops(plain, shape, scope, "forward", executed=True) == extra


# --- Transformer-XL: one segment per training step ---------------------------------------------


def train_step_result(scope: str, n: int, counter: ProductCounter | None = None, **params) -> tuple[torch.Tensor, ...]:
    """One timed train call as the backends make it (eager_step), float64."""
    torch.manual_seed(0)
    shape = Shape(2, 3, 8, n)
    module = TransformerXLAttention.build(XLParams(segment=16, memory=24, **params), shape, scope).double()
    inputs = TransformerXLAttention.make_inputs(
        shape, scope, torch.float64, torch.device("cpu"), torch.Generator().manual_seed(1)
    )
    torch.manual_seed(5)  # the upstream gradient eager_step draws
    step = eager_step(module, inputs, "train")
    if counter is None:
        return step()
    with counter:
        return step()


@pytest.mark.parametrize("n", [100, 64, 7])
@pytest.mark.parametrize("per_segment", [False, True])
@pytest.mark.parametrize("scope", ["core", "layer"])
def test_train_step_segment_gives_the_sequence_gradients_and_flops(scope: str, per_segment: bool, n: int) -> None:
    """One segment per step, memory without a graph: the same gradients as one graph over the
    sequence with the memory detached (inputs', and the weights' summed over segments), from
    the same products (so case_flops does not depend on train_step)."""
    counted = {}
    got = {}
    for train_step in ("sequence", "segment"):
        counted[train_step] = ProductCounter()
        got[train_step] = train_step_result(
            scope, n, counted[train_step], per_segment=per_segment, train_step=train_step
        )
    assert len(got["segment"]) == len(got["sequence"])
    for a, b in zip(got["sequence"], got["segment"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert counted["segment"].total == counted["sequence"].total > 0


def test_eager_step_uses_a_modules_own_train_call() -> None:
    calls = []

    class Own(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.train_call = lambda inputs, grad_out: calls.append((inputs, grad_out)) or ("own",)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not torch.is_grad_enabled()  # the shape probe builds no graph
            return x * self.w

    x = torch.randn(2, 3)
    step = eager_step(Own(), (x,), "train")
    assert step() == ("own",)
    ((inputs, grad_out),) = calls
    assert inputs[0] is x and grad_out.shape == (2, 3)
    # Only where set: the sequence-mode module trains through the generic autograd.grad call.
    assert TransformerXLAttention(XLParams(), Shape(1, 1, 8, 8)).train_call is None


def test_train_step_segment_builds_no_n_by_n_tensor() -> None:
    n, L, M, B, h, d = 4096, 64, 64, 1, 2, 8
    shape = Shape(B, h, d, n)
    m = TransformerXLAttention(XLParams(segment=L, memory=M, train_step="segment"), shape)
    inputs = tuple(t.float() for t in qkv(B, h, n, d))
    step = eager_step(m, inputs, "train")
    with OpRecorder() as rec:
        step()
    assert rec.largest <= max(B * h * L * (L + M + 1), B * h * n * d, (L + M) * h * d * 2)


def train_peak(n: int, train_step: str) -> int:
    executor = LocalExecutor(RunSettings(max_time_per_case=0.05, verify=False))
    params = {"segment": 256, "memory": 256, "detach_memory": True, "seed": 0, "train_step": train_step}
    case = Case(
        "hierarchical.transformer_xl", tuple(sorted(params.items())), "core", "cpu", "float32", "train", 1, 16, 8, n
    )
    out = executor.run(case)
    assert out.status == "ok", out.reason
    shape, p = Shape(1, 16, 8, n), XLParams(**params)
    assert out.result.peak_memory_bytes < TransformerXLAttention.peak_bytes_estimate(p, shape, 4, True)
    return out.result.peak_memory_bytes


@pytest.mark.slow  # four cases through the executor's workers, about 40 s
def test_train_memory_is_one_segments_with_train_step_segment() -> None:
    """Through the real executor (its memory worker): one graph over the sequence keeps every
    segment's probabilities, so the train peak grows with n; one segment per step keeps one
    segment's, so from n = 2L to 6L it barely moves (the gradients of q, k, v, which do grow,
    are small here: d = 8 against L + M = 512 key slots)."""
    L = 256
    peaks = {(step, n): train_peak(n, step) for step in ("sequence", "segment") for n in (2 * L, 6 * L)}
    sequence = peaks["sequence", 6 * L] / peaks["sequence", 2 * L]
    segment = peaks["segment", 6 * L] / peaks["segment", 2 * L]
    assert sequence >= 1.8, peaks
    assert segment <= 1.15, peaks
    assert peaks["segment", 6 * L] < 0.6 * peaks["sequence", 6 * L], peaks


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


@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize("encoder", ["attention", "gru"])
@pytest.mark.parametrize("n", [40, 64, 100, 128, 200])  # < T, = T, T and a bit, 2·T, 3·T and a bit
def test_han_executed_flops_are_the_counted_products(n: int, encoder: str, mode: str) -> None:
    """forward pads the text to whole sentences of T words, so with attention encoders it
    executes the same work at n = 40 as at n = 64 (0.1.0 recorded 4.8e6 executed FLOPs at
    n = 40 against 8.0e6 done); the bi-GRU steps over real words only (padding packed away).
    The counter sees every product but the fused attention (checked by its formula) and the
    pools' context product and weighting (4·D per row, not matmuls it counts). Train: one
    call as the backends make it (eager_step), counted the same way."""
    T, shape = 64, Shape(1, 4, 16, n)
    p = HANParams(sentence=T, encoder=encoder)
    torch.manual_seed(0)
    m = HierarchicalAttentionNetwork(p, shape)
    step = eager_step(m, (torch.randn(1, n, shape.model_dim),), mode)
    counter = ProductCounter()
    with counter:
        step()
    S = -(-n // T)
    rows = S * T + S  # word-level and sentence-level rows, padding included
    executed = HierarchicalAttentionNetwork.case_flops(p, shape, "layer", mode, executed=True)
    attention = HierarchicalAttentionNetwork.executed_flops(p, shape)
    assert attention == (4 * shape.model_dim * (S * T * T + S * S) if encoder == "attention" else 0)
    D = shape.model_dim
    if mode == "forward":
        assert counter.total == executed - attention - 4 * D * rows
    elif encoder == "attention":
        assert counter.total == executed - 3.5 * attention - 3 * 4 * D * rows
    else:
        # Backward (two products per forward one) may skip the gradient of the GRU's zero
        # initial state: at most one recurrent product (1.5·D²) per sequence and direction.
        skipped = executed - 3 * 4 * D * rows - counter.total
        assert 0 < skipped <= (S + 1) * 2 * 1.5 * D * D
    useful = HierarchicalAttentionNetwork.case_flops(p, shape, "layer", mode)
    assert (useful == executed) == (n % T == 0)
    assert useful <= executed
