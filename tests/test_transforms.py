"""Transforms: the axis and its ids, each transform's fidelity bound, and records that say what ran."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

import attnbench.engine.transforms as T
from attnbench.core.cases import Case, Sweep
from attnbench.core.errors import UserError
from attnbench.core.registry import get_workload
from attnbench.core.results import load_run
from attnbench.core.settings import RunSettings
from attnbench.engine.expand import expand
from attnbench.engine.kernels import ATTENTION_MARKERS as MARKERS
from attnbench.engine.suites import Overrides, load_suite, parse_suite, resolve
from attnbench.engine.transforms import distill, heads, prune_24, torch_compile
from attnbench.report.transforms_figure import tradeoff_figure, tradeoff_points
from attnbench.workloads.base import Shape
from tests.conftest import BENCH, cli_env

SDPA = (("causal", True),)
WINDOW = (("causal", True), ("dilation", 1), ("global_tokens", 0), ("window", 512))


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """Tiny shapes on a shared 2-core machine: one thread avoids OpenMP barrier stalls (40x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def case(transform: str, variant: str = "full.sdpa", scope: str = "layer", **kw: object) -> Case:
    params = tuple(sorted(get_workload(variant).default_params().items()))
    base = Case(variant, params, scope, "cpu", "float32", "forward", 1, 4, 16, 64, 1, transform)
    return dataclasses.replace(base, **kw)


def built(c: Case) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The case's module and inputs, exactly as the worker builds them (seed 0)."""
    cls = get_workload(c.variant)
    shape = Shape(c.batch, c.heads, c.head_dim, c.seq_len)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    module = cls.build(cls.make_params(c.params_dict), shape, c.scope)
    return module, cls.make_inputs(shape, c.scope, torch.float32, torch.device("cpu"), gen)


def applied_fidelity(c: Case) -> tuple[T.Applied, dict]:
    module, inputs = built(c)
    applied = T.apply_transform(c, module, inputs, 0)
    applied.module.requires_grad_(False)  # as the forward step does
    return applied, applied.finish(inputs)


# --- the axis and the ids ----------------------------------------------------------------


def test_none_keeps_every_existing_case_id() -> None:
    # Ids computed with cases.py as it was before transforms existed.
    assert Case("full.sdpa", SDPA, "layer", "cpu", "float32", "forward", 1, 8, 64, 1024).case_id == (
        "full.sdpa-cpu-n1024-7b49143e98"
    )
    old = Case("sparse.sliding_window", WINDOW, "core", "cpu", "float32", "forward", 1, 8, 64, 1024, 2)
    assert old.case_id == "sparse.sliding_window-cpu-n1024-b3f574862c"
    assert "transform" not in old.identity()


def test_a_transform_is_part_of_the_id_and_the_curve() -> None:
    ids = {case(t).case_id for t in T.TRANSFORMS}
    assert len(ids) == len(T.TRANSFORMS)
    assert case("int8").identity()["transform"] == "int8"
    assert case("int8").group_key() != case("none").group_key()
    assert "+int8" in case("int8").label() and "+" not in case("none").label()


def test_sweep_expands_transforms_and_reads_old_runs() -> None:
    sweep = Sweep(("full.sdpa",), ("cpu",), (64, 128), scopes=("layer",), transforms=("none", "int8"))
    cases = expand(sweep)
    assert sorted((c.transform, c.seq_len) for c in cases) == [("int8", 64), ("int8", 128), ("none", 64), ("none", 128)]
    old = {k: v for k, v in sweep.to_json().items() if k != "transforms"}
    assert Sweep.from_json(old).transforms == ("none",)
    assert Sweep.from_json(json.loads(json.dumps(sweep.to_json()))) == sweep


def test_suite_and_flag_select_transforms() -> None:
    spec = parse_suite(
        '[sweep]\nvariants = ["full.sdpa"]\nseq_lens = [64]\nscopes = ["layer"]\n'
        'transforms = ["none", "prune_heads"]\n',
        "t",
        "t.toml",
    )
    assert resolve(spec, Overrides())[0].transforms == ("none", "prune_heads")
    assert resolve(spec, Overrides(transforms=["int8"]))[0].transforms == ("int8",)
    assert resolve(load_suite("smoke"), Overrides())[0].transforms == ("none",)
    with pytest.raises(UserError, match="unknown transform 'int4'; choose from none, compile"):
        resolve(spec, Overrides(transforms=["none", "int4"]))


def test_bad_transform_flag_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from attnbench.cli.main import main

    assert main(["run", "--suite", "smoke", "--transforms", "quantize", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown transform 'quantize'" in err


# --- each transform's fidelity bound and details -------------------------------------------


@pytest.mark.parametrize("scope", ["core", "layer"])
@pytest.mark.parametrize("name", ["autocast_bf16", "autocast_fp16"])
def test_autocast_within_tolerance(name: str, scope: str) -> None:
    applied, out = applied_fidelity(case(name, "sparse.sliding_window", scope))
    fid = out["fidelity"]
    assert fid["within"], fid
    assert 0 < fid["rel_err"] <= applied.tolerance.rel_err
    assert out["transform"] == name
    assert out["transform_details"]["autocast_dtype"] == ("bfloat16" if name.endswith("bf16") else "float16")
    if scope == "layer":  # what actually ran: the projections in the low dtype
        seen: list[torch.dtype] = []
        applied.module.inner.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        applied.module(*built(case(name, "sparse.sliding_window", scope))[1])
        assert seen == [torch.bfloat16 if name.endswith("bf16") else torch.float16]


def test_int8_quantises_every_linear_layer() -> None:
    applied, out = applied_fidelity(case("int8"))
    assert out["fidelity"]["within"], out["fidelity"]
    assert out["fidelity"]["rel_err"] > 1e-4  # really quantised, not the float model
    details = out["transform_details"]
    assert details["quantised_layers"] == ["qkv", "proj", "ffn.0", "ffn.2"]
    kinds = {type(m).__name__ for m in applied.module.modules()}
    assert "Linear" in kinds and not any(isinstance(m, torch.nn.Linear) for m in applied.module.modules())
    assert details["weight_bytes_after"] < 0.35 * details["weight_bytes_before"]
    assert details["engine"] == torch.backends.quantized.engine


def test_prune_heads_removes_the_least_important_quarter() -> None:
    c = case("prune_heads", heads=8)
    module, _ = built(c)
    with torch.no_grad():  # make head 5 clearly the least important by the stated criterion
        module.proj.weight[:, 5 * 16 : 6 * 16] *= 0.01
        module.proj.weight[:, 2 * 16 : 3 * 16] *= 0.1
    scores = heads.head_importance(module)
    assert scores.index(min(scores)) == 5
    applied, out = applied_fidelity(c)
    details = out["transform_details"]
    assert (details["heads_before"], details["heads_after"]) == (8, 6)
    assert applied.module.qkv.out_features == 3 * 6 * 16 and applied.module.proj.in_features == 6 * 16
    assert out["fidelity"]["within"], out["fidelity"]
    keep, _ = heads.heads_to_keep(module, 0.25)
    assert keep == [0, 1, 3, 4, 6, 7]


def test_pruned_layer_with_every_head_kept_is_the_layer() -> None:
    module, (x,) = built(case("prune_heads"))
    same = heads.make_pruned_layer(module, list(range(4)))
    torch.testing.assert_close(same(x), module(x), rtol=1e-5, atol=1e-5)


def test_distill_trains_a_smaller_student() -> None:
    applied, out = applied_fidelity(case("distill", "sparse.sliding_window"))
    d = out["transform_details"]
    assert d["steps"] == distill.DISTILL_STEPS and d["kept_heads"] and len(d["kept_heads"]) == 2
    assert d["val_loss_after"] < d["val_loss_before"]  # training helped on held-out data
    assert d["weight_bytes_after"] < d["weight_bytes_before"]
    assert type(applied.module.attention).name == "sparse.sliding_window"
    assert out["fidelity"]["within"], out["fidelity"]


def test_two_four_mask_and_cpu_refusal() -> None:
    w = torch.randn(8, 16)
    mask = prune_24.mask_2to4(w)
    assert (mask.reshape(8, 4, 4).sum(-1) == 2).all()
    kept = (w.abs() * mask).reshape(8, 4, 4)
    dropped = (w.abs() * ~mask).reshape(8, 4, 4)
    assert (kept.max(-1).values >= dropped.max(-1).values).all()
    module, inputs = built(case("prune_24"))
    with pytest.raises(T.TransformUnsupported, match="need CUDA"):
        T.apply_transform(case("prune_24"), module, inputs, 0)


@pytest.mark.gpu
def test_two_four_on_cuda_within_tolerance() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA device of compute capability 8.0+")
    c = dataclasses.replace(case("prune_24", heads=8, head_dim=64, seq_len=256), backend="cuda", dtype="float16")
    module, inputs = built(c)
    applied = T.apply_transform(c, module, tuple(t.cuda().half() for t in inputs), 0)
    out = applied.finish(tuple(t.cuda().half() for t in inputs))
    assert out["fidelity"]["within"], out["fidelity"]


@pytest.mark.parametrize(
    ("transform", "kw", "reason"),
    [
        ("int8", {"scope": "core"}, "no linear layers"),
        ("int8", {"mode": "train"}, "forward mode only"),
        ("prune_heads", {"scope": "core"}, "needs layer scope"),
        ("distill", {"variant": "adaptive.universal"}, "builds UniversalTransformer"),
        ("prune_heads", {"variant": "hierarchical.transformer_xl"}, "per-head weights"),
        ("autocast_bf16", {"dtype": "float64"}, "applies to float32"),
        ("compile", {"backend": "onnxruntime"}, "torch eager backends"),
    ],
)
def test_unsupported_says_why(transform: str, kw: dict, reason: str) -> None:
    c = case(transform, str(kw.pop("variant", "full.sdpa")), **kw)
    module, inputs = built(dataclasses.replace(c, dtype="float32"))
    with pytest.raises(T.TransformUnsupported, match=reason):
        T.apply_transform(c, module, inputs, 0)


@pytest.mark.parametrize("transform", ["autocast_bf16", "compile"])
def test_a_workload_training_in_its_own_steps_refuses_wrappers(transform: str) -> None:
    # autocast's wrapper would hide the segment-by-segment train call, and torch.compile would
    # run it uncompiled under the "compile" label.
    params = {**get_workload("hierarchical.transformer_xl").default_params(), "train_step": "segment"}
    c = dataclasses.replace(
        case(transform, "hierarchical.transformer_xl", scope="core", mode="train"), params=tuple(sorted(params.items()))
    )
    module, inputs = built(c)
    with pytest.raises(T.TransformUnsupported, match="trains in its own steps"):
        T.apply_transform(c, module, inputs, 0)


def test_fidelity_beyond_tolerance_is_flagged() -> None:
    y = torch.randn(1000, dtype=torch.float64)
    tol = T.Tolerance(rel_err=1e-3, min_cosine=0.9999)
    assert T.fidelity_of(y, y, tol)["within"]
    off = T.fidelity_of(y * 1.01, y, tol)
    assert not off["within"] and off["rel_err"] == pytest.approx(0.01) and off["cosine"] == pytest.approx(1.0)
    assert not T.fidelity_of(torch.full_like(y, float("nan")), y, tol)["within"]


# --- through the worker: the record says exactly what ran ----------------------------------


def test_worker_records_transform_fidelity_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.engine.worker import measure_memory, measure_time

    settings = RunSettings(max_time_per_case=0.05)
    # As the executor merges them: the memory worker records the kernels on its first call.
    r = measure_time(case("int8"), settings).with_memory(measure_memory(case("int8"), settings))
    assert r.transform == "int8" and r.fidelity["within"]
    assert r.transform_details["method"].startswith("torch.ao.quantization.quantize_dynamic")
    assert r.compile_s >= r.transform_details["apply_s"] > 0
    assert "addmm" not in r.attention_ops  # the float projections did not run (int8 ones did)
    # A transform past its stated tolerance is flagged in the record and its notes, not hidden.
    monkeypatch.setattr(T.TRANSFORMS["int8"], "tolerance", T.Tolerance(rel_err=1e-9, min_cosine=1.0))
    r = measure_time(case("int8"), settings)
    assert r.fidelity["within"] is False
    assert any("beyond its tolerance" in n for n in r.notes)
    none = measure_time(case("none"), settings)
    assert none.transform == "none" and none.fidelity is None and none.transform_details is None


@pytest.mark.slow  # transforms through `bench run` and the figure: about 9 s; CI runs it (-m slow)
def test_run_records_and_tradeoff_figure(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *BENCH,
            "run",
            "--variants",
            "full.sdpa",
            "--scope",
            "layer",
            "--seq-lens",
            "64",
            "--threads",
            "1",
            "--heads",
            "4",
            "--head-dim",
            "16",
            "--transforms",
            "none,prune_heads,int8,prune_24",
            "--max-time-per-case",
            "0.1",
            "--out",
            str(out),
            "--history",
            "off",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    run = load_run(out)
    by = {c.transform: c for c in run.cases}
    assert set(by) == {"none", "prune_heads", "int8", "prune_24"}
    assert by["none"].case_id == dataclasses.replace(case("none"), seq_len=64).case_id
    assert by["none"].fidelity is None
    assert by["prune_24"].status == "unsupported" and "CUDA" in by["prune_24"].reason
    for name in ("prune_heads", "int8"):
        rec = by[name]
        assert rec.status == "ok", rec.reason
        assert rec.fidelity is not None and rec.fidelity["within"] is True
        assert set(rec.fidelity) >= {"rel_err", "cosine", "tolerance", "within", "update_rel_err"}
    assert by["prune_heads"].transform_details["heads_after"] == 3  # type: ignore[index]
    assert Sweep.from_json(run.run.sweep or {}).transforms == ("none", "prune_heads", "int8", "prune_24")

    points = tradeoff_points(run.cases)
    assert {p["transform"] for p in points} == {"prune_heads", "int8"}
    for p in points:
        assert p["baseline_case_id"] == by["none"].case_id
        assert p["speedup"] == pytest.approx(by["none"].median_s / by[p["transform"]].median_s)
        assert p["weight_saving"] > 0
    fig = tradeoff_figure(run.cases)
    assert len(fig.axes) == 2 and sum(len(ax.collections) for ax in fig.axes) == 2 * len(points)
    fig.savefig(tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_tradeoff_points_from_plain_records() -> None:
    from attnbench.core.record import CaseRecord
    from tests.synthetic_runs import Case as Made
    from tests.synthetic_runs import record

    def made(case_id: str, median: float, peak: int, seq_len: int = 64, **fields: object) -> CaseRecord:
        c = Made(case_id, [median] * 6, peak_memory_bytes=peak, seq_len=seq_len, extra=fields)
        return CaseRecord.from_json(record("r", c))

    none = made("a", 2.0, 100, transform="none")
    fast = made(
        "b",
        1.0,
        60,
        transform="int8",
        fidelity={"rel_err": 0.01, "cosine": 0.999, "within": False},
        transform_details={"weight_bytes_before": 400, "weight_bytes_after": 100},
    )
    other_len = made("c", 1.0, 60, seq_len=128, transform="int8")  # no baseline at its length: left out
    (p,) = tradeoff_points([none, fast, other_len])
    assert (p["speedup"], p["memory_saving"], p["weight_saving"]) == (2.0, pytest.approx(0.4), 0.75)
    assert p["within_tolerance"] is False
    assert len(tradeoff_figure([]).axes) == 2


@pytest.mark.slow
def test_compile_records_kernels_and_compile_time() -> None:
    """torch.compile really compiles (a C++ compiler is needed): a minute or more on 2 cores."""
    from attnbench.engine.worker import measure_time

    if torch_compile.compiler_missing("cpu"):
        pytest.skip(torch_compile.compiler_missing("cpu"))
    c = case("compile", "full.naive", "core", heads=2, seq_len=64)
    r = measure_time(c, RunSettings(max_time_per_case=0.1))
    details = r.transform_details
    assert r.fidelity["within"], r.fidelity
    assert details["mode"] == "default" and details["backend"] == "inductor"
    kernels = details["kernels"]
    assert kernels["output_modules"] >= 1 and (kernels["generated_kernels"] or kernels["library_calls"])
    # The record's attention kernels are those of the generated code, not of the eager module.
    assert r.attention_ops == {k: v for k, v in kernels["library_calls"].items() if any(m in k for m in MARKERS)}
    assert r.compile_s >= r.first_call_s
    assert details["dynamo"]["recompiles_during_timing"] == 0
