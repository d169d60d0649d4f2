"""Published ratios beside measured ones: holds, flips, or not measured, from stored results only."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnbench.analysis.published import compare, markdown, published
from attnbench.core.results import load_run
from attnbench.engine.suites import Overrides, load_suite, resolve

FIXTURE = Path(__file__).parent / "fixtures" / "published"


def test_published_data_ships_with_sources_and_consistent_lengths() -> None:
    data = published()
    assert set(data) >= {"flash-e6", "lra"}
    for name, d in data.items():
        assert d["source"] and d["hardware"] and d["baseline"], name
        for mode in ("train",):
            for metric, table in d.get(mode, {}).items():
                lengths = table.get("lengths", d["lengths"])
                for method, values in table.items():
                    if method != "lengths":
                        assert len(values) == len(lengths), (name, metric, method)
                        assert method in d["methods"], (name, method)


def test_comparison_says_where_the_conclusion_holds_and_where_it_flips() -> None:
    rows = compare(load_run(FIXTURE))
    by = {(r.mode, r.metric, r.method, r.seq_len): r for r in rows}
    longformer = by[("train", "speed", "Longformer", 1024)]
    assert longformer.measured == pytest.approx(2.0) and longformer.published == 1.25
    assert longformer.verdict == "holds"
    reformer = by[("train", "speed", "Reformer", 1024)]
    assert reformer.measured == pytest.approx(2.0) and reformer.verdict == "flips"  # published 0.14
    reformer_mem = by[("train", "memory", "Reformer", 1024)]
    assert reformer_mem.measured == pytest.approx(3.0) and reformer_mem.verdict == "holds"  # both > 1
    bigbird = by[("train", "speed", "BigBird", 1024)]
    assert bigbird.verdict == "not measured" and "error" in (bigbird.why or "")
    assert ("train", "speed", "Longformer", 4096) not in by  # lengths the run did not sweep are left out
    fwd = by[("forward", "speed", "Longformer", 1024)]
    assert fwd.published == pytest.approx(1.27 / 1.56)  # derived from the published milliseconds
    assert fwd.verdict == "flips"  # 2.0 here against 0.81 published
    text = markdown(rows)
    assert "FlashAttention, Appendix E.6" in text and "**flips**" in text and "holds" in text


def test_reference_suites_expand_as_documented() -> None:
    flash = load_suite("flash-e6")
    sweep, _ = resolve(flash, Overrides(backends=["cpu"]))
    assert flash.reference == "flash-e6" and "float32 on cpu" in flash.notes
    assert sweep.axis_for("cpu", "dtypes") == ("float32",) and sweep.dtypes == ("float16",)
    assert sweep.batch == (16,) and sweep.heads == (8,) and sweep.head_dim == (64,)
    forced, _ = resolve(flash, Overrides(backends=["cpu"], dtypes=["float64"]))
    assert forced.axis_for("cpu", "dtypes") == ("float64",)  # the command line wins over the suite
    lra = load_suite("lra")
    lra_sweep, _ = resolve(lra, Overrides(backends=["cpu"]))
    assert lra_sweep.axis_for("cpu", "batch") == (2,) and lra_sweep.batch == (32,)
    assert lra_sweep.scopes == ("layer",) and lra_sweep.modes == ("train",)
    vit, _ = resolve(load_suite("vit"), Overrides(backends=["cpu"]))
    assert vit.seq_lens == tuple((px // 16) ** 2 + 1 for px in (224, 384, 512, 1024))


def test_report_of_a_reference_run_shows_the_published_comparison(tmp_path: Path) -> None:
    from attnbench.cli.report import add_parser  # noqa: F401 - the command module imports cleanly
    from attnbench.report.data import ReportData
    from attnbench.report.report import build

    report = build(ReportData([load_run(FIXTURE)]), "bench report tests/fixtures/published")
    table = report.published
    assert table.rows and table.title == "Published comparison"
    flips = [r for r in table.rows if r[-1].startswith("FLIPS")]
    assert any(r[0] == "Reformer (sparse.lsh)" and r[3] == "train" and r[4] == "speed" for r in flips)
    assert any("FlashAttention, Appendix E.6" in n for n in table.notes)
    assert any("hand-made" in n for n in table.notes)  # the suite's notes travel with the run
