"""The adaptive family: Universal Transformer and ACT, in float64 against their definitions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from attnbench.core.registry import WORKLOADS, load_plugins
from attnbench.workloads.adaptive import ACT_EPSILON, calibrate_halting_bias
from attnbench.workloads.base import Shape
from attnbench.workloads.layer import PreNormLayer
from tests.conftest import BENCH, cli_env

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


# --- ACT ----------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("execution", ["gather", "mask"])
def test_act_where_every_token_halts_after_one_step_is_one_layer(execution: str) -> None:
    model = act(target_steps=1.0, execution=execution)
    x = x_input()
    out = model(x)
    assert model.last["ponder_max"] == 1 and model.last["steps_run"] == 1
    torch.testing.assert_close(out, model.layer(x + model.step_embedding[0]), rtol=1e-12, atol=1e-12)


def test_act_ponder_metrics_are_consistent_with_the_halting() -> None:
    shape = Shape(2, 2, 8, 64)
    for target in (1.0, 2.5, 6.0):
        model = act(shape, target_steps=target, max_steps=12)
        model(x_input(shape))
        m = model.case_metrics(model)
        assert 1 <= m["ponder_mean"] <= m["ponder_max"] <= 12
        hist = m["ponder_histogram"]
        assert len(hist) == 13 and hist[0] == 0 and sum(hist) == shape.batch * shape.seq_len
        assert m["ponder_max"] == max(k for k, c in enumerate(hist) if c)
        assert m["ponder_mean"] == pytest.approx(sum(k * c for k, c in enumerate(hist)) / sum(hist))
        assert m["steps_run"] == m["ponder_max"]
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
        {"target_steps": 0.5},
        {"target_steps": 13.0},
        {"attention": "sparse.lsh"},
        {"max_steps": 0},
    ):
        with pytest.raises(ValueError):
            ACT.make_params({**ACT.default_params(), **bad})
    assert ACT_EPSILON == 0.01


# --- through the harness --------------------------------------------------------------------------


@pytest.mark.slow  # both variants through `bench run`: about 8 s; CI runs it (-m slow)
def test_both_run_through_the_harness_and_record_workload_metrics(tmp_path: Path) -> None:
    """`bench run --scope layer` for both (one length here to stay quick; 128,256 checked by hand)."""
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
    assert sorted(r["variant"] for r in records) == ["adaptive.act", "adaptive.universal"]
    for r in records:
        assert r["status"] == "ok", r.get("reason")
        assert r["scope"] == "layer"
        if r["variant"] == "adaptive.act":
            m = r["workload_metrics"]
            assert sum(m["ponder_histogram"]) == r["batch"] * r["seq_len"]
            assert r["flops"] == m["flops"] and r["flops_executed"] == m["flops_executed"]
            assert r["analytic_flops"] > 0 and r["params"]["seed"] == 0
        else:
            assert r["workload_metrics"] == {"steps": 6}
