"""The adaptive family: Universal Transformer and ACT, in float64 against their definitions."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnbench.core.cases import Sweep, freeze_params
from attnbench.core.registry import WORKLOADS, load_plugins
from attnbench.engine.expand import expand
from attnbench.workloads.adaptive import ACT_EPSILON, calibrate_halting_bias
from attnbench.workloads.base import Shape
from attnbench.workloads.layer import PreNormLayer
from tests.conftest import BENCH, cli_env
from tests.op_recorder import OpRecorder

load_plugins()
UT, ACT = WORKLOADS["adaptive.universal"], WORKLOADS["adaptive.act"]
SHAPE = Shape(batch=2, heads=2, head_dim=8, seq_len=48)  # D = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 ops: intra-op threads only spin, badly so on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def x_input(shape: Shape = SHAPE, seed: int = 1, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.batch, shape.seq_len, shape.model_dim, generator=g, dtype=torch.float64)
    return x.requires_grad_(grad)


def act(shape: Shape = SHAPE, **params) -> torch.nn.Module:
    p = ACT.make_params(ACT.resolve_params({**ACT.default_params(), **params}, shape))
    return ACT.build(p, shape, "layer").double()


def ut(shape: Shape = SHAPE, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    p = UT.make_params(UT.resolve_params({**UT.default_params(), **params}, shape))
    return UT.build(p, shape, "layer").double()


# --- Universal Transformer --------------------------------------------------------------------


def test_universal_with_one_step_is_one_layer_application() -> None:
    model = ut(steps=1)
    assert isinstance(model.layer, PreNormLayer)
    x = x_input()
    torch.testing.assert_close(model(x), model.layer(x + model.step_embedding[0]), rtol=1e-12, atol=1e-12)


def test_universal_applies_the_shared_layer_with_each_step_embedding() -> None:
    model = ut(steps=3)
    x = x_input()
    expected = x
    for t in range(3):
        expected = model.layer(expected + model.step_embedding[t])
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_universal_runs_any_registered_attention() -> None:
    model = ut(attention="sparse.sliding_window", steps=2)
    assert type(model.layer.attention).name == "sparse.sliding_window"
    assert torch.isfinite(model(x_input())).all()
    with pytest.raises(ValueError):
        UT.make_params({"attention": "no.such"})
    with pytest.raises(ValueError):
        UT.make_params({"attention": "adaptive.act"})  # no core form


def test_universal_gradients_are_finite() -> None:
    model = ut(steps=3)
    x = x_input(grad=True)
    grads = torch.autograd.grad(model(x).pow(2).sum(), [x, *model.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0


def test_universal_flops_count_the_layer_once_per_step() -> None:
    shape = Shape(2, 8, 64, 1024)
    p = UT.make_params({"steps": 6})
    sdpa = WORKLOADS["full.sdpa"]
    attn = sdpa.flops(sdpa.make_params({}), shape)
    lin = PreNormLayer.linear_flops(shape)
    assert UT.flops(p, shape) == UT.executed_flops(p, shape) == 6 * (attn + lin)
    assert UT.case_flops(p, shape, "layer", "forward") == 6 * (attn + lin)
    assert UT.case_flops(p, shape, "layer", "train") == 6 * (3.5 * attn + 3.0 * lin)
    assert UT.case_min_bytes(p, shape, "layer", 4) > 0
    assert UT.case_peak_estimate(p, shape, "layer", 4, "train") > UT.case_peak_estimate(p, shape, "layer", 4, "forward")
    assert UT.scopes == ACT.scopes == ("layer",)


# --- ACT, frozen halting (the default): gather and mask compute the same function ---------------


@pytest.mark.parametrize("target", [1.0, 2.5, 6.0])
def test_act_gather_equals_mask(target: float) -> None:
    gather, mask = act(target_steps=target), act(target_steps=target, execution="mask")
    x = x_input()
    torch.testing.assert_close(gather(x), mask(x), rtol=1e-9, atol=1e-12)
    assert gather.last["ponder_histogram"] == mask.last["ponder_histogram"]
    assert gather.last["flops"] == mask.last["flops"]


def test_act_gather_equals_mask_with_other_dense_attention_and_batch_padding() -> None:
    shape = Shape(3, 2, 8, 37)
    gather = act(shape, target_steps=3.0, attention="full.chunked")
    mask = act(shape, target_steps=3.0, execution="mask", attention="full.chunked")
    x = x_input(shape)
    torch.testing.assert_close(gather(x), mask(x), rtol=1e-9, atol=1e-12)
    # Batch rows halt differently, so the gathered rows were padded (executed > useful) and still matched.
    assert gather.last["flops_executed"] > gather.last["flops"]


@pytest.mark.parametrize(("halting", "execution"), [("frozen", "gather"), ("frozen", "mask"), ("t2t", "mask")])
def test_act_where_every_token_halts_after_one_step_is_one_layer(halting: str, execution: str) -> None:
    model = act(target_steps=1.0, halting=halting, execution=execution)
    x = x_input()
    out = model(x)
    assert model.last["ponder_max"] == 1 and model.last["steps_run"] == 1
    torch.testing.assert_close(out, model.layer(x + model.step_embedding[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("halting", ["frozen", "t2t"])
def test_act_ponder_metrics_are_consistent_with_the_halting(halting: str) -> None:
    shape = Shape(2, 2, 8, 64)
    for target in (1.0, 2.5, 6.0):
        model = act(shape, target_steps=target, max_steps=12, halting=halting)
        model(x_input(shape))
        m = model.case_metrics(model)
        assert 1 <= m["ponder_mean"] <= m["ponder_max"] <= 12
        hist = m["ponder_histogram"]
        assert len(hist) == 13 and hist[0] == 0 and sum(hist) == shape.batch * shape.seq_len
        assert m["ponder_max"] == max(k for k, c in enumerate(hist) if c)
        assert m["ponder_mean"] == pytest.approx(sum(k * c for k, c in enumerate(hist)) / sum(hist))
        assert m["steps_run"] == m["ponder_max"]
        assert m["halting"] == halting and 0.0 <= m["remainder_mean"] <= 1.0
        assert isinstance(m["flops"], float) and isinstance(m["flops_executed"], float)
        json.dumps(m)
        # The calibration puts the mean near the target.
        assert abs(m["ponder_mean"] - target) < 0.25 * target


def test_act_halting_is_deterministic_in_the_seed() -> None:
    assert ACT.default_params()["seed"] == 0
    a, b, c = act(seed=0), act(seed=0), act(seed=1)
    x = x_input()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a.halting_bias == calibrate_halting_bias(3.0, 12, 0)
    assert not torch.equal(a.layer.qkv.weight, c.layer.qkv.weight)
    assert a.last["seed"] == 0


def test_act_gather_executes_fewer_flops_than_mask_when_halting_varies() -> None:
    gather, mask = act(target_steps=3.0), act(target_steps=3.0, execution="mask")
    x = x_input()
    with torch.no_grad():
        gather(x), mask(x)
    g, m = gather.last, mask.last
    assert len([c for c in g["ponder_histogram"] if c]) > 1  # halting varies
    assert g["flops"] == m["flops"] <= g["flops_executed"] < m["flops_executed"]
    assert g["mode"] == "forward"
    # Mask runs every token for every step the loop takes.
    D, n, B = SHAPE.model_dim, SHAPE.seq_len, SHAPE.batch
    per_step = B * n * (8 * D * D + 16 * D * D + 2 * D) + 4 * n * n * D * B
    assert m["flops_executed"] == pytest.approx(m["steps_run"] * per_step)


def test_act_gradients_of_gather_and_mask_agree() -> None:
    grads = []
    for execution in ("gather", "mask"):
        model = act(target_steps=2.5, execution=execution)
        x = x_input(grad=True)
        out = model(x)
        assert model.last["mode"] == "train"
        grads.append(torch.autograd.grad(out.pow(2).sum(), [x, *model.parameters()], allow_unused=True))
    for a, b in zip(*grads, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert grads[0][0].abs().sum() > 0


def test_act_parameters_are_validated() -> None:
    for bad in (
        {"execution": "scan"},
        {"halting": "graves"},
        {"target_steps": 0.5},
        {"target_steps": 13.0},
        {"attention": "sparse.lsh"},
        {"max_steps": 0},
    ):
        with pytest.raises(ValueError):
            ACT.make_params({**ACT.default_params(), **bad})
    # gather is there to skip halted tokens, and t2t transforms them.
    with pytest.raises(ValueError, match="execution=gather skips halted tokens, which halting=t2t still transforms"):
        ACT.make_params({**ACT.default_params(), "halting": "t2t", "execution": "gather"})
    assert ACT_EPSILON == 0.01


def test_act_defaults_to_frozen_and_auto_execution_resolves_per_halting() -> None:
    """frozen is today's definition: it stays out of the case identity, and "auto" resolves to
    the execution every earlier case recorded (gather), so their case ids stand."""
    defaults = ACT.default_params()
    assert defaults["halting"] == "frozen" and defaults["execution"] == "auto"
    assert ACT.neutral_params == {"halting": "frozen"}
    assert ACT.resolve_params(defaults, SHAPE)["execution"] == "gather"
    assert ACT.resolve_params({**defaults, "halting": "t2t"}, SHAPE)["execution"] == "mask"
    assert ACT.resolve_params({**defaults, "execution": "mask"}, SHAPE)["execution"] == "mask"
    assert ACT.make_params({"halting": "t2t"}).resolved_execution == "mask"
    # Built without resolving (as the device checks do), auto still runs the resolved mode.
    assert ACT.build(ACT.make_params({}), SHAPE, "layer").execution == "gather"
    # The default case keeps the id a run from before `halting` recorded for it
    # (tests/fixtures/report/cpu-sparse-act/cases.jsonl).
    sweep = Sweep(("adaptive.act",), ("cpu",), (128,), heads=(2,), head_dim=(32,), scopes=("layer",))
    (case,) = expand(sweep)
    assert case.params_dict["execution"] == "gather" and case.params_dict["halting"] == "frozen"
    assert case.case_id == "adaptive.act-cpu-n128-778c55dd4c"
    assert ACT.definition_revision(case.params_dict, "layer") == 1


def test_act_halting_t2t_through_expand_needs_no_execution() -> None:
    """`--param adaptive.act.halting=frozen,t2t` alone gives one frozen case (gather) and one
    t2t case (mask); asking for gather with t2t is refused."""
    sweep = Sweep(
        variants=("adaptive.act",),
        backends=("cpu",),
        seq_lens=(128,),
        scopes=("layer",),
        params=freeze_params({"adaptive.act": {"halting": ("frozen", "t2t")}}),
    )
    cases = {c.params_dict["halting"]: c for c in expand(sweep)}
    assert set(cases) == {"frozen", "t2t"}
    assert cases["frozen"].params_dict["execution"] == "gather"
    assert cases["t2t"].params_dict["execution"] == "mask"
    assert cases["frozen"].case_id != cases["t2t"].case_id
    bad = Sweep(
        variants=("adaptive.act",),
        backends=("cpu",),
        seq_lens=(128,),
        scopes=("layer",),
        params=freeze_params({"adaptive.act": {"halting": ("t2t",), "execution": ("gather",)}}),
    )
    with pytest.raises(Exception, match="execution=gather skips halted tokens"):
        expand(bad)


# --- ACT, t2t halting: tensor2tensor's function ---------------------------------------------------


def t2t_basic_act(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tensor2tensor's universal_transformer_act, act_type "basic" (universal_transformer_util.py,
    ut_function and should_continue), line by line in plain torch, with the module's weights
    and its step_preprocess (a learned step embedding) and halting unit (a dense layer on the
    layer-normed state). Returns (new_state, ponder_times, remainders)."""
    L, (B, n, D) = model.layer, x.shape
    h, d = model.shape.heads, model.shape.head_dim

    def ffn_unit_of_attention_unit(s: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(s, (D,), L.norm1.weight, L.norm1.bias, L.norm1.eps)
        q, k, v = (y @ L.qkv.weight.T + L.qkv.bias).view(B, n, 3, h, d).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v  # (B, h, n, d)
        s = s + att.transpose(1, 2).reshape(B, n, D) @ L.proj.weight.T + L.proj.bias
        y = F.layer_norm(s, (D,), L.norm2.weight, L.norm2.bias, L.norm2.eps)
        return s + F.gelu(y @ L.ffn[0].weight.T + L.ffn[0].bias) @ L.ffn[2].weight.T + L.ffn[2].bias

    act_max_steps = model.params.max_steps
    threshold = 1.0 - ACT_EPSILON
    state = x
    halting_probability = torch.zeros(B, n, dtype=x.dtype)
    remainders = torch.zeros(B, n, dtype=x.dtype)
    n_updates = torch.zeros(B, n, dtype=x.dtype)
    previous_state = torch.zeros_like(x)
    step = 0

    def should_continue() -> bool:
        return bool(((halting_probability < threshold) & (n_updates < act_max_steps)).any())

    while should_continue() and step < act_max_steps + 1:  # maximum_iterations=act_max_steps + 1
        state = state + model.step_embedding[step]  # step_preprocess
        halt_in = F.layer_norm(state, (D,), eps=model.halt_norm.eps)
        p = torch.sigmoid(halt_in @ model.halt.weight.T + model.halt.bias).squeeze(-1)
        still_running = (halting_probability < 1.0).to(x.dtype)
        new_halted = (halting_probability + p * still_running > threshold).to(x.dtype) * still_running
        still_running = (halting_probability + p * still_running <= threshold).to(x.dtype) * still_running
        halting_probability = halting_probability + p * still_running
        remainders = remainders + new_halted * (1 - halting_probability)
        halting_probability = halting_probability + new_halted * remainders
        n_updates = n_updates + still_running + new_halted
        update_weights = (p * still_running + new_halted * remainders).unsqueeze(-1)
        transformed_state = ffn_unit_of_attention_unit(state)
        new_state = transformed_state * update_weights + previous_state * (1 - update_weights)
        state, previous_state = transformed_state, new_state
        step += 1
    return previous_state, n_updates, remainders


@pytest.mark.parametrize(
    ("shape", "target", "max_steps", "attention"),
    [
        (SHAPE, 3.0, 12, "full.sdpa"),
        (SHAPE, 1.0, 12, "full.sdpa"),
        (Shape(3, 2, 8, 37), 2.5, 12, "full.naive"),
        (Shape(3, 2, 8, 37), 3.5, 4, "full.chunked"),  # many tokens reach max_steps unhalted
    ],
)
def test_act_t2t_matches_a_line_by_line_tensor2tensor_loop(
    shape: Shape, target: float, max_steps: int, attention: str
) -> None:
    model = act(shape, halting="t2t", target_steps=target, max_steps=max_steps, attention=attention)
    assert model.execution == "mask"
    x = x_input(shape)
    out = model(x)
    expected, ponder_times, remainders = t2t_basic_act(model, x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    n_updates, got_remainders = model.ponder
    assert torch.equal(n_updates.double(), ponder_times)
    torch.testing.assert_close(got_remainders, remainders, rtol=0, atol=1e-15)
    assert model.last["steps_run"] == int(ponder_times.max())
    assert model.last["ponder_mean"] == pytest.approx(float(ponder_times.mean()), rel=1e-15)
    assert model.last["remainder_mean"] == pytest.approx(float(remainders.detach().mean()), rel=1e-12)


def test_act_t2t_and_frozen_differ_where_tokens_halt_at_different_steps() -> None:
    x = x_input()
    frozen, t2t = act(target_steps=3.0), act(target_steps=3.0, halting="t2t")
    out_f, out_t = frozen(x), t2t(x)
    assert len([c for c in frozen.last["ponder_histogram"] if c]) > 1  # halting varies
    # Same weights, same first step: they part only where a halted token would be read.
    assert torch.equal(frozen.layer.qkv.weight, t2t.layer.qkv.weight)
    assert (out_f - out_t).abs().max() > 1e-3
    # Where every token halts after one step, nothing is ever read from a halted token.
    one_f, one_t = act(target_steps=1.0), act(target_steps=1.0, halting="t2t")
    torch.testing.assert_close(one_f(x), one_t(x), rtol=1e-12, atol=1e-12)


def test_act_t2t_ponder_statistics_follow_t2t_definition() -> None:
    """ponder_times = n_updates (steps while running, the halting one included); a token still
    running at max_steps stops with n_updates = max_steps, no remainder, and update weights
    summing to its cumulative p < 1 − ε. frozen forces a halt there with the remainder."""
    shape, x = Shape(2, 2, 8, 64), x_input(Shape(2, 2, 8, 64))
    t2t = act(shape, halting="t2t", target_steps=3.5, max_steps=4)
    frozen = act(shape, target_steps=3.5, max_steps=4)
    t2t(x), frozen(x)
    n_t, r_t = t2t.ponder
    n_f, r_f = frozen.ponder
    capped_t = n_t == 4
    assert capped_t.any() and (~capped_t).any()
    halted = r_t > 0
    assert halted.any() and (~halted).any()
    # Unhalted at the cap: remainder 0 (t2t); halted: remainder in (0, 1].
    assert bool((r_t[~halted] == 0).all()) and bool(capped_t[~halted].all())
    assert bool(((r_t[halted] > 0) & (r_t[halted] <= 1)).all())
    # frozen gives every token a remainder (the forced halt at max_steps).
    assert bool((r_f > 0).all()) and bool((n_f <= 4).all())
    m = t2t.case_metrics(t2t)
    assert m["ponder_mean"] == pytest.approx(float(n_t.double().mean()))
    assert m["remainder_mean"] == pytest.approx(float(r_t.double().mean()))
    assert m["ponder_histogram"] == [int((n_t == k).sum()) for k in range(5)]
    assert m["steps_run"] == 4
    assert m["halting"] == "t2t" and frozen.case_metrics(frozen)["halting"] == "frozen"


def test_act_t2t_transforms_every_token_every_step_and_its_flops_say_so() -> None:
    x = x_input()
    with torch.no_grad():
        t2t, gather = act(target_steps=3.0, halting="t2t"), act(target_steps=3.0)
        t2t(x), gather(x)
    m, g = t2t.last, gather.last
    D, n, B = SHAPE.model_dim, SHAPE.seq_len, SHAPE.batch
    per_step = B * n * (8 * D * D + 16 * D * D + 2 * D) + 4 * n * n * D * B
    # Useful = executed: a halted token's transformation is read by the running ones.
    assert m["flops"] == m["flops_executed"] == pytest.approx(m["steps_run"] * per_step)
    assert m["flops_executed"] > g["flops_executed"] >= g["flops"]
    p = ACT.make_params({"halting": "t2t"})
    per_row = 8 * D * D + 16 * D * D + 2 * D
    sdpa = WORKLOADS["full.sdpa"]
    attn = sdpa.flops(sdpa.make_params({}), SHAPE)
    assert ACT.flops(p, SHAPE) == ACT.executed_flops(p, SHAPE) == 12 * (attn + per_row * B * n)
    assert ACT.case_flops(p, SHAPE, "layer", "train") == 12 * (3.5 * attn + 3.0 * per_row * B * n)


@pytest.mark.parametrize(
    ("halting", "execution", "attention"),
    [
        ("frozen", "gather", "full.sdpa"),
        ("frozen", "mask", "full.naive"),
        ("frozen", "mask", "full.sdpa"),
        ("t2t", "mask", "full.naive"),
        ("t2t", "mask", "full.sdpa"),
    ],
)
def test_act_executed_flops_equal_counted_flops(halting: str, execution: str, attention: str) -> None:
    """torch's FlopCounterMode counts the products: the layer's and the halting unit's linears
    and, where it has a formula (matmuls; not the fused CPU attention in torch 2.13), attention."""
    shape = Shape(3, 2, 8, 37)  # batch rows halt differently: gather pads
    model = act(shape, target_steps=2.5, halting=halting, execution=execution, attention=attention)
    x = x_input(shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    m, D, n = model.last, shape.model_dim, shape.seq_len
    per_row = 8 * D * D + 16 * D * D + 2 * D
    rows = (m["flops_executed"]) / (per_row + 4 * D * n)  # every executed row sees all n keys
    assert rows == int(rows) and rows >= sum(k * c for k, c in enumerate(m["ponder_histogram"]))
    linear, attn = per_row * rows, 4 * D * n * rows
    counted = counter.get_total_flops()
    assert counted in (linear, linear + attn)
    if attention == "full.naive":
        assert counted == m["flops_executed"]
    if execution == "mask":
        assert rows == m["steps_run"] * shape.batch * n


@pytest.mark.parametrize("attention", ["full.sdpa", "full.chunked"])
def test_act_t2t_gradients_match_the_tensor2tensor_loop(attention: str) -> None:
    model = act(Shape(2, 2, 8, 29), halting="t2t", target_steps=2.5, attention=attention)
    params = [model.step_embedding, model.halt.weight, model.halt.bias, *model.layer.parameters()]
    x = x_input(Shape(2, 2, 8, 29), grad=True)
    out = model(x)
    assert model.last["mode"] == "train"
    got = torch.autograd.grad(out.pow(2).sum(), [x, *params])
    expected = torch.autograd.grad(t2t_basic_act(model, x)[0].pow(2).sum(), [x, *params])
    for a, b in zip(got, expected, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert got[0].abs().sum() > 0
    # The halting unit is trained through the update weights.
    assert got[2].abs().sum() > 0


def largest_tensor(n: int, train: bool, **params) -> int:
    shape = Shape(1, 2, 16, n)
    model = ACT.build(ACT.make_params(ACT.resolve_params({**ACT.default_params(), **params}, shape)), shape, "layer")
    x = torch.randn(1, n, shape.model_dim, generator=torch.Generator().manual_seed(0), requires_grad=train)
    with OpRecorder() as mode:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return mode.largest


@pytest.mark.parametrize("halting", ["frozen", "t2t"])
def test_act_builds_no_n_by_n_tensor_and_its_memory_grows_linearly(halting: str) -> None:
    """Over full.sdpa nothing n×n is built, forward or backward, and the largest tensor (the
    FFN's hidden state, n·4D) doubles with n."""
    n, D = 512, 32
    for train in (False, True):
        small = largest_tensor(n, train, halting=halting, target_steps=2.0, max_steps=3)
        large = largest_tensor(2 * n, train, halting=halting, target_steps=2.0, max_steps=3)
        assert small == n * 4 * D < n * n
        assert large == 2 * small
    shape = Shape(1, 8, 64, 4096)
    t2t, frozen = ACT.make_params({"halting": "t2t"}), ACT.make_params({})
    assert ACT.working_bytes(t2t, shape, 4) == ACT.working_bytes(frozen, shape, 4) - 2 * 4096 * 512 * 4  # no caches
    for mode in ("forward", "train"):
        assert ACT.case_peak_estimate(t2t, shape, "layer", 4, mode) >= ACT.case_min_bytes(t2t, shape, "layer", 4)


# --- through the harness --------------------------------------------------------------------------


@pytest.mark.slow  # three cases through `bench run`, subprocesses included; CI runs it (-m slow)
def test_both_run_through_the_harness_and_record_workload_metrics(tmp_path: Path) -> None:
    """`bench run --scope layer` for both, ACT with both halting semantics and no execution
    named (one length here to stay quick; 128,256 checked by hand)."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *BENCH,
            "run",
            "--variants",
            "adaptive.universal,adaptive.act",
            "--scope",
            "layer",
            "--seq-lens",
            "128",
            "--heads",
            "4",
            "--head-dim",
            "16",
            "--param",
            "adaptive.act.halting=frozen,t2t",
            "--max-time-per-case",
            "0.2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert sorted(r["variant"] for r in records) == ["adaptive.act", "adaptive.act", "adaptive.universal"]
    for r in records:
        assert r["status"] == "ok", r.get("reason")
        assert r["scope"] == "layer"
        if r["variant"] == "adaptive.act":
            m = r["workload_metrics"]
            assert sum(m["ponder_histogram"]) == r["batch"] * r["seq_len"]
            assert r["flops"] == m["flops"] and r["flops_executed"] == m["flops_executed"]
            assert r["analytic_flops"] > 0 and r["params"]["seed"] == 0
            assert m["halting"] == r["params"]["halting"]
            # auto resolved per halting, and recorded resolved
            assert r["params"]["execution"] == m["execution"] == {"frozen": "gather", "t2t": "mask"}[m["halting"]]
            if m["halting"] == "t2t":
                assert r["flops"] == r["flops_executed"]
        else:
            assert r["workload_metrics"] == {"steps": 6}
