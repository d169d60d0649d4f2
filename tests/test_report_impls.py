"""Implementations side by side in `bench report` (issue "Implementations side by side").

Three designs, each by three implementations at four lengths, and the dense baseline, with
medians that follow exact formulas, so the fastest implementation, each ratio and each
crossover is known to the digit. flex is unsupported for sparse.sliding_window at the longest
length and masked_sdpa skipped for sparse.bigbird there: those cells say so, never a number.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from rich.console import Console

import tests.report_fixtures as fixtures
from attnbench.core.results import CASES_FILE, RUN_FILE, RunResult, load_run
from attnbench.report.console import print_summary
from attnbench.report.data import ReportData
from attnbench.report.figures import RC, FigureFile, Figures, Painter, impl_figure, impl_figure_name
from attnbench.report.figures import render as render_figures
from attnbench.report.html import render_html
from attnbench.report.impls import ImplSection
from attnbench.report.markdown import render_markdown
from attnbench.report.report import Report, build
from attnbench.report.tables import Table
from attnbench.report.terminal import print_report
from tests.test_narrow_output import assert_whole

LENGTHS = (1024, 2048, 4096, 8192)
IMPLS = ("native", "flex", "masked_sdpa")  # the report's order: native, then by name
DESIGNS = ("sparse.sliding_window", "sparse.bigbird", "sparse.lsh")


def sdpa(n: int) -> float:
    return 1e-9 * n * n  # the dense baseline


# Seconds per call: linear designs cross sdpa where the coefficient over 1e-9 equals n.
TIMES: dict[tuple[str, str], Callable[[int], float]] = {
    ("sparse.sliding_window", "native"): lambda n: 2e-6 * n,  # crosses at n = 2000
    ("sparse.sliding_window", "masked_sdpa"): lambda n: 1.5e-9 * n * n,  # never
    ("sparse.sliding_window", "flex"): lambda n: 1e-6 * n,  # from 1000: always, and the fastest
    ("sparse.bigbird", "native"): lambda n: 4e-6 * n,  # at 4000
    ("sparse.bigbird", "masked_sdpa"): lambda n: 4e-9 * n * n,  # never
    ("sparse.bigbird", "flex"): lambda n: 3e-6 * n,  # at 3000, and the fastest
    ("sparse.lsh", "native"): lambda n: 6e-6 * n,  # at 6000; beats flex from n = 3000
    ("sparse.lsh", "masked_sdpa"): lambda n: 4e-9 * n * n,  # never
    ("sparse.lsh", "flex"): lambda n: 2e-9 * n * n,  # never; the fastest up to 2048
}
NOT_OK = {
    ("sparse.sliding_window", "flex", 8192): ("unsupported", "flex: no block mask of this window at 8192"),
    ("sparse.bigbird", "masked_sdpa", 8192): ("skipped", "the dense mask would not fit (estimate 9 GiB)"),
}
RUN_ID = "20261201-000000-synthetic-impls"


def _records(run_id: str, impls: tuple[str, ...]) -> list[dict]:
    recs = []
    for n in LENGTHS:
        base = fixtures.case(run_id, "cpu", "CPU", "full.sdpa", n, sdpa(n))
        base["peak_memory_bytes"] = n * n  # the designs need 1000·n: less from n = 1024 on
        recs.append(base)
        for variant, impl in itertools.product(DESIGNS, impls):
            status, reason = NOT_OK.get((variant, impl, n), ("ok", None))
            rec = fixtures.case(run_id, "cpu", "CPU", variant, n, TIMES[variant, impl](n), status, reason)
            if status == "ok":
                rec["peak_memory_bytes"] = 1000 * n
            rec["impl"] = impl
            rec["case_id"] = f"{variant}-{impl}-n{n}"
            recs.append(rec)
    return recs


def _write(folder: Path, run_id: str, impls: tuple[str, ...]) -> RunResult:
    folder.mkdir(parents=True)
    (folder / RUN_FILE).write_text(json.dumps(fixtures.run_dict(run_id, "synthetic-host", "cpu", "CPU", None)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fixtures, "_stored_pattern", lambda *_: None)  # no pattern: no torch to import
        recs = _records(run_id, impls)
    (folder / CASES_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return load_run(folder)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return _write(tmp_path_factory.mktemp("impls") / "run", RUN_ID, IMPLS)


@pytest.fixture(scope="module")
def native_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return _write(tmp_path_factory.mktemp("native") / "run", "20261201-000000-synthetic-native", ("native",))


@pytest.fixture(scope="module")
def report(run: RunResult) -> Report:
    return build(ReportData([run]), "bench report run")


@pytest.fixture(autouse=True)
def report_style() -> Iterator[None]:
    with plt.rc_context(RC):  # the style `render` draws the report's figures in
        yield
    plt.close("all")


def _section(report: Report, variant: str) -> ImplSection:
    (group,) = report.data.groups
    return next(s for s in report.impls[group.key] if s.design.variant == variant)


def _rows(table: Table) -> list[list[str]]:
    return [list(r) for r in table.rows]


def render(draw: Callable[[Console], object], width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), emoji=False)
    draw(console)
    return console.export_text()


# ----------------------------------------------------------------------------- the tables


def test_a_section_per_design_that_ran_with_several_implementations(report: Report) -> None:
    (group,) = report.data.groups
    sections = report.impls[group.key]
    # full.sdpa ran natively only: no section of its own
    assert [s.design.variant for s in sections] == sorted(DESIGNS)
    assert all(s.impls == list(IMPLS) for s in sections)  # native first, then the report's curve order


def test_the_fastest_implementation_at_each_length_with_every_ratio(report: Report) -> None:
    table = _section(report, "sparse.sliding_window").fastest
    assert table.headers == ["n", "fastest", "ms", "native", "flex", "masked_sdpa"]
    # flex is 1e-6·n, native twice that, masked_sdpa 1.5e-9·n² (1.5e-3·n times flex's)
    assert _rows(table) == [
        ["1K", "flex", "1.02", "2.00×", "1.00×", "1.54×"],
        ["2K", "flex", "2.05", "2.00×", "1.00×", "3.07×"],
        ["4K", "flex", "4.1", "2.00×", "1.00×", "6.14×"],
        # flex did not run: native (2e-6·n) is fastest, masked_sdpa 0.75e-3·n = 6.144 times it
        ["8K", "native", "16.4", "1.00×", "unsupported", "6.14×"],
    ]
    bigbird = _rows(_section(report, "sparse.bigbird").fastest)
    assert [r[1] for r in bigbird] == ["flex"] * 4
    assert [r[3] for r in bigbird] == ["1.33×"] * 4  # native 4e-6·n over flex 3e-6·n
    assert bigbird[-1][5] == "skipped"  # its status, not a number
    # lsh: flex (2e-9·n²) is fastest up to 2048, native (6e-6·n) from 4096: they tie at n = 3000
    lsh = _rows(_section(report, "sparse.lsh").fastest)
    assert [r[1] for r in lsh] == ["flex", "flex", "native", "native"]
    assert [r[3] for r in lsh] == [f"{3000 / 1024:.2f}×", f"{3000 / 2048:.2f}×", "1.00×", "1.00×"]
    assert [r[4] for r in lsh] == ["1.00×", "1.00×", f"{4096 / 3000:.2f}×", f"{8192 / 3000:.2f}×"]
    assert [r[5] for r in lsh] == ["2.00×", "2.00×", f"{4096 / 1500:.2f}×", f"{8192 / 1500:.2f}×"]


def test_the_crossover_against_the_dense_baseline_per_implementation(report: Report) -> None:
    def crossovers(variant: str) -> dict[str, list[str]]:
        table = _section(report, variant).crossovers
        assert table.headers == ["impl", "speedup @ longest", "time crossover", "memory crossover"]
        return {r[0]: r[1:] for r in table.rows}

    window = crossovers("sparse.sliding_window")
    assert window["native"] == ["4.10× @ 8K", "2,048 (≈2,000)", "always (from 1,024)"]
    assert window["masked_sdpa"][1] == "never (to 8,192)"
    # flex's unsupported case says nothing about speed: it wins at every length it ran
    assert window["flex"][:2] == ["4.10× @ 4K", "always (from 1,024)"]
    bigbird = crossovers("sparse.bigbird")
    assert bigbird["native"][1] == "4,096 (≈4,000)" and bigbird["flex"][1] == "4,096 (≈3,000)"
    assert bigbird["masked_sdpa"][1] == "never (to 8,192)"  # skipped at 8192 counts as a loss there
    lsh = crossovers("sparse.lsh")
    assert lsh["native"][1] == "8,192 (≈6,000)"
    assert lsh["masked_sdpa"][1] == lsh["flex"][1] == "never (to 8,192)"
    # the same crossover as the scaling table's row of that curve
    (group,) = report.data.groups
    scaling = {r[0]: r[7] for r in report.scaling[group.key].rows}
    assert scaling["sparse.bigbird impl=flex"] == "4,096 (≈3,000)"


def test_only_native_looks_as_before(native_run: RunResult) -> None:
    report = build(ReportData([native_run]), "bench report run")
    assert all(not sections for sections in report.impls.values())
    text = render(lambda c: print_report(c, report), 120)
    assert "Implementations" not in text and "Fastest implementation" not in text
    figs = Figures(Path("figures"), [], {})
    assert "Implementations" not in render_markdown(report, figs)
    assert "Implementations" not in render_html(report, figs)


# ----------------------------------------------------------------------------- the figure


def _figure(report: Report, variant: str) -> Figure:
    data = report.data
    fig = impl_figure(data, Painter(data), _section(report, variant))
    assert fig is not None
    return fig


def test_the_figure_has_one_line_per_implementation_and_the_baseline(report: Report) -> None:
    fig = _figure(report, "sparse.sliding_window")
    time_ax, memory_ax = fig.axes
    assert time_ax.get_title() == "median time per call" and memory_ax.get_title() == "peak memory above the inputs"
    for ax in (time_ax, memory_ax):
        named = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
        assert set(named) == {*IMPLS, "full.sdpa (native)"}
        # flex has no figure at 8192 (unsupported): its line stops at 4096
        assert list(named["flex"].get_xdata()) == [1024, 2048, 4096]
        assert list(named["native"].get_xdata()) == list(LENGTHS)
    assert list(time_ax.lines[0].get_ydata()) == [2e-6 * n for n in LENGTHS]  # native, as stored
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()][:4] == [*IMPLS, "full.sdpa (native): the baseline"]


def test_the_figures_labels_do_not_overlap(report: Report) -> None:
    for variant in DESIGNS:
        fig = _figure(report, variant)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for ax in fig.axes:
            labels = [(t, t.get_window_extent(renderer)) for t in ax.texts if t.get_visible() and t.get_text()]
            shown = {t.get_text() for t, _ in labels}
            assert {*IMPLS, "full.sdpa"} <= shown, (variant, shown)  # every line named, none hidden
            frame = ax.get_window_extent(renderer)
            for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
                assert not box_a.overlaps(box_b), (variant, a.get_text(), b.get_text())
            for t, box in labels:
                assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), (variant, t.get_text())
    # the time panel marks each implementation's crossover: sliding_window's native at n ≈ 2000
    window = {t.get_text() for t in _figure(report, "sparse.sliding_window").axes[0].texts}
    assert window == {*IMPLS, "full.sdpa", "n≈2,000"}  # flex wins from the first length: no crossing to mark
    bigbird = {t.get_text() for t in _figure(report, "sparse.bigbird").axes[0].texts}
    assert {"n≈4,000", "n≈3,000"} <= bigbird


# ----------------------------------------------------------------------------- the formats


@pytest.mark.parametrize("width", (80, 120))
def test_terminal_report_at_80_and_120_columns_cuts_no_name(report: Report, width: int) -> None:
    text = render(lambda c: print_report(c, report), width)
    for variant in DESIGNS:
        assert f"Implementations of {variant}" in text
    assert text.count("Fastest implementation at each length — ") == 3
    assert text.count("Crossover vs full.sdpa per implementation — ") == 3
    assert_whole(text, width, (*DESIGNS, "full.sdpa", *IMPLS, "unsupported", "skipped", "never", "always"))
    # the notes once, after the last design
    assert text.count("under each implementation its median over") == 1


def _fake_figures(report: Report, folder: Path) -> Figures:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for s in report.impls[report.data.groups[0].key]:
        name = impl_figure_name(s)
        (folder / f"{name}.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
        files.append(
            FigureFile(name, f"implementations — {s.title}", "caption", folder / f"{name}.png", folder / f"{name}.svg")
        )
    return Figures(folder, files, {})


def test_markdown_and_html_show_each_designs_figure_and_tables(report: Report, tmp_path: Path) -> None:
    figs = _fake_figures(report, tmp_path / "figures")
    md = render_markdown(report, figs)
    html = render_html(report, figs)
    for variant in DESIGNS:
        assert f"#### Implementations of {variant}" in md
        assert f"<h3>Implementations of {variant}</h3>" in html
    assert "| 8K | native | 16.4 | 1.00× | unsupported | 6.14× |" in md
    assert md.count("figures/impls-cpu-float32-forward-impls-") == 3
    assert html.count('<a href="figures/impls-cpu-float32-forward-impls-') == 6  # PNG and SVG links
    assert '<td class="num muted">unsupported</td>' in html
    # each design's figure sits in its own section, not among the group's figures
    assert md.index("figures/impls-cpu-float32-forward-impls-0") > md.index("#### Implementations of sparse.bigbird")


@pytest.mark.slow  # renders every figure of the report, about 4 s
def test_render_draws_one_figure_per_design_beside_its_tables(report: Report, tmp_path: Path) -> None:
    figs = render_figures(report.data, report.stats, tmp_path / "figures")
    sections = report.impls[report.data.groups[0].key]
    drawn = [figs.named(impl_figure_name(s)) for s in sections]
    assert all(f is not None and f.png.is_file() and f.svg.is_file() for f in drawn)
    assert len({f.name for f in drawn if f is not None}) == 3
    # not among the group's own figures (time, memory, speedup, ...): the formats show it in its section
    assert not set(figs.of(report.data.groups[0].key)) & set(drawn)
    md = render_markdown(report, figs)
    assert md.index("#### Implementations of sparse.lsh") < md.index(f"figures/{drawn[1].png.name}")  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- bench run's summary


@pytest.mark.parametrize("width", (80, 120))
def test_run_summary_shows_the_impl_only_when_several_ran(run: RunResult, native_run: RunResult, width: int) -> None:
    several = render(lambda c: print_summary(c, run), width)
    for variant, impl in itertools.product(DESIGNS, IMPLS):
        assert f"{variant} impl={impl}" in several, (variant, impl)
    assert_whole(several, width, (*DESIGNS, "full.sdpa", "unsupported", "skipped"))
    alone = render(lambda c: print_summary(c, native_run), width)
    assert "impl" not in alone
    assert_whole(alone, width, (*DESIGNS, "full.sdpa"))
