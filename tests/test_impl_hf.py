"""The `hf` implementation (attnbench.workloads.impls.hf): the Hugging Face layers of the three
sparse designs, checked against dense float64 references of their own patterns."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from attnbench.core.cases import Case
from attnbench.core.errors import Unsupported
from attnbench.core.registry import get_backend, get_impl, get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.build import impl_refusal
from attnbench.engine.worker import verify
from attnbench.workloads.impls import hf
from attnbench.workloads.impls.hf import HFCheck, HFImpl, HFLayer
from attnbench.workloads.shape import Shape
from tests.conftest import BENCH, cli_env

load_plugins()
needs_transformers = pytest.mark.skipif(hf.transformers_version() is None, reason="transformers is not installed")

SMALL = {  # parameters small enough for a dense check of a few blocks
    "sparse.sliding_window": {"window": 16, "global_tokens": 3},
    "sparse.bigbird": {"block": 16, "random_blocks": 2},
    "sparse.lsh": {"chunk": 16, "hashes": 2},
}


def params_of(variant: str, n: int, **extra: Any) -> Any:
    cls = get_workload(variant)
    values = cls.resolve_params({**cls.default_params(), **SMALL[variant], **extra}, Shape(1, 2, 16, n))
    return cls.make_params(values)


def check(variant: str, n: int, dtype: torch.dtype, **extra: Any) -> tuple[float, HFCheck]:
    """The max abs error of the HF module against its own float64 reference, as the worker checks."""
    cls = get_workload(variant)
    shape = Shape(1, 2, 16, n)
    params = params_of(variant, n, **extra)
    torch.manual_seed(0)
    module = HFImpl.verify_module(cls, params, shape)
    assert isinstance(module, HFCheck)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (t.to(dtype) for t in cls.make_inputs(shape, "core", torch.float64, torch.device("cpu"), gen))
    expected = HFImpl.verify_reference(module, cls(params, shape), *(t.double() for t in (q, k, v)))
    with torch.no_grad():
        got = module.to(dtype)(q, k, v)
    assert got.shape == expected.shape == (1, 2, n, 16)
    return (got.double() - expected).abs().max().item(), module


# Longformer's softmax is float32 whatever its input, so it is checked in float32; the others in float64.
@needs_transformers
@pytest.mark.parametrize(
    ("variant", "n", "dtype", "tol", "extra"),
    [
        ("sparse.sliding_window", 64, torch.float32, 1e-5, {}),  # a multiple of the window
        ("sparse.sliding_window", 61, torch.float32, 1e-5, {}),  # padded to 64, as LongformerModel pads
        ("sparse.sliding_window", 61, torch.float32, 1e-5, {"global_tokens": 0}),
        ("sparse.bigbird", 256, torch.float64, 1e-9, {}),  # a multiple of the block
        ("sparse.bigbird", 250, torch.float64, 1e-9, {}),  # padded to 256, as BigBirdModel pads
        ("sparse.lsh", 256, torch.float64, 1e-9, {}),  # a multiple of the chunk
        ("sparse.lsh", 250, torch.float64, 1e-9, {"hashes": 3}),  # padded: padding in HF's extra bucket
        ("sparse.lsh", 250, torch.float64, 1e-9, {"causal": True}),
        ("sparse.lsh", 256, torch.float64, 1e-9, {"buckets": 32, "bucket_factor": 4}),  # factorised: [4, 8]
        ("sparse.lsh", 12, torch.float64, 1e-9, {}),  # one chunk: HF's plain self-attention
    ],
)
def test_each_layer_matches_the_dense_reference_of_its_own_pattern(
    variant: str, n: int, dtype: torch.dtype, tol: float, extra: dict[str, Any]
) -> None:
    err, module = check(variant, n, dtype, **extra)
    assert err < tol, f"{variant} n={n}: {err}"
    assert module.hf_attention.padded_len == -(-n // module.hf_attention.multiple()) * module.hf_attention.multiple()


@needs_transformers
def test_bigbird_reference_uses_the_random_blocks_hf_drew() -> None:
    _, module = check("sparse.bigbird", 256, torch.float64)
    attention = module.hf_attention
    drawn = attention.rand_attn[0]  # (h, nb − 2, r): HF's numpy draw in training mode
    assert drawn.shape == (2, 14, 2) and bool((drawn > 0).all())  # in eval() HF would give all zeros
    assert not torch.equal(drawn[0], drawn[1])  # per head
    # The same layout every call (numpy is reseeded with `seed`), so the reference read off one
    # call holds for the next.
    x = torch.randn(1, 256, 32, dtype=torch.float64)
    attention(x)
    assert torch.equal(attention.rand_attn[0], drawn)
    # A wrong layout is caught: eval()'s all-zero draw gives another output.
    counts = attention.block_counts(16)
    attention.rand_attn = torch.zeros_like(attention.rand_attn)
    assert not torch.equal(attention.block_counts(16), counts)


@needs_transformers
def test_the_check_runs_through_the_worker_and_is_recorded() -> None:
    case = Case(
        "sparse.lsh", tuple(sorted(asdict(params_of("sparse.lsh", 1031)).items())), "layer", "cpu", "float32",
        "forward", 1, 2, 16, 1031, impl="hf",
    )  # fmt: skip
    cls = get_workload("sparse.lsh")
    backend = get_backend("cpu")(RunSettings().options_for("cpu"))
    got = verify(cls, cls.make_params(case.params_dict), case, backend, 1031)
    assert got["verified"] is True and got["seq_len"] == 1031 and got["max_abs_err"] < 1e-6


@needs_transformers
@pytest.mark.parametrize("variant", list(SMALL))
def test_the_layer_keeps_the_native_norm_projection_and_ffn(variant: str) -> None:
    cls = get_workload(variant)
    shape = Shape(2, 2, 16, 200)  # BigBird's block-sparse layer needs n > (5 + 2r)·b = 144
    params = params_of(variant, 200)
    torch.manual_seed(3)
    layer = HFImpl.build(cls, params, shape, "layer")
    torch.manual_seed(3)
    native = cls.build(params, shape, "layer")
    native = getattr(native, "layer", native)  # Longformer with global tokens: LongformerLayer
    assert isinstance(layer, HFLayer)
    for name in ("norm1", "proj", "norm2", "ffn"):
        ours, theirs = getattr(layer, name).state_dict(), getattr(native, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert not hasattr(layer, "qkv")  # the HF module projects Q, K and V itself
    x = torch.randn(2, 200, 32)
    with torch.no_grad():
        assert layer(x).shape == x.shape
    metrics = HFImpl.case_metrics(layer)
    assert metrics["hf_padded_len"] == 208  # 200 padded to a multiple of 16 (window, block, chunk)
    assert metrics["hf_pattern"] and metrics["transformers"] == hf.transformers_version()


def test_refusals_say_why() -> None:
    def reason(variant: str, scope: str = "layer", backend: str = "cpu", n: int = 256, **extra: Any) -> str | None:
        cls = get_workload(variant)
        values = cls.resolve_params({**cls.default_params(), **extra}, Shape(1, 2, 16, n))
        return HFImpl.supports(cls, cls.make_params(values), scope, backend)

    assert "layer scope only" in reason("sparse.lsh", scope="core")
    assert "LongformerSelfAttention projects Q, K and V" in reason("sparse.sliding_window", scope="core")
    assert "no layer of full.sdpa" in reason("full.sdpa")
    assert "no dilation" in reason("sparse.sliding_window", dilation=2)
    assert "no causal form" in reason("sparse.sliding_window", causal=True)
    assert "no causal form" in reason("sparse.bigbird", n=1024, causal=True)
    # Below (5 + 2r)·b the design runs full attention, as HF's BigBirdModel does.
    assert "full attention" in reason("sparse.bigbird", n=256) and "704" in reason("sparse.bigbird", n=256)
    assert reason("sparse.bigbird", n=1024) is None
    assert reason("sparse.lsh", causal=True) is None
    assert "exported ONNX graph" in reason("sparse.lsh", backend="onnxruntime")
    assert "torch-xla" in reason("sparse.lsh", backend="xla")
    with pytest.raises(Unsupported, match="layer scope only"):
        HFImpl.build(get_workload("sparse.lsh"), params_of("sparse.lsh", 256), Shape(1, 2, 16, 256), "core")


def test_the_driver_refuses_longformer_in_float64_before_any_worker() -> None:
    cls = get_workload("sparse.sliding_window")
    params = params_of("sparse.sliding_window", 64)
    assert HFImpl.supports_dtype(cls, params, "float64") == hf.LONGFORMER_FLOAT64
    assert HFImpl.supports_dtype(cls, params, "float32") is None
    assert HFImpl.supports_dtype(get_workload("sparse.lsh"), params_of("sparse.lsh", 256), "float64") is None


@needs_transformers
def test_longformer_refuses_float64_when_it_runs() -> None:
    cls = get_workload("sparse.sliding_window")
    params = params_of("sparse.sliding_window", 64)
    module = HFImpl.verify_module(cls, params, Shape(1, 2, 16, 64)).double()
    q = torch.randn(1, 2, 64, 16, dtype=torch.float64)
    with pytest.raises(Unsupported, match="softmax in float32"):
        module(q, q, q)


def test_missing_transformers_is_a_reason_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    assert hf.transformers_version() is None
    reason = HFImpl.availability()
    assert reason and "pip install 'attnbench[hf]'" in reason and "\n" not in reason
    case = Case("sparse.lsh", (("chunk", 16),), "layer", "cpu", "float32", "forward", 1, 2, 16, 256, impl="hf")
    assert impl_refusal(case) == f"implementation hf is not available here: {reason}"
    monkeypatch.setattr(hf, "transformers_version", lambda: "4.39.3")
    assert "older than 4.40" in HFImpl.availability()


def test_the_module_imports_without_transformers() -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from attnbench.core.registry import get_impl, load_plugins\n"
        "load_plugins(); print(get_impl('hf').availability())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=cli_env()
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'attnbench[hf]'" in proc.stdout
    assert get_impl("hf") is HFImpl


@needs_transformers
def test_peak_estimate_adds_hf_scores_to_the_native_estimate() -> None:
    cls = get_workload("sparse.lsh")
    shape = Shape(1, 8, 64, 8192)
    params = params_of("sparse.lsh", 8192, chunk=64)
    native = cls.case_peak_estimate(params, shape, "layer", 4, "forward")
    assert HFImpl.peak_estimate(cls, params, shape, "layer", 4, "forward") > native + 4 * 2 * 8192 * 128 * 8 * 4
    assert HFImpl.peak_estimate(get_workload("full.sdpa"), None, shape, "layer", 4, "forward") is None


@needs_transformers
@pytest.mark.slow  # three workers through the CLI: about 40 s on 2 busy cores
def test_bench_run_times_the_three_hf_layers(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *BENCH, "run", "--variants", "sparse.sliding_window,sparse.bigbird,sparse.lsh", "--impls", "hf",
            "--scope", "core,layer", "--seq-lens", "256", "--heads", "2", "--head-dim", "16",
            "--param", "sparse.sliding_window.window=64", "--param", "sparse.sliding_window.global_tokens=2",
            "--param", "sparse.bigbird.block=16", "--param", "sparse.lsh.chunk=32",
            "--max-time-per-case", "0.2", "--history", "off", "--no-calibrate", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=300, env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    by_scope = {(r["variant"], r["scope"]): r for r in records}
    for variant in SMALL:
        core, layer = by_scope[(variant, "core")], by_scope[(variant, "layer")]
        assert core["status"] == "unsupported" and "layer scope only" in core["reason"]
        assert layer["status"] == "ok" and layer["impl"] == "hf", layer.get("reason")
        assert layer["verification"]["verified"] is True
        assert layer["workload_metrics"]["hf_pattern"] and layer["workload_metrics"]["hf_padded_len"] == 256
