"""The `flash_attn` and `xformers` implementations (attnbench.workloads.impls.flash_attn, .xformers).

Neither library installs without CUDA, so on a CPU machine these check what can be checked
there: each refuses with its one-line reason (library missing, backend, dtype, parameters no
band expresses), `bench list` and `bench run` say so, the band each library is asked for is the
variant's `reference_mask` exactly (by each library's documented rule, and by xformers' own
`materialize` where xformers imports), and the plumbing (the (B, n, h, d) transposes, the
window and bias arguments, the layer) is exact against the float64 reference with a stand-in
for the library that follows its documented semantics. Under -m gpu, on a CUDA machine with the
library installed (skipped, saying which is missing, otherwise), the real kernels are checked
against the float64 reference at the worker's tolerance for the dtype, at lengths that are and
are not multiples of the window, and a small `bench run` sweeps both.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.errors import Unsupported
from attnbench.core.registry import IMPLS, get_workload, load_plugins
from attnbench.engine.build import impl_refusal
from attnbench.engine.worker import VERIFY_TOLERANCE
from attnbench.workloads.base import Shape
from attnbench.workloads.impls import band_kernels as bk
from attnbench.workloads.impls import flash_attn as fa
from attnbench.workloads.impls import xformers as xf
from attnbench.workloads.impls.flash_attn import FlashAttnImpl
from attnbench.workloads.impls.masked_sdpa import MaskedSdpaImpl
from attnbench.workloads.impls.xformers import XformersImpl
from tests.conftest import BENCH, cli_env

load_plugins()
KERNEL_IMPLS = [FlashAttnImpl, XformersImpl]
LIBRARY = {FlashAttnImpl: fa, XformersImpl: xf}

# (variant, parameters) each library computes exactly.
SUPPORTED: list[tuple[str, dict[str, Any]]] = [
    ("full.sdpa", {"causal": False}),
    ("full.sdpa", {"causal": True}),
    ("full.naive", {"causal": True}),
    ("full.chunked", {"chunk": 128, "causal": True}),
    ("sparse.sliding_window", {"window": 64}),
    ("sparse.sliding_window", {"window": 64, "causal": True}),
    ("sparse.sliding_window", {"window": 2, "causal": True}),
    ("sparse.sliding_window", {"window": 4096}),  # wider than the sequence: every key
]
IDS = [f"{v}-{'-'.join(f'{k}={x}' for k, x in p.items())}" for v, p in SUPPORTED]
BANDS = [(w, c) for w in (2, 16, 64, 512) for c in (False, True)]
LENGTHS = [1, 7, 64, 100, 129, 256]  # multiples of the window and not, shorter than it too


def setup(variant: str, params: dict[str, Any], n: int, h: int = 2, d: int = 32) -> tuple[type, Any, Shape]:
    cls = get_workload(variant)
    shape = Shape(1, h, d, n)
    values = cls.resolve_params({**cls.default_params(), **params}, shape)
    return cls, cls.make_params(values), shape


def qkv(shape: Shape, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    B, h, n, d = shape.batch, shape.heads, shape.seq_len, shape.head_dim
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))


def reason(impl: type, variant: str, scope: str = "core", backend: str = "cuda", **params: Any) -> str | None:
    cls = get_workload(variant)
    return impl.supports(cls, cls.make_params({**cls.default_params(), **params}), scope, backend)


def make_case(variant: str, impl: str, backend: str = "cuda", dtype: str = "bfloat16", **params: Any) -> Case:
    cls = get_workload(variant)
    values = {**cls.default_params(), **params}
    return Case(variant, tuple(sorted(values.items())), "core", backend, dtype, "forward", 1, 2, 64, 256, impl=impl)


@pytest.fixture
def missing_libraries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both libraries absent, whatever this machine has (their import is cached: cleared around)."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name.split(".")[0] in ("flash_attn", "xformers") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    fa._library.cache_clear()
    xf._library.cache_clear()
    yield
    fa._library.cache_clear()
    xf._library.cache_clear()


# --- what each refuses, and why (one line each) --------------------------------------------------------
def test_a_missing_library_says_how_to_install_it(missing_libraries: None) -> None:
    flash, xformers = FlashAttnImpl.availability(), XformersImpl.availability()
    assert flash == (
        "flash-attn is not installed (pip install flash-attn --no-build-isolation; needs CUDA and an NVIDIA GPU)"
    )
    assert xformers is not None and xformers.startswith("xformers is not installed (pip install xformers")
    assert "\n" not in flash + xformers
    refused = impl_refusal(make_case("full.sdpa", "flash_attn"))
    assert refused == f"implementation flash_attn is not available here: {flash}"
    assert impl_refusal(make_case("sparse.sliding_window", "xformers", window=64)) == (
        f"implementation xformers is not available here: {xformers}"
    )


def test_a_library_that_does_not_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed but broken (built for another torch or CUDA): its import fails.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a)
    )
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ImportError
    fa._library.cache_clear()
    try:
        why = FlashAttnImpl.availability()
    finally:
        fa._library.cache_clear()
    assert why is not None and why.startswith("flash-attn is installed but does not import: ")
    assert "\n" not in why


@pytest.mark.parametrize("impl", KERNEL_IMPLS, ids=lambda i: i.name)
def test_supports_what_one_band_expresses_on_cuda_only(impl: type) -> None:
    for variant, params in SUPPORTED:
        assert reason(impl, variant, **params) is None, (variant, params)
        assert reason(impl, variant, scope="layer", **params) is None, (variant, params)
        why = reason(impl, variant, backend="cpu", **params)
        assert why is not None and why.endswith("the cuda backend only, not cpu")
    lib = "flash-attn" if impl is FlashAttnImpl else "xformers"
    assert reason(impl, "sparse.sliding_window", window=16, dilation=2) == (
        f"{lib} computes one contiguous band; dilation=2 keeps every 2-th key within ±16, "
        "which no (left, right) window expresses"
    )
    assert reason(impl, "sparse.sliding_window", window=16, global_tokens=3) == (
        f"{lib} computes one band; Longformer's 3 global rows and columns (they see every key, every "
        "query sees them) are no (left, right) window"
    )
    for variant in ("sparse.lsh", "hierarchical.transformer_xl", "adaptive.act"):
        scope = "layer" if variant == "adaptive.act" else "core"
        assert reason(impl, variant, scope=scope).startswith(f"{lib} has no form of {variant}: ")
    bigbird = reason(impl, "sparse.bigbird", attention="block_sparse")
    assert bigbird is not None and "random blocks" in bigbird and "\n" not in bigbird
    if impl is XformersImpl:  # no dense tensor bias passed off as a sparse kernel
        assert "dense (n, n) tensor bias" in bigbird and "not a sparse kernel" in bigbird


def test_dtype_rules() -> None:
    def dtype_reason(impl: type, variant: str, dtype: str, **params: Any) -> str | None:
        cls = get_workload(variant)
        return impl.supports_dtype(cls, cls.make_params({**cls.default_params(), **params}), dtype)

    for dtype in ("float16", "bfloat16"):
        for variant, params in SUPPORTED:
            assert dtype_reason(FlashAttnImpl, variant, dtype, **params) is None
            assert dtype_reason(XformersImpl, variant, dtype, **params) is None
    for dtype in ("float32", "float64"):
        assert dtype_reason(FlashAttnImpl, "full.sdpa", dtype) == (
            f"flash-attn computes in float16 or bfloat16 only, not {dtype}"
        )
    # xformers: float32 through CUTLASS, but its two-sided local mask runs on its flash kernels only.
    assert dtype_reason(XformersImpl, "full.sdpa", "float32") is None
    assert dtype_reason(XformersImpl, "sparse.sliding_window", "float32", window=64, causal=True) is None
    assert "flash kernels only" in dtype_reason(XformersImpl, "sparse.sliding_window", "float32", window=64)
    assert dtype_reason(XformersImpl, "full.sdpa", "float64") == (
        "xformers' memory-efficient kernels take float32, float16 or bfloat16, not float64"
    )


def test_the_module_refuses_what_supports_is_not_told() -> None:
    # supports() is not given the dtype: the module refuses when called, before the library.
    cls, p, shape = setup("sparse.sliding_window", {"window": 16}, 64)
    q, k, v = qkv(shape)
    flash = FlashAttnImpl.build(cls, p, shape, "core")
    with pytest.raises(Unsupported, match=r"^flash-attn computes in float16 or bfloat16 only, not float32$"):
        flash(q.float(), k.float(), v.float())
    with pytest.raises(Unsupported, match=r"^flash-attn runs on CUDA tensors only, not cpu$"):
        flash(q.bfloat16(), k.bfloat16(), v.bfloat16())
    xformers = XformersImpl.build(cls, p, shape, "core")
    with pytest.raises(Unsupported, match=r"two-sided local mask .* not float32"):
        xformers(q.float(), k.float(), v.float())
    causal = XformersImpl.build(*setup("sparse.sliding_window", {"window": 16, "causal": True}, 64)[:2], shape, "core")
    with pytest.raises(
        Unsupported, match=r"^xformers' memory-efficient kernels run on CUDA tensors only here, not cpu$"
    ):
        causal(q.float(), k.float(), v.float())
    # Training a band in float32: xformers' CUTLASS backward takes no local mask.
    band = causal.band
    assert "no backward for a local band" in xf.xformers_training_refusal(band, "float32", grad=True)
    assert xf.xformers_training_refusal(band, "float32", grad=False) is None
    assert xf.xformers_training_refusal(band, "bfloat16", grad=True) is None
    assert xf.xformers_training_refusal(bk.Band(causal=True), "float32", grad=True) is None  # LowerTriangularMask


def test_bench_list_shows_them_and_why_unavailable(missing_libraries: None) -> None:
    import io

    from rich.console import Console

    from attnbench.cli.list import list_json, print_list

    data = {i["name"]: i for i in list_json()["implementations"]}
    for name in ("flash_attn", "xformers"):
        assert data[name]["available"] is False and "is not installed (pip install" in data[name]["reason"]
    by_variant = {v["name"]: v["impls"] for v in list_json()["variants"]}
    assert by_variant["full.sdpa"]["flash_attn"].startswith("not available here: flash-attn is not installed")
    console = Console(width=160, record=True, file=io.StringIO(), emoji=False)
    print_list(console)
    text = console.export_text()
    assert "flash_attn" in text and "xformers" in text and "pip install flash-attn --no-build-isolation" in text


@pytest.mark.slow  # a real bench run subprocess, about 5 s
def test_bench_run_records_them_unsupported_with_the_reason(tmp_path: Path) -> None:
    # No worker starts: the driver refuses each case (library missing here, else the cpu backend).
    out = tmp_path / "run"
    r = subprocess.run(
        [*BENCH, "run", "--variants", "full.sdpa", "--backends", "cpu", "--impls", "flash_attn,xformers",
         "--seq-lens", "64", "--dtypes", "float32", "--out", str(out), "--history", "off"],
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    recs = {x["impl"]: x for x in map(json.loads, (out / "cases.jsonl").read_text().splitlines())}
    assert set(recs) == {"flash_attn", "xformers"}
    for name, impl in (("flash_attn", FlashAttnImpl), ("xformers", XformersImpl)):
        assert recs[name]["status"] == "unsupported"
        missing = impl.availability()
        expected = f"implementation {name} is not available here: {missing}" if missing else "cuda backend only"
        assert expected in recs[name]["reason"]


# --- the band each library is asked for is the variant's pattern, exactly --------------------------------
def flash_rule(n: int, window: tuple[int, int] | None, causal: bool) -> torch.Tensor:
    """flash_attn_func's documented mask for seqlen_q = seqlen_k = n: query i sees keys
    i − left … i + right (−1: unbounded), causal bottom-right aligned (right = 0), as its
    C++ entry point settles them (a side at least n long is unbounded)."""
    left, right = window or (-1, -1)
    left, right = (-1 if left >= n else left), (-1 if right >= n else right)
    if causal:
        right = 0
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = torch.ones(n, n, dtype=torch.bool)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return allowed


def band_mask(band: bk.Band, n: int) -> torch.Tensor:
    """(n, n) bool: True where query i sees key j by the Band's rule (j within ±reach, j ≤ i when causal)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = torch.ones(n, n, dtype=torch.bool)
    if band.reach is not None:
        allowed &= (j >= i - band.reach) & (j <= i + band.reach)
    if band.causal:
        allowed &= j <= i
    return allowed


def xformers_rule(n: int, spec: tuple[str, dict[str, int]] | None) -> torch.Tensor:
    """xformers' documented masks (their `materialize`), n queries and n keys (shift 0)."""
    ones = torch.ones(n, n, dtype=torch.bool)
    if spec is None:
        return ones
    name, kw = spec
    if name == "LowerTriangularMask":
        return ones.tril()
    if name == "LocalAttentionFromBottomRightMask":
        return ones.triu(-kw["window_left"]).tril(kw["window_right"])
    assert name == "LowerTriangularFromBottomRightLocalAttentionMask"
    return ones.tril().triu(-kw["_window_size"] + 1)


def reference_mask(variant: str, params: dict[str, Any], n: int) -> torch.Tensor:
    cls, p, shape = setup(variant, params, n)
    mask = cls(p, shape).reference_mask(n)
    return torch.ones(n, n, dtype=torch.bool) if mask is None else mask


@pytest.mark.parametrize(("window", "causal"), BANDS)
def test_each_library_band_is_the_sliding_window_reference_mask(window: int, causal: bool) -> None:
    params = {"window": window, "causal": causal}
    cls, p, shape = setup("sparse.sliding_window", params, 8)
    band = bk.band_of(cls, p)
    core = fa.FlashAttnCore(cls(p, shape), band)
    for n in LENGTHS:
        expected = reference_mask("sparse.sliding_window", params, n)
        assert torch.equal(band_mask(band, n), expected), n
        assert torch.equal(flash_rule(n, core.window(), causal), expected), n
        assert torch.equal(xformers_rule(n, xf.bias_spec(band)), expected), n


@pytest.mark.parametrize(("variant", "params"), [s for s in SUPPORTED if s[0] != "sparse.sliding_window"])
def test_each_library_pattern_is_the_dense_reference_mask(variant: str, params: dict[str, Any]) -> None:
    cls, p, shape = setup(variant, params, 8)
    band = bk.band_of(cls, p)
    core = fa.FlashAttnCore(cls(p, shape), band)
    assert core.window() is None
    for n in LENGTHS:
        expected = reference_mask(variant, params, n)
        assert torch.equal(flash_rule(n, None, band.causal), expected)
        assert torch.equal(xformers_rule(n, xf.bias_spec(band)), expected)


@pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="xformers is not installed")
@pytest.mark.parametrize(("window", "causal"), BANDS)
def test_xformers_own_bias_materialises_the_reference_mask(window: int, causal: bool) -> None:
    if XformersImpl.availability():
        pytest.skip(XformersImpl.availability())
    params = {"window": window, "causal": causal}
    cls, p, _ = setup("sparse.sliding_window", params, 8)
    bias = xf.make_bias(bk.band_of(cls, p))
    for n in (64, 100, 129):
        allowed = bias.materialize((n, n), dtype=torch.float32).exp() > 0
        assert torch.equal(allowed, reference_mask("sparse.sliding_window", params, n)), n


# --- the plumbing, exact, with stand-ins that follow each library's documented semantics -------------
def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, n, h, d) in the libraries' layout; attention in float64 under `allowed` (n, n)."""
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhij,bjhd->bihd", probs, v.double()).to(q.dtype)


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """flash_attn_func and xformers.ops with their documented masks, computed densely; the
    modules' device checks passed (no CUDA here)."""
    calls: dict[str, list[dict[str, Any]]] = {"flash": [], "xformers": []}

    def flash_attn_func(q: Any, k: Any, v: Any, causal: bool = False, window_size: Any = (-1, -1)) -> Any:
        assert q.stride(-1) == 1  # views of (B, h, n, d): unit stride in d, as flash-attn needs
        calls["flash"].append({"shape": tuple(q.shape), "causal": causal, "window_size": window_size})
        return _dense(q, k, v, flash_rule(q.shape[1], window_size, causal))

    class _Bias:
        def __init__(self, *args: int) -> None:
            self.args = args

    class LowerTriangularMask(_Bias):
        spec = "LowerTriangularMask"

    class LocalAttentionFromBottomRightMask(_Bias):
        spec = "LocalAttentionFromBottomRightMask"

    class LowerTriangularFromBottomRightLocalAttentionMask(_Bias):
        spec = "LowerTriangularFromBottomRightLocalAttentionMask"

    keys = {
        "LocalAttentionFromBottomRightMask": ("window_left", "window_right"),
        "LowerTriangularFromBottomRightLocalAttentionMask": ("_window_size",),
        "LowerTriangularMask": (),
    }

    def memory_efficient_attention(q: Any, k: Any, v: Any, attn_bias: Any = None) -> Any:
        calls["xformers"].append({"shape": tuple(q.shape), "bias": attn_bias})
        spec = (
            None
            if attn_bias is None
            else (attn_bias.spec, dict(zip(keys[attn_bias.spec], attn_bias.args, strict=True)))
        )
        return _dense(q, k, v, xformers_rule(q.shape[1], spec))

    attn_bias = types.ModuleType("xformers.ops.fmha.attn_bias")
    for c in (LowerTriangularMask, LocalAttentionFromBottomRightMask, LowerTriangularFromBottomRightLocalAttentionMask):
        setattr(attn_bias, c.__name__, c)
    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.attn_bias = attn_bias  # type: ignore[attr-defined]
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    ops.fmha = fmha  # type: ignore[attr-defined]
    for name, module in (
        ("xformers.ops", ops),
        ("xformers.ops.fmha", fmha),
        ("xformers.ops.fmha.attn_bias", attn_bias),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(fa, "_library", lambda: fa._Library(flash_attn_func, "stand-in", True, None))
    monkeypatch.setattr(xf, "_library", lambda: xf._Library(ops, "stand-in", None))
    monkeypatch.setattr(fa.FlashAttnCore, "refusal", lambda self, q: None)
    monkeypatch.setattr(xf.XformersCore, "refusal", lambda self, q: None)
    return calls


@pytest.mark.parametrize("n", [64, 100])
@pytest.mark.parametrize(("variant", "params"), SUPPORTED, ids=IDS)
@pytest.mark.parametrize("impl", KERNEL_IMPLS, ids=lambda i: i.name)
def test_the_call_computes_the_reference_exactly(
    stand_ins: dict, impl: type, variant: str, params: dict[str, Any], n: int
) -> None:
    cls, p, shape = setup(variant, params, n, h=3, d=8)
    module = impl.build(cls, p, shape, "core")
    q, k, v = qkv(shape)
    with torch.no_grad():
        got = module(q, k, v)
    assert got.shape == q.shape
    assert (got - cls(p, shape).reference(q, k, v)).abs().max().item() < 1e-12
    metrics = impl.case_metrics(module)
    if impl is FlashAttnImpl:
        (call,) = stand_ins["flash"]
        assert call["shape"] == (1, n, 3, 8)  # (B, n, h, d)
        assert metrics["kernel"] == "flash_attn.flash_attn_func" and metrics["causal"] == p.causal
        reach = p.window // 2 if variant == "sparse.sliding_window" else None
        assert metrics["window_size"] == (None if reach is None else [reach, 0 if p.causal else reach])
    else:
        (call,) = stand_ins["xformers"]
        assert call["shape"] == (1, n, 3, 8)
        assert metrics["kernel"] == "xformers.ops.memory_efficient_attention"
        assert metrics["attn_bias"] == xf.describe_bias(bk.band_of(cls, p))


@pytest.mark.parametrize("impl", KERNEL_IMPLS, ids=lambda i: i.name)
def test_layer_scope_equals_the_native_layer(stand_ins: dict, impl: type) -> None:
    cls, p, shape = setup("sparse.sliding_window", {"window": 16, "causal": True}, 100, h=2, d=8)
    torch.manual_seed(3)
    layer = impl.build(cls, p, shape, "layer").double()
    torch.manual_seed(3)
    native = cls.build(p, shape, "layer").double()
    x = torch.randn(1, 100, shape.model_dim, dtype=torch.float64)
    with torch.no_grad():
        assert (layer(x) - native(x)).abs().max().item() < 1e-12
    assert isinstance(layer.attention, bk.BnhdAttention)


def test_xformers_turns_its_no_kernel_error_into_one_unsupported_line(
    stand_ins: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_kernel(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n"
                                  "     query : shape=(1, 64, 2, 8)\n`cutlassF` is not supported because:\n"
                                  "    bf16 is only supported on A100+ GPUs")  # fmt: skip

    monkeypatch.setattr(sys.modules["xformers.ops"], "memory_efficient_attention", no_kernel)
    cls, p, shape = setup("full.sdpa", {}, 64)
    with pytest.raises(Unsupported) as caught:
        XformersImpl.build(cls, p, shape, "core")(*qkv(shape))
    assert str(caught.value).startswith("xformers has no kernel for this case: No operator found for ")
    assert "\n" not in str(caught.value) and "A100+" in str(caught.value)


def test_peak_estimate_is_linear_in_n_and_far_below_a_dense_mask() -> None:
    cls, p, _ = setup("sparse.sliding_window", {"window": 512}, 8)
    for impl in KERNEL_IMPLS:
        at = {n: impl.peak_estimate(cls, p, Shape(1, 8, 64, n), "core", 2, "forward") for n in (4096, 8192)}
        assert at[8192] == 2 * at[4096]  # O(n): no (n, n) term
        masked = MaskedSdpaImpl.peak_estimate(cls, p, Shape(1, 8, 64, 8192), "core", 2, "forward")
        assert at[8192] * 20 < masked
        shape = Shape(1, 8, 64, 4096)
        assert impl.peak_estimate(cls, p, shape, "core", 2, "train") > at[4096]
        assert impl.peak_estimate(cls, p, shape, "layer", 2, "forward") > at[4096]
    odd = Shape(1, 8, 60, 4096)  # flash-attn pads q, k, v to a head size that is a multiple of 8
    assert FlashAttnImpl.peak_estimate(cls, p, odd, "core", 2, "forward") > XformersImpl.peak_estimate(
        cls, p, odd, "core", 2, "forward"
    )


def test_both_are_registered() -> None:
    assert IMPLS["flash_attn"] is FlashAttnImpl and IMPLS["xformers"] is XformersImpl


# --- on a GPU, with the library installed ------------------------------------------------------------------
def needs(impl: type) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with a CUDA build of torch")
    missing = impl.availability()
    if missing:
        pytest.skip(f"{impl.name}: {missing}")


GPU_DTYPES = {FlashAttnImpl: ("bfloat16", "float16"), XformersImpl: ("bfloat16", "float16", "float32")}


@pytest.mark.gpu
@pytest.mark.parametrize("n", [256, 1031])  # a multiple of the window (64), and not
@pytest.mark.parametrize(("variant", "params"), SUPPORTED, ids=IDS)
@pytest.mark.parametrize("impl", KERNEL_IMPLS, ids=lambda i: i.name)
def test_cuda_matches_the_float64_reference(impl: type, variant: str, params: dict[str, Any], n: int) -> None:
    needs(impl)
    cls, p, shape = setup(variant, params, n, h=2, d=64)
    for dtype_name in GPU_DTYPES[impl]:
        if impl.supports_dtype(cls, p, dtype_name):
            continue
        dtype = getattr(torch, dtype_name)
        module = impl.build(cls, p, shape, "core").cuda()
        q, k, v = (t.to(dtype) for t in qkv(shape))  # rounded first, as the worker does
        with torch.no_grad():
            got = module(q.cuda(), k.cuda(), v.cuda())
        expected = cls(p, shape).reference(q.double(), k.double(), v.double())
        err = (got.double().cpu() - expected).abs().max().item()
        assert err <= VERIFY_TOLERANCE[dtype_name], (dtype_name, err)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", KERNEL_IMPLS, ids=lambda i: i.name)
def test_cuda_gradients_match_the_float64_reference(impl: type) -> None:
    needs(impl)
    cls, p, shape = setup("sparse.sliding_window", {"window": 64, "causal": True}, 1031, h=2, d=64)
    module = impl.build(cls, p, shape, "core").cuda()
    q, k, v = (t.half() for t in qkv(shape))
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [t.cuda().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(module(*leaves), leaves, grad_out.half().cuda())
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    expected = torch.autograd.grad(cls(p, shape).reference(*ref_leaves), ref_leaves, grad_out)
    for g, e in zip(got, expected, strict=True):
        assert (g.double().cpu() - e).norm() / e.norm() < 1e-2


@pytest.mark.gpu
def test_bench_run_sweeps_both_on_cuda(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with a CUDA build of torch")
    present = [impl for impl in KERNEL_IMPLS if impl.availability() is None]
    if not present:
        pytest.skip(f"neither library is installed: {FlashAttnImpl.availability()}; {XformersImpl.availability()}")
    out = tmp_path / "run"
    r = subprocess.run(
        [*BENCH, "run", "--impls", "flash_attn,xformers", "--backends", "cuda", "--dtypes", "bfloat16",
         "--variants", "full.sdpa,sparse.sliding_window,sparse.bigbird", "--seq-lens", "1031",
         "--param", "sparse.sliding_window.window=64", "--param", "sparse.bigbird.attention=block_sparse",
         "--heads", "4", "--head-dim", "64", "--max-time-per-case", "0.2", "--out", str(out), "--history", "off"],
        capture_output=True, text=True, env=cli_env(), timeout=400,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert {x["impl"] for x in recs} == {"flash_attn", "xformers"}
    for x in recs:
        impl = IMPLS[x["impl"]]
        if impl.availability():
            assert x["status"] == "unsupported" and "is not available here" in x["reason"]
        elif x["variant"] == "sparse.bigbird":
            assert x["status"] == "unsupported" and "random blocks" in x["reason"]
        else:
            assert x["status"] == "ok", (x["impl"], x["variant"], x["reason"])
            assert x["verification"]["verified"] is True
            assert x["workload_metrics"]["kernel"].startswith(("flash_attn.", "xformers."))
            # O(n): the output is 0.5 MiB; the (n, n) float32 scores of 4 heads would be 16 MiB.
            assert x["peak_memory_bytes"] < 8 * 2**20


def test_the_driver_refuses_a_dtype_the_kernel_cannot_take(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if both libraries were installed: the dtype is refused before any worker starts.
    for impl in (FlashAttnImpl, XformersImpl):
        monkeypatch.setattr(impl, "availability", classmethod(lambda cls: None))
    flash = impl_refusal(make_case("full.sdpa", "flash_attn", dtype="float32"))
    assert flash is not None and flash.startswith("flash_attn: ") and "\n" not in flash
    assert flash == f"flash_attn: {fa.flash_dtype_refusal('float32')}"
    assert impl_refusal(make_case("full.sdpa", "flash_attn", dtype="bfloat16")) is None
    band = impl_refusal(make_case("sparse.sliding_window", "xformers", dtype="float32", window=64))
    assert band is not None and band.startswith("xformers: ")
    assert impl_refusal(make_case("sparse.sliding_window", "xformers", dtype="float16", window=64)) is None
