"""The `flex` implementation (attnbench.workloads.impls.flex): FlexAttention with the variant's
own pattern, checked against each variant's float64 dense reference.

Compiling flex takes seconds to tens of seconds per pattern and length, and compiled flex on a
CPU takes float32 only (not float64), so most checks run flex *eagerly* in float64 (the same
mask_mod, score_mod, sorting and round merge, torch's unfused flex path; `eager_flex`), which is
exact to 1e-12. The compiled kernel itself is checked in float32 against the float64 reference
at the worker's float32 tolerance: once here, for every variant under -m slow, through the real
worker under -m slow, and on CUDA under -m gpu.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.errors import Unsupported
from attnbench.core.registry import get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.workloads.base import Shape
from attnbench.workloads.impls import flex
from attnbench.workloads.impls.flex import FlexImpl

load_plugins()
pytestmark = pytest.mark.skipif(FlexImpl.availability() is not None, reason=str(FlexImpl.availability()))

FLOAT32_TOLERANCE = 1e-4  # harness/engine/worker.py VERIFY_TOLERANCE["float32"]

# (variant, parameters): every pattern flex builds, with the options that change it.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("full.sdpa", {"causal": False}),
    ("full.sdpa", {"causal": True}),
    ("full.naive", {"causal": True}),
    ("sparse.sliding_window", {"window": 64}),
    ("sparse.sliding_window", {"window": 64, "global_tokens": 5, "dilation": 3}),
    ("sparse.sliding_window", {"window": 32, "global_tokens": 7, "dilation": 2, "causal": True}),
    ("sparse.bigbird", {"block": 32, "attention": "block_sparse"}),
    ("sparse.bigbird", {"block": 16, "attention": "block_sparse", "random_per_head": True, "causal": True}),
    ("sparse.bigbird", {"block": 64, "causal": True}),  # "auto": dense below HF's threshold
    ("sparse.lsh", {"chunk": 32}),
    ("sparse.lsh", {"chunk": 32, "hashes": 3, "causal": True}),
    ("sparse.lsh", {"chunk": 64, "hashes": 1}),
    ("hierarchical.transformer_xl", {"segment": 64, "memory": 48}),
]
IDS = [f"{v}-{'-'.join(f'{k}={x}' for k, x in p.items())}" for v, p in CASES]


def setup(variant: str, params: dict[str, Any], n: int, h: int = 2, d: int = 32) -> tuple[type, Any, Shape]:
    cls = get_workload(variant)
    shape = Shape(1, h, d, n)
    values = cls.resolve_params({**cls.default_params(), **params}, shape)
    return cls, cls.make_params(values), shape


def length(variant: str, n: int) -> int:
    """n, but at most 300 for Transformer-XL, whose reference holds (n, n, h, d) position
    embeddings (0.5 GB at 1031); 300 is not a multiple of its segments either."""
    return min(n, 300) if variant == "hierarchical.transformer_xl" else n


def qkv(shape: Shape, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))


@pytest.fixture
def eager_flex(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """flex_attention uncompiled: torch's reference path, float64 included."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(flex, "_compiled_flex", lambda: flex_attention)
    monkeypatch.setattr(flex, "_compiled_lsh", lambda: flex._lsh_attend)
    monkeypatch.setattr(flex, "_compiled_merge", lambda: flex._lsh_merge)
    monkeypatch.setattr(flex, "_compiled_xl", lambda: flex._xl_attend)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


@pytest.fixture(scope="module")
def many_compiles() -> Iterator[None]:
    """One process compiles many patterns here; past dynamo's default of 8 recompiles of one
    function it would quietly run flex eagerly."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
        yield


def flex_vs_reference(
    variant: str, params: dict[str, Any], n: int, dtype: torch.dtype, *, anchor: bool = True
) -> float:
    """Max abs error of flex's core (its attention, bypassing the CPU guards when eager) against
    the variant's float64 reference."""
    cls, p, shape = setup(variant, params, n)
    module = FlexImpl.build(cls, p, shape, "core")
    if not anchor:
        module.anchor_devices = ()  # the log-sum-exp path, as on CUDA
    q, k, v = qkv(shape)
    expected = cls(p, shape).reference(q, k, v)
    with torch.no_grad():
        args = (t.to(dtype) for t in (q, k, v))
        got = module.attend(*args) if dtype == torch.float64 else module(*args)
    return (got.double() - expected).abs().max().item()


# --- the patterns, exactly (eager flex, float64) ----------------------------------------------------
@pytest.mark.parametrize("n", [256, 1031])
@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
def test_matches_the_float64_reference(eager_flex: None, variant: str, params: dict[str, Any], n: int) -> None:
    assert flex_vs_reference(variant, params, length(variant, n), torch.float64) < 1e-12


@pytest.mark.parametrize("params", [{"chunk": 32, "hashes": 2}, {"chunk": 32, "hashes": 3, "causal": True}])
def test_lsh_rounds_merge_with_the_lse_flex_returns(eager_flex: None, params: dict) -> None:
    # CUDA's path: flex returns each round's log-sum-exp (the CPU's anchor path is in CASES).
    assert flex_vs_reference("sparse.lsh", params, 1031, torch.float64, anchor=False) < 1e-12


def test_lsh_anchor_stays_below_every_score_for_large_queries(eager_flex: None) -> None:
    # ‖q‖ ≈ 200: the anchor at −‖q‖ − 1 is still below every score, so rows are never taken for
    # rows without a key (float64 here: its weight does not underflow).
    cls, p, shape = setup("sparse.lsh", {"chunk": 32, "hashes": 2}, 300)
    q, k, v = (t * 25 for t in qkv(shape))
    module = FlexImpl.build(cls, p, shape, "core")
    with torch.no_grad():
        got = module.attend(q, k, v)
    assert (got - cls(p, shape).reference(q, k, v)).abs().max().item() < 1e-10


@pytest.mark.parametrize("causal", [False, True])
def test_lsh_rows_whose_anchor_underflowed_take_their_window_lse(
    eager_flex: None, monkeypatch: pytest.MonkeyPatch, causal: bool
) -> None:
    # Every row counted as underflowed: each log-sum-exp then comes from its window directly.
    monkeypatch.setattr(flex, "UNDERFLOW_MARGIN", float("inf"))
    assert flex_vs_reference("sparse.lsh", {"chunk": 32, "hashes": 3, "causal": causal}, 300, torch.float64) < 1e-12


# --- the block masks: what create_block_mask builds, without the (n, n) evaluation ------------------
def dense_tiles(num: torch.Tensor, idx: torch.Tensor, kb: int) -> torch.Tensor:
    out = torch.zeros(*num.shape, kb, dtype=torch.bool)
    for h in range(num.shape[1]):
        for row in range(num.shape[2]):
            out[0, h, row, idx[0, h, row, : num[0, h, row]].long()] = True
    return out


@pytest.mark.parametrize("n", [300, 1031])
@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
def test_block_mask_equals_create_block_mask(variant: str, params: dict[str, Any], n: int) -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    cls, p, shape = setup(variant, params, n)
    core = FlexImpl.build(cls, p, shape, "core")
    kind = core.mask_kind(torch.device("cpu"))
    pattern = core.pattern(n, core.pattern_heads(shape.heads), kind)
    n_kv = core.mask_length(n, kind)
    mine, figures = flex.build_block_mask(pattern, n, n_kv)
    ref = create_block_mask(pattern.mask_mod, 1, pattern.heads, n, n_kv, device="cpu", BLOCK_SIZE=pattern.block)
    kb = -(-n_kv // pattern.block)
    for attr in ("kv", "full_kv"):
        got = dense_tiles(getattr(mine, f"{attr}_num_blocks"), getattr(mine, f"{attr}_indices"), kb)
        want = dense_tiles(getattr(ref, f"{attr}_num_blocks"), getattr(ref, f"{attr}_indices"), kb)
        assert torch.equal(got, want), attr
    assert figures["block_sparsity"] == pytest.approx(
        1 - (figures["tiles_partial"] + figures["tiles_full"]) / want.numel()
    )


def test_block_mask_evaluates_only_the_band_at_8k() -> None:
    cls, p, shape = setup("sparse.sliding_window", {"window": 512}, 8192)
    module = FlexImpl.build(cls, p, shape, "core")
    m = FlexImpl.case_metrics(module)
    # 64 query tiles of 128; the band (±256) touches 5 key tiles per row, 3 of them whole.
    assert m["block_size"] == 128
    assert m["tiles_full"] + m["tiles_partial"] <= 5 * 64
    assert m["tiles_evaluated"] <= 2 * 64  # whole tiles are known without evaluating them
    assert m["block_sparsity"] > 0.9
    assert m["block_mask_s"] > 0
    assert "compile_s" not in m  # nothing has been called yet


def test_own_blocks_become_flex_tiles() -> None:
    # BigBird's 64-token blocks and LSH's 64-token chunks are flex's tiles: whole, never evaluated.
    for variant, params in (("sparse.bigbird", {"block": 64}), ("sparse.lsh", {"chunk": 64, "hashes": 1})):
        cls, p, shape = setup(variant, params, 4096)
        m = FlexImpl.case_metrics(FlexImpl.build(cls, p, shape, "core"))
        assert m["block_size"] == 64
        assert m["tiles_partial"] == 0 and m["tiles_full"] > 0
    assert flex.tile_size(50) == flex.BLOCK  # not a multiple of 16: flex's default tile


def test_block_mask_moves_to_the_device_with_its_mask_mod_tensors() -> None:
    # BigBird's mask_mod reads its block table: on another device it must read a copy there
    # ("meta" stands in for CUDA here; tests/test_flex.py::test_cuda_matches_the_reference runs CUDA).
    cls, p, shape = setup("sparse.bigbird", {"block": 16, "attention": "block_sparse", "random_per_head": True}, 300)
    core = FlexImpl.build(cls, p, shape, "core")
    mask = core.block_mask(300, core.pattern_heads(2), torch.device("meta"))
    assert mask.kv_indices.device.type == "meta"
    idx = torch.zeros(1, dtype=torch.long, device="meta")
    assert mask.mask_mod(idx, idx, idx, idx).device.type == "meta"


# --- the layer scope: the native layer around the flex core, same weights ---------------------------
@pytest.mark.parametrize(
    ("variant", "params"),
    [
        ("sparse.sliding_window", {"window": 32, "global_tokens": 4}),  # LongformerLayer, global projections
        ("sparse.bigbird", {"block": 16, "attention": "block_sparse"}),
        ("hierarchical.transformer_xl", {"segment": 32, "memory": 16}),
    ],
)
def test_layer_scope_equals_the_native_layer(eager_flex: None, variant: str, params: dict[str, Any]) -> None:
    cls, p, shape = setup(variant, params, 300, h=2, d=16)
    torch.manual_seed(0)
    native = cls.build(p, shape, "layer").double()
    torch.manual_seed(0)
    module = FlexImpl.build(cls, p, shape, "layer").double()
    core = flex._find_core(module)
    assert core is not None and not any(isinstance(m, cls) for m in module.modules() if m is not core.native)
    x = cls.make_inputs(shape, "layer", torch.float64, torch.device("cpu"), torch.Generator().manual_seed(1))[0]
    core.forward = core.attend  # eager flex in float64: past the compiled path's CPU guards
    with torch.no_grad():
        assert (module(x) - native(x)).abs().max().item() < 1e-12


# --- what flex refuses, and why ---------------------------------------------------------------------
def test_supports_and_its_reasons() -> None:
    def reason(variant: str, scope: str = "core", backend: str = "cpu", **params: Any) -> str | None:
        cls = get_workload(variant)
        return FlexImpl.supports(cls, cls.make_params({**cls.default_params(), **params}), scope, backend)

    for variant, _ in CASES:
        assert reason(variant) is None
        assert reason(variant, scope="layer") is None
    assert reason("sparse.sliding_window", backend="onnxruntime") == (
        "flex needs torch.compile's inductor; onnxruntime exports the graph"
    )
    assert "inductor" in reason("sparse.lsh", backend="xla")
    assert "per-token halting" in reason("adaptive.act", scope="layer")
    assert reason("adaptive.universal", scope="layer") and reason("hierarchical.han", scope="layer")
    assert "per_segment" in reason("hierarchical.transformer_xl", per_segment=True)
    assert "train_step=segment" in reason("hierarchical.transformer_xl", train_step="segment")
    assert FlexImpl.availability() is None  # torch 2.13 and g++ here


def test_cpu_refuses_float64_and_training_with_a_reason() -> None:
    cls, p, shape = setup("sparse.sliding_window", {"window": 32}, 256)
    module = FlexImpl.build(cls, p, shape, "core")
    with pytest.raises(Unsupported, match="float32, float16 or bfloat16, not float64"):
        module(*qkv(shape))
    q, k, v = qkv(shape, torch.float32)
    with pytest.raises(Unsupported, match="inference only"):
        module(q.requires_grad_(), k, v)


def test_peak_estimate_adds_flex_buffers_to_the_native_estimate() -> None:
    cls, p, shape = setup("sparse.lsh", {}, 4096)
    native = cls.case_peak_estimate(p, shape, "core", 4, "forward")
    assert FlexImpl.peak_estimate(cls, p, shape, "core", 4, "forward") > native


# --- the compiled kernel ---------------------------------------------------------------------------------
@pytest.mark.slow  # compiles flex for three masks: about 12 s; CI runs it (-m slow)
def test_compiled_sliding_window_with_globals_dilation_and_causal(many_compiles: None) -> None:
    # One compile (~10-30 s on 2 cores): float32 through inductor's CPU flex kernel.
    params = {"window": 32, "global_tokens": 7, "dilation": 2, "causal": True}
    cls, p, shape = setup("sparse.sliding_window", params, 300)
    module = FlexImpl.build(cls, p, shape, "core")
    q, k, v = qkv(shape)
    with torch.no_grad():
        got = module(*(t.float() for t in (q, k, v)))
    assert (got.double() - cls(p, shape).reference(q, k, v)).abs().max().item() < FLOAT32_TOLERANCE
    assert FlexImpl.case_metrics(module)["compile_s"] > 0


@pytest.mark.slow  # a compile per pattern and length: minutes on 2 cores
@pytest.mark.parametrize("n", [256, 1031])
@pytest.mark.parametrize(("variant", "params"), CASES, ids=IDS)
def test_compiled_matches_the_reference_in_float32(
    many_compiles: None, variant: str, params: dict[str, Any], n: int
) -> None:
    assert flex_vs_reference(variant, params, length(variant, n), torch.float32) < FLOAT32_TOLERANCE


@pytest.mark.slow  # two workers (time, memory), each compiling at the verification and the case length: ~1 min
def test_through_the_worker() -> None:
    from attnbench.engine.executors.local import LocalExecutor

    params = {"window": 512, "global_tokens": 0, "dilation": 1, "causal": False}
    case = Case(
        "sparse.sliding_window", tuple(sorted(params.items())), "core", "cpu", "float32", "forward",
        1, 8, 64, 1024, threads=2, impl="flex",
    )  # fmt: skip
    out = LocalExecutor(RunSettings(max_time_per_case=0.05)).run(case)
    assert out.status == "ok", out.reason
    assert out.result.verification["verified"] is True
    metrics = out.result.workload_metrics
    assert metrics["block_mask_s"] > 0 and metrics["compile_s"] > 0
    assert 0 < metrics["block_sparsity"] < 1
    # The memory worker leaves the dispatcher recorder off the compiling call, and the record's
    # compile time holds that call.
    assert out.result.peak_memory_bytes is not None and out.result.compile_s >= metrics["compile_s"] * 0.5


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("variant", "params"),
    [
        ("sparse.sliding_window", {"window": 64, "global_tokens": 5, "dilation": 2, "causal": True}),
        ("sparse.bigbird", {"block": 64, "attention": "block_sparse", "random_per_head": True}),
        ("sparse.lsh", {"chunk": 64, "hashes": 2, "causal": True}),  # flex's own log-sum-exp on CUDA
    ],
)
def test_cuda_matches_the_reference(many_compiles: None, variant: str, params: dict[str, Any]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if flex.compiler_missing("cuda"):
        pytest.skip(flex.compiler_missing("cuda"))
    cls, p, shape = setup(variant, params, 1031, h=2, d=64)
    module = FlexImpl.build(cls, p, shape, "core").cuda()
    q, k, v = qkv(shape)
    with torch.no_grad():
        got = module(*(t.float().cuda() for t in (q, k, v)))
    assert (got.double().cpu() - cls(p, shape).reference(q, k, v)).abs().max().item() < FLOAT32_TOLERANCE
    if variant == "sparse.lsh":
        assert FlexImpl.case_metrics(module)["round_lse"] == "returned by flex"
