"""The implementation axis (`impl`): identity, suites and flags, bench list, and masked_sdpa."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from attnbench.core.cases import Case, Sweep
from attnbench.core.errors import Unsupported, UserError
from attnbench.core.record import CaseRecord
from attnbench.core.registry import IMPLS, get_backend, get_impl, get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.build import build_transformed, load_case
from attnbench.engine.expand import expand
from attnbench.engine.memory_fit import memory_refusal, peak_estimate
from attnbench.engine.runner import refused_record
from attnbench.engine.suites import Overrides, load_suite, parse_suite, resolve
from attnbench.engine.worker import verify
from tests.conftest import BENCH, cli_env


def make_case(variant: str = "sparse.sliding_window", n: int = 300, impl: str = "native", **params: Any) -> Case:
    cls = get_workload(variant)
    values = cls.resolve_params({**cls.default_params(), **params}, _shape(n))
    neutral = tuple(k for k, v in values.items() if cls.neutral_params.get(k, object()) == v)
    revision = cls.definition_revision(values, "core")
    return Case(
        variant, tuple(sorted(values.items())), "core", "cpu", "float64", "forward", 1, 2, 32, n,
        revision=revision, neutral_params=neutral, impl=impl,
    )  # fmt: skip


def _shape(n: int) -> Any:
    from attnbench.workloads.shape import Shape

    return Shape(1, 2, 32, n)


# ----------------------------------------------------------------------------- identity


def test_native_cases_keep_their_case_id_and_label() -> None:
    base = Case("full.sdpa", (("causal", False),), "core", "cpu", "float32", "forward", 1, 8, 64, 1024)
    assert base.impl == "native"
    # The id every run before the impl axis recorded for this case (tests/test_back_compat.py pins more).
    assert base.case_id == replace(base, impl="native").case_id
    assert "impl" not in base.identity()
    assert "impl" not in base.label()


def test_another_impl_is_another_case_and_curve() -> None:
    native = make_case()
    masked = make_case(impl="masked_sdpa")
    assert masked.case_id != native.case_id
    assert masked.identity()["impl"] == "masked_sdpa"
    assert " impl=masked_sdpa " in masked.label()
    derived = get_workload(native.variant).derived_params
    assert masked.group_key(derived) != native.group_key(derived)


def test_the_record_carries_impl_and_old_records_read_as_native() -> None:
    rec = refused_record("r", make_case(impl="masked_sdpa"), "skipped", "no room")
    data = rec.to_json()
    assert data["impl"] == "masked_sdpa"
    assert CaseRecord.from_json(data).case() == make_case(impl="masked_sdpa")
    del data["impl"]  # a record written before the axis existed
    old = CaseRecord.from_json(data)
    assert old.impl == "native" and "impl" not in old.to_json()


def test_old_sweeps_have_the_native_impl_only() -> None:
    sweep = Sweep(("full.sdpa",), ("cpu",), (64,), impls=("native", "masked_sdpa"))
    data = sweep.to_json()
    assert list(data["impls"]) == ["native", "masked_sdpa"]
    assert Sweep.from_json(data) == sweep
    del data["impls"]
    assert Sweep.from_json(data).impls == ("native",)


# ----------------------------------------------------------------------------- registry, suites, flags


def test_registry_knows_the_builtins_and_suggests_on_a_typo() -> None:
    load_plugins()
    assert {"native", "masked_sdpa"} <= set(IMPLS)
    with pytest.raises(UserError, match=r"unknown implementation 'maskd_sdpa'; did you mean 'masked_sdpa'\?"):
        get_impl("maskd_sdpa")


def test_suite_impls_expand_into_one_case_per_impl() -> None:
    text = '[sweep]\nvariants = ["sparse.lsh"]\nbackends = ["cpu"]\nseq_lens = [128, 256]\n'
    text += 'impls = ["native", "masked_sdpa"]\n'
    spec = parse_suite(text, "t", "t.toml")
    sweep, _ = resolve(spec, Overrides())
    assert sweep.impls == ("native", "masked_sdpa")
    cases = expand(sweep)
    assert [(c.impl, c.seq_len) for c in cases] == [
        ("native", 128), ("native", 256), ("masked_sdpa", 128), ("masked_sdpa", 256),
    ]  # fmt: skip
    # (each curve by increasing length: the runner relies on it)
    # the flag replaces the suite's axis
    sweep, _ = resolve(spec, Overrides(impls=["masked_sdpa"]))
    assert sweep.impls == ("masked_sdpa",)


def test_unknown_impl_is_one_line_naming_the_known_ones() -> None:
    spec = parse_suite('[sweep]\nvariants = ["full.sdpa"]\nseq_lens = [64]\nimpls = ["flash"]\n', "t", "t.toml")
    with pytest.raises(UserError) as err:
        resolve(spec, Overrides(backends=["cpu"]))
    msg = str(err.value)
    assert "\n" not in msg and "unknown implementation 'flash'" in msg and "masked_sdpa, native" in msg


def test_the_impls_suite_covers_the_sparse_designs_by_every_impl() -> None:
    sweep, settings = resolve(load_suite("impls"), Overrides(backends=["cpu"]))
    assert set(sweep.variants) == {"full.sdpa", "sparse.sliding_window", "sparse.bigbird", "sparse.lsh"}
    assert sweep.impls[0] == "native" and set(sweep.impls) == set(IMPLS)
    assert sweep.seq_lens == (1024, 2048, 4096, 8192, 16384) and sweep.scopes == ("core", "layer")  # hf: layer only
    assert settings["max_time_per_case"] == 2.0


def test_cli_refuses_an_unknown_impl_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*BENCH, "run", "--variants", "full.sdpa", "--seq-lens", "64", "--impls", "native,nativ"],
        capture_output=True, text=True, timeout=120, env=cli_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'native'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_summary_names_the_impl_only_when_several_ran(tmp_path: Path) -> None:
    from rich.console import Console

    from attnbench.core.results import load_run
    from attnbench.report.console import print_summary
    from attnbench.report.data import ReportData
    from tests.synthetic_runs import Case as Synthetic
    from tests.synthetic_runs import write_run

    def summary(impls: list[str], name: str) -> str:
        cases = [
            Synthetic(f"{impl}-n{n}", [0.01] * 5, variant="sparse.bigbird", seq_len=n, extra={"impl": impl})
            for impl in impls
            for n in (256, 512)
        ]
        run = load_run(write_run(tmp_path / name, f"20261201-000000-synthetic-{name}", cases))
        console = Console(width=120, record=True, file=io.StringIO(), emoji=False)
        print_summary(console, run)
        labels = {ReportData([run]).curve_label(c) for c in ReportData([run]).curves}
        return console.export_text(), labels

    text, labels = summary(["native", "masked_sdpa"], "aaaa")
    assert "sparse.bigbird impl=native" in text and "sparse.bigbird impl=masked_sdpa" in text
    assert labels == {"sparse.bigbird", "sparse.bigbird impl=masked_sdpa"}  # a curve each
    text, labels = summary(["native"], "bbbb")
    assert "impl=" not in text and labels == {"sparse.bigbird"}


# ----------------------------------------------------------------------------- bench list


def test_bench_list_shows_each_variants_impls_and_why_not() -> None:
    from rich.console import Console

    from attnbench.cli.list import list_json, print_list

    load_plugins()
    console = Console(width=80, record=True, file=io.StringIO(), emoji=False)
    print_list(console)
    text = console.export_text()
    assert "implementations (--impls)" in text and "masked_sdpa" in text
    assert "impls: native, " in text and "not masked_sdpa:" in text  # the reason follows, wrapped to fit
    data = list_json()
    by_name = {v["name"]: v["impls"] for v in data["variants"]}
    assert by_name["sparse.bigbird"]["masked_sdpa"] is None
    assert "relative-position" in by_name["hierarchical.transformer_xl"]["masked_sdpa"]
    assert {i["name"] for i in data["implementations"]} == set(IMPLS)


# ----------------------------------------------------------------------------- masked_sdpa


def _cpu():
    return get_backend("cpu")(RunSettings().options_for("cpu"))


MASKED_CASES = [
    ("sparse.sliding_window", {"window": 16, "global_tokens": 3, "dilation": 2, "causal": True}),
    ("sparse.sliding_window", {"window": 32}),
    ("sparse.bigbird", {"block": 16}),
    ("sparse.bigbird", {"block": 16, "random_per_head": True, "causal": True}),
    ("sparse.lsh", {"chunk": 16, "hashes": 3}),
    ("sparse.lsh", {"chunk": 32, "causal": True}),
    ("full.sdpa", {"causal": True}),
]


@pytest.mark.parametrize("n", [256, 300])
@pytest.mark.parametrize(("variant", "params"), MASKED_CASES, ids=lambda x: x if isinstance(x, str) else None)
def test_masked_sdpa_matches_the_float64_reference(variant: str, params: dict, n: int) -> None:
    case = make_case(variant, n, impl="masked_sdpa", **params)
    cls = get_workload(variant)
    checked = verify(cls, cls.make_params(case.params_dict), case, _cpu(), max_len=1031)
    assert checked["verified"] is True and checked["seq_len"] == n
    assert checked["max_abs_err"] <= 1e-10
    # ... and its definition is the native case's (the same design, computed another way)
    native = verify(cls, cls.make_params(case.params_dict), replace(case, impl="native"), _cpu(), max_len=1031)
    assert checked["definition_probe"] == native["definition_probe"]


def test_masked_sdpa_gives_zeros_for_rows_no_key_may_attend() -> None:
    from attnbench.workloads.impls.masked_sdpa import MaskedSdpaAttention

    naive = get_workload("full.naive")

    class Holey(naive):  # type: ignore[misc, valid-type]  - a pattern in which query 3 attends nothing
        def reference_mask(self, n: int) -> torch.Tensor:
            mask = torch.ones(n, n, dtype=torch.bool).tril()
            mask[3] = False
            return mask

    attention = Holey(naive.make_params({}), _shape(8))
    module = MaskedSdpaAttention(attention, _shape(8), "mask")
    q, k, v = (torch.randn(1, 2, 8, 4, dtype=torch.float64) for _ in range(3))
    got = module(q, k, v)
    assert not got.isnan().any() and (got[:, :, 3] == 0).all()
    torch.testing.assert_close(got, attention.reference(q, k, v))


def test_masked_sdpa_runs_in_the_layer_scope_or_says_why_not() -> None:
    impl = get_impl("masked_sdpa")
    cls = get_workload("sparse.sliding_window")
    assert impl.supports(cls, cls.make_params({}), "layer", "cpu") is None
    reason = impl.supports(cls, cls.make_params({"global_tokens": 2}), "layer", "cpu")
    assert reason and "LongformerLayer" in reason
    xl = get_workload("hierarchical.transformer_xl")
    assert "relative-position" in (impl.supports(xl, xl.make_params({}), "core", "cpu") or "")
    act = get_workload("adaptive.act")
    assert "whole layers" in (impl.supports(act, act.make_params({}), "layer", "cpu") or "")
    # ONNX Runtime's graph must run at any length; the mask is built for one
    assert "any length" in (impl.supports(cls, cls.make_params({}), "core", "onnxruntime") or "")


def test_an_unsupported_impl_is_refused_as_unsupported() -> None:
    case = replace(make_case("hierarchical.transformer_xl", 64, impl="masked_sdpa"), dtype="float32")
    with pytest.raises(Unsupported, match=r"^masked_sdpa: Transformer-XL"):
        load_case(case, RunSettings())
    assert memory_refusal(case) is None  # never measured against memory: it never runs


def test_the_worker_builds_the_case_through_its_impl() -> None:
    from attnbench.workloads.impls.masked_sdpa import MaskedSdpaAttention

    case = make_case("sparse.bigbird", 300, impl="masked_sdpa", block=16)
    cls, backend = load_case(case, RunSettings())
    step, _, applied, _ = build_transformed(cls, backend, case, seed=0)
    assert isinstance(applied.module, MaskedSdpaAttention)
    step()
    native = replace(case, impl="native")
    _, _, built, _ = build_transformed(cls, backend, native, seed=0)
    assert type(built.module) is cls


def test_masked_sdpa_memory_counts_the_mask_and_is_skipped_where_it_cannot_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 16384
    native = replace(make_case(n=n), dtype="float32", heads=8, head_dim=64)
    masked = replace(native, impl="masked_sdpa")
    itemsize = 4
    # At least the boolean mask and SDPA's float copy of it above what the native kernel needs.
    assert peak_estimate(masked).bytes >= n * n * (1 + itemsize)
    cpu = type(_cpu())
    free = int(1.2 * 2**30)  # room for the native kernel (about 0.6 GiB by its estimate), not for the mask
    assert peak_estimate(native).bytes < 0.9 * free < peak_estimate(masked).bytes
    monkeypatch.setattr(cpu, "free_memory_bytes", classmethod(lambda cls: free))
    assert memory_refusal(native) is None
    refused = memory_refusal(masked)
    assert refused and "analytic estimate" in refused


@pytest.mark.slow  # two cases through the CLI: about 30 s on 2 busy cores
def test_bench_run_times_native_and_masked_sdpa_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *BENCH, "run", "--variants", "sparse.sliding_window", "--impls", "native,masked_sdpa",
            "--seq-lens", "300", "--history", "off", "--max-time-per-case", "0.2", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=240, env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    records = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert [(r["impl"], r["status"]) for r in records] == [("native", "ok"), ("masked_sdpa", "ok")]
    native, masked = records
    assert masked["verification"]["verified"] is True
    assert masked["workload_metrics"]["mask"] == "mask" and masked["workload_metrics"]["mask_bytes"] == 300 * 300
    # Every pair is computed: the dense count replaces the variant's executed figure.
    assert masked["flops_executed"] == 4 * 300 * 300 * 8 * 64 > masked["flops"] == native["flops"]
    assert masked["case_id"] != native["case_id"]
    # Several implementations ran: the summary names them.
    assert "impl=masked_sdpa" in proc.stdout and "impl=native" in proc.stdout


def test_a_refused_implementation_is_recorded_without_a_worker(tmp_path: Path) -> None:
    # masked_sdpa has no form of a layer-only design: the driver knows before any worker starts.
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *BENCH, "run", "--variants", "adaptive.universal", "--impls", "masked_sdpa", "--seq-lens", "64",
            "--heads", "2", "--head-dim", "8", "--history", "off", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (rec,) = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert rec["status"] == "unsupported" and rec["reason"].startswith("masked_sdpa: ")
    assert "worker" not in rec  # no process was started
