"""Longformer and Reformer attention through ONNX Runtime: the exported graphs are right at every length.

`sparse.sliding_window` and `sparse.lsh` export through their export path (`_forward_export`,
taken under `torch.compiler.is_exporting()`). Each graph is exported once, at a small shape,
then checked by the backend itself (its export check: the session against torch eager at the
export length and one below it) and here against the variant's float64 definition at a length
that is a multiple of the window or chunk and one that is not, and at lengths the export
never saw (shorter than one block, fewer tokens than global tokens). The graph must keep the
banded / chunked structure: no tensor in it has two dimensions that grow with the length.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from attnbench.backends.onnxruntime import OnnxRuntimeBackend, seq_axis
from attnbench.core.cases import Case
from attnbench.core.registry import get_workload
from attnbench.workloads.base import Shape
from tests.conftest import BENCH, cli_env

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

B, H, D = 1, 2, 16

# (variant, parameters, export length, lengths checked against float64: a multiple of the
# window (sliding window: W = 16, blocks of 8 per subsequence) or of the chunk, and one that is not)
CONFIGS = {
    "sliding_window_globals_dilation_causal": (
        "sparse.sliding_window",
        {"window": 16, "global_tokens": 3, "dilation": 2, "causal": True},
        64,
        (64, 45),
    ),
    "lsh": ("sparse.lsh", {"chunk": 16, "hashes": 2}, 64, (64, 57)),
    "sliding_window": ("sparse.sliding_window", {"window": 16}, 64, (64, 61)),
    "sliding_window_globals": ("sparse.sliding_window", {"window": 16, "global_tokens": 4}, 48, (48, 37)),
    "lsh_causal_three_rounds": ("sparse.lsh", {"chunk": 16, "hashes": 3, "causal": True}, 64, (64, 50)),
}
# An export takes seconds: the first two run by default, the rest with the slow tests.
KEYS = [k if i < 2 else pytest.param(k, marks=pytest.mark.slow) for i, k in enumerate(CONFIGS)]
# Lengths no export saw: under one block / chunk, fewer tokens than global tokens, many blocks.
OTHER_LENGTHS = (2, 3, 9, 17, 200)


def _case(variant: str, params: dict[str, Any], n: int, scope: str = "core") -> Case:
    return Case(variant, tuple(sorted(params.items())), scope, "onnxruntime", "float32", "forward", B, H, D, n)


def _inputs(n: int, seed: int, scope: str = "core") -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    if scope == "layer":
        return (torch.randn(B, n, H * D, generator=gen),)
    return tuple(torch.randn(B, H, n, D, generator=gen) for _ in range(3))


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Each configuration exported once, when a test first asks for it: its module, session
    and the backend's details."""
    cache = str(tmp_path_factory.mktemp("ort_cache"))
    done: dict[str, dict[str, Any]] = {}

    def get(key: str) -> dict[str, Any]:
        if key not in done:
            variant, params, n, _ = CONFIGS[key]
            cls = get_workload(variant)
            shape = Shape(B, H, D, n)
            resolved = cls.resolve_params(params, shape)
            case = _case(variant, resolved, n)
            backend = OnnxRuntimeBackend()
            backend.setup(case)
            module = cls.build(cls.make_params(resolved), shape, "core").eval()
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("ATTNBENCH_CACHE_DIR", cache)
                session = backend.session(module, _inputs(n, 0), case)
            done[key] = {"module": module, "session": session, "backend": backend, "details": backend.details()}
        return done[key]

    return get


@pytest.mark.parametrize("key", KEYS)
def test_the_backends_own_export_check_passes(exports: Any, key: str) -> None:
    _, _, n, _ = CONFIGS[key]
    check = exports(key)["details"]["export_check"]
    assert [c["seq_len"] for c in check["lengths"]] == [n, n - 1]
    assert all(c["max_abs_err"] <= 1e-5 for c in check["lengths"]), check


@pytest.mark.parametrize("key", KEYS)
def test_the_session_matches_the_float64_definition(exports: Any, key: str) -> None:
    _, _, _, lengths = CONFIGS[key]
    e = exports(key)
    module, backend, session = e["module"], e["backend"], e["session"]
    for seed, n in enumerate(lengths):
        q, k, v = _inputs(n, seed + 1)
        got = backend._run(session, (q, k, v)).double()
        expected = module.reference(q.double(), k.double(), v.double())
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-5, f"n={n}"


@pytest.mark.parametrize("key", KEYS)
def test_the_graph_runs_at_lengths_it_never_saw(exports: Any, key: str) -> None:
    e = exports(key)
    module, backend, session = e["module"], e["backend"], e["session"]
    for n in OTHER_LENGTHS:
        xs = _inputs(n, n)
        with torch.no_grad():
            expected = module(*xs)  # the native eager path
        got = backend._run(session, xs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"n={n}")


@pytest.mark.parametrize("key", KEYS)
def test_no_tensor_of_the_graph_grows_with_the_length_twice(exports: Any, key: str) -> None:
    """Banded / chunked structure kept: no (n, n) scores, nor any n·n-sized intermediate."""
    import onnx

    model = onnx.load(exports(key)["details"]["onnx_file"])
    shapes = [
        [d.dim_param for d in vi.type.tensor_type.shape.dim if d.dim_param]
        for vi in [*model.graph.value_info, *model.graph.output]
    ]
    assert any(shapes), "the exporter recorded no symbolic shapes to check"
    growing = [s for s in shapes if sum("seq_len" in dim for dim in s) > 1]
    assert not growing, growing
    assert not [dim for s in shapes for dim in s if "seq_len**" in dim or "seq_len*seq_len" in dim]


@pytest.mark.slow
def test_the_longformer_layer_with_global_projections_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer scope with global tokens (Longformer's own Q_g, K_g, V_g) exports too."""
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path))
    cls = get_workload("sparse.sliding_window")
    params = {"window": 16, "global_tokens": 3, "dilation": 1, "causal": False}
    n = 40
    case = _case("sparse.sliding_window", params, n, scope="layer")
    backend = OnnxRuntimeBackend()
    backend.setup(case)
    torch.manual_seed(0)
    module = cls.build(cls.make_params(params), Shape(B, H, D, n), "layer").eval()
    inputs = _inputs(n, 0, "layer")
    assert seq_axis(inputs[0]) == 1
    session = backend.session(module, inputs, case)
    assert all(c["max_abs_err"] <= 1e-5 for c in backend.details()["export_check"]["lengths"])
    for length in (2, 33):  # fewer tokens than global tokens, and a length it was not exported at
        x = _inputs(length, length, "layer")
        with torch.no_grad():
            torch.testing.assert_close(backend._run(session, x), module(*x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bench_run_times_both_variants_verified_at_two_lengths(tmp_path: Path) -> None:
    """End to end: `bench run` on onnxruntime, at a multiple of the window and the chunk (64)
    and a length that is not (61): ok, verified against float64 and by the export check."""
    out = tmp_path / "run"
    r = subprocess.run(
        [
            *BENCH,
            *("run", "--variants", "sparse.sliding_window,sparse.lsh", "--backends", "onnxruntime"),
            *("--seq-lens", "64,61", "--batch", "1", "--heads", "2", "--head-dim", "16"),
            *("--param", "sparse.sliding_window.window=16", "--param", "sparse.sliding_window.global_tokens=2"),
            *("--param", "sparse.sliding_window.dilation=2", "--param", "sparse.sliding_window.causal=true"),
            *("--param", "sparse.lsh.chunk=16", "--max-time-per-case", "0.1", "--history", "off"),
            *("--out", str(out)),
        ],
        capture_output=True,
        text=True,
        env=cli_env(ATTNBENCH_CACHE_DIR=str(tmp_path / "cache")),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    seen = {(rec["variant"], rec["seq_len"]) for rec in records}
    assert seen == {(v, n) for v in ("sparse.sliding_window", "sparse.lsh") for n in (64, 61)}
    for rec in records:
        assert rec["status"] == "ok", (rec["variant"], rec["seq_len"], rec["reason"])
        assert rec["verification"]["verified"] is True
        lengths = [c["seq_len"] for c in rec["backend_details"]["export_check"]["lengths"]]
        assert lengths == [rec["seq_len"], rec["seq_len"] - 1 if rec["seq_len"] % 2 == 0 else rec["seq_len"] - 2]
        assert rec["time_s"]["median"] > 0
