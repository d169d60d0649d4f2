"""Every variant against its dense float64 reference, at lengths on and off its block sizes."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.core.registry import BUILTIN_WORKLOAD_MODULES, WORKLOADS, load_plugins
from attnbench.workloads.base import Shape
from attnbench.workloads.layer import PreNormLayer
from attnbench.workloads.reference import causal_mask, dense_reference

load_plugins()

# Parameter sets to check per built-in variant: small blocks so lengths straddle them.
CHECKS: dict[str, list[dict]] = {
    "full.naive": [{"causal": False}, {"causal": True}],
    "full.sdpa": [{"causal": False}, {"causal": True}],
    "full.chunked": [{"chunk": 32, "causal": False}, {"chunk": 32, "causal": True}, {"chunk": 1024}],
    # chunk 2: n = 257 has 256 auto buckets, factorised 16·16
    "sparse.lsh": [{"chunk": 32}, {"chunk": 32, "hashes": 3, "causal": True}, {"chunk": 2}],
    # Each sparse variant has a test file of its own; these are the generic checks.
    "sparse.sliding_window": [{"window": 32}, {"window": 32, "causal": True, "global_tokens": 3}],
    "sparse.bigbird": [
        {"block": 8, "random_blocks": 2},
        {"block": 8, "random_blocks": 1, "causal": True},
        {"block": 8, "random_blocks": 2, "random_per_head": True},
    ],
    "hierarchical.transformer_xl": [
        {"segment": 32, "memory": 32},
        {"segment": 32, "memory": 16, "detach_memory": False},
        {"segment": 32, "memory": 16, "per_segment": True},  # W_R R for every segment, as the reference
    ],
}
LENGTHS = [64, 100, 257]  # a multiple of 32, and two that are not


def builtin_variants() -> list[str]:
    mods = tuple(BUILTIN_WORKLOAD_MODULES)
    # Layer-only variants (HAN) have no q, k, v core to check here; their own tests cover them.
    return sorted(n for n, c in WORKLOADS.items() if c.__module__.startswith(mods) and "core" in c.scopes)


def test_every_builtin_variant_has_correctness_checks() -> None:
    assert builtin_variants() and set(builtin_variants()) <= set(CHECKS)


def qkv(n: int, seed: int = 0, B: int = 2, h: int = 3, d: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize(("variant", "params"), [(v, p) for v, ps in CHECKS.items() for p in ps], ids=lambda x: str(x))
def test_variant_matches_float64_reference(variant: str, params: dict, n: int) -> None:
    cls = WORKLOADS[variant]
    shape = Shape(2, 3, 16, n)
    p = cls.make_params(cls.resolve_params({**cls.default_params(), **params}, shape))
    q, k, v = qkv(n)
    module = cls(p, shape)
    got = module(q, k, v)
    assert got.shape == q.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, module.reference(q, k, v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("variant", "params"), [(v, ps[0]) for v, ps in CHECKS.items()], ids=lambda x: str(x))
def test_variant_takes_strided_inputs_as_the_layer_scope_gives_them(variant: str, params: dict) -> None:
    """PreNormLayer hands in views of a (B, n, 3, h, d) projection, not contiguous tensors."""
    cls = WORKLOADS[variant]
    n = 257
    shape = Shape(1, 3, 16, n)  # batch 1: merging (B, h) is then a view, still strided
    module = cls(cls.make_params(cls.resolve_params({**cls.default_params(), **params}, shape)), shape)
    packed = torch.randn(1, n, 3, 3, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, n, d), not contiguous
    assert not q.is_contiguous()
    torch.testing.assert_close(module(q, k, v), module.reference(q, k, v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", sorted(CHECKS))
def test_layer_scope_runs_forward_and_backward(variant: str) -> None:
    cls = WORKLOADS[variant]
    shape = Shape(1, 2, 8, 200)
    layer = cls.build(cls.make_params(cls.resolve_params(cls.default_params(), shape)), shape, "layer")
    x = torch.randn(1, 200, 16, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()


def test_reference_is_independent_of_the_variants() -> None:
    # The reference itself against a by-hand loop for one query row.
    q, k, v = qkv(7, B=1, h=1, d=4)
    out = dense_reference(q, k, v, causal_mask(7))
    i = 4
    scores = [(q[0, 0, i] @ k[0, 0, j]).item() / math.sqrt(4) for j in range(i + 1)]
    w = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
    expected = sum(w[j] * v[0, 0, j] for j in range(i + 1))
    torch.testing.assert_close(out[0, 0, i], expected)


def test_chunked_gradients_match_naive() -> None:
    n = 100
    shape = Shape(1, 2, 8, n)
    grads = []
    for variant, params in (("full.naive", {"causal": True}), ("full.chunked", {"chunk": 32, "causal": True})):
        cls = WORKLOADS[variant]
        q, k, v = (t.requires_grad_(True) for t in qkv(n, B=1, h=2, d=8))
        out = cls(cls.make_params({**cls.default_params(), **params}), shape)(q, k, v)
        grads.append(torch.autograd.grad(out.pow(2).sum(), (q, k, v)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_layer_scope_is_the_same_layer_whatever_the_attention() -> None:
    shape = Shape(2, 4, 8, 100)
    outs = []
    for variant in ("full.naive", "full.sdpa", "full.chunked"):
        cls = WORKLOADS[variant]
        torch.manual_seed(0)
        layer = cls.build(cls.make_params(cls.default_params()), shape, "layer").double()
        assert isinstance(layer, PreNormLayer)
        x = torch.randn(2, 100, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        outs.append(layer(x))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2])


def test_dense_flops_follow_the_reference_formula() -> None:
    shape = Shape(batch=2, heads=8, head_dim=64, seq_len=1024)
    cls = WORKLOADS["full.sdpa"]
    D = 512
    assert cls.flops(cls.make_params({"causal": False}), shape) == 4 * 1024**2 * D * 2
    assert cls.flops(cls.make_params({"causal": True}), shape) == 4 * (1024 * 1025 / 2) * D * 2
    layer = cls.case_flops(cls.make_params({"causal": False}), shape, "layer", "forward")
    assert layer == 4 * 1024**2 * D * 2 + 2 * (8 * 1024 * D * D + 4 * 1024 * D * 4 * D)
    train = cls.case_flops(cls.make_params({"causal": False}), shape, "core", "train")
    assert train == 3.5 * 4 * 1024**2 * D * 2


def test_executed_flops_count_masked_work() -> None:
    shape = Shape(batch=1, heads=2, head_dim=8, seq_len=100)
    naive, chunked = WORKLOADS["full.naive"], WORKLOADS["full.chunked"]
    causal = naive.make_params({"causal": True})
    assert naive.executed_flops(causal, shape) == naive.flops(naive.make_params({"causal": False}), shape)
    p = chunked.make_params({"chunk": 32, "causal": True})
    # chunks of 32, 32, 32, 4 queries against 32, 64, 96, 100 keys
    assert chunked.executed_flops(p, shape) == 4 * (32 * 32 + 32 * 64 + 32 * 96 + 4 * 100) * 16
    assert chunked.flops(p, shape) < chunked.executed_flops(p, shape) < naive.executed_flops(causal, shape)


def test_analytic_minimum_memory_separates_materialised_from_fused() -> None:
    shape = Shape(1, 8, 64, 4096)
    naive = WORKLOADS["full.naive"].working_bytes(WORKLOADS["full.naive"].Params(), shape, 4)
    sdpa = WORKLOADS["full.sdpa"].working_bytes(WORKLOADS["full.sdpa"].Params(), shape, 4)
    chunked = WORKLOADS["full.chunked"].working_bytes(WORKLOADS["full.chunked"].Params(chunk=512), shape, 4)
    assert naive == 8 * 4096**2 * 4 + 8 * 4096 * 64 * 4  # one n×n score buffer plus the output
    assert sdpa == 8 * 4096 * 64 * 4
    assert chunked == 8 * 512 * 4096 * 4 + sdpa


# Host syncs on data (ACT's halting decision reads a value back) cannot run on "meta".
DATA_DEPENDENT = "cannot be called on meta tensors"


@pytest.mark.parametrize(
    "variant", sorted(n for n, c in WORKLOADS.items() if c.__module__.startswith(tuple(BUILTIN_WORKLOAD_MODULES)))
)
def test_every_variant_keeps_its_tensors_on_the_inputs_device(variant: str) -> None:
    """On a device that is not the CPU (here "meta", which has no data) a variant must make
    every tensor it needs on its inputs' device: transformer_xl once built its sinusoid
    frequencies on the CPU, which failed only on a GPU (found on an H200)."""
    cls = WORKLOADS[variant]
    shape = Shape(1, 2, 16, 96)
    for scope in cls.scopes:
        module = cls.build(cls.make_params({}), shape, scope).to("meta")
        inputs = cls.make_inputs(shape, scope, torch.float32, torch.device("meta"), torch.Generator().manual_seed(0))
        try:
            out = module(*inputs)
        except RuntimeError as exc:
            if DATA_DEPENDENT in str(exc):
                continue
            raise
        assert out.device.type == "meta"
