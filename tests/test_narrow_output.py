"""Everything `bench` prints is readable at 80 columns (issue 22, "Readable at 80 columns").

Observed on main at 80 columns: the run summary cut every name to `spars…` / `hiera…`, the
two windows of a --param sweep both read `window=…`, the status column `unstab…`, and the
progress bar `2…` of `…` cases, `elapsed …`, `eta 0:…`; `bench compare` lost its verdict
and why columns past the right edge. Each output is rendered here at 80 and 120 columns
with rich's own Console, and every variant name, `param=value` and status word of the input
must appear whole: no `…`, no word folded, no table line cropped at the edge.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from attnbench.analysis.compare import Comparison, compare_runs
from attnbench.core.cases import Case as BenchCase
from attnbench.core.results import RunResult, load_run
from attnbench.report.compare_tables import render_table
from attnbench.report.console import RunProgress, in_flight, print_summary, progress_bar
from attnbench.report.data import ReportData
from attnbench.report.report import Report, build
from attnbench.report.terminal import print_report
from tests.synthetic_runs import Case, noisy, write_run

WIDTHS = (80, 120)
VARIANTS = ("sparse.sliding_window", "hierarchical.transformer_xl", "adaptive.universal", "full.sdpa")
PARAMS = ("window=256", "window=512")
STATUSES = ("ok", "unstable", "skipped", "timeout", "unsupported")
LENGTHS = (512, 1024, 2048, 4096)
# What goes wrong at each length, per variant (ok elsewhere); statuses other than ok have no samples.
OUTCOMES = {
    ("sparse.sliding_window", 256): {1024: "unstable"},
    ("hierarchical.transformer_xl", None): {2048: "unsupported"},
    ("adaptive.universal", None): {2048: "timeout"},
    ("full.sdpa", None): {4096: "skipped", 512: "unstable"},
}


def _cases(seed: int, slower: float = 1.0) -> list[Case]:
    """The cases of one run; `slower`: hierarchical.transformer_xl at 4096 takes that much longer."""
    designs = [("sparse.sliding_window", 256), ("sparse.sliding_window", 512)]
    designs += [(v, None) for v in VARIANTS[1:]]
    out = []
    for i, (variant, window) in enumerate(designs):
        params = {"window": window, "causal": False} if window else {"causal": False}
        for n in LENGTHS:
            status = OUTCOMES.get((variant, window), {}).get(n, "ok")
            ok = status in ("ok", "unstable")
            median = 1e-3 * n / 512 * (i + 1) * (slower if (variant, n) == (VARIANTS[1], 4096) else 1.0)
            sigma = 0.3 if status == "unstable" else 0.01
            samples = noisy(median, 20, sigma, seed + 10 * i + n) if ok else None
            extra = {"params": params, **({"stable": False} if status == "unstable" else {})}
            out.append(
                Case(
                    f"{variant}-w{window}-cpu-n{n}",
                    samples,
                    status="ok" if ok else status,
                    variant=variant,
                    seq_len=n,
                    extra=extra,
                )
            )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, RunResult]:
    root = tmp_path_factory.mktemp("narrow")
    a = write_run(root / "a", "20261101-000000-synthetic-aaaa", _cases(0))
    b = write_run(
        root / "b", "20261102-000000-synthetic-bbbb", _cases(1000, 1.5), started_at="2026-11-02T00:00:00+00:00"
    )
    return load_run(a), load_run(b)


@pytest.fixture(scope="module")
def report(runs: tuple[RunResult, RunResult]) -> Report:
    return build(ReportData([runs[0]]), "bench report a --format terminal")


@pytest.fixture(scope="module")
def comparison(runs: tuple[RunResult, RunResult]) -> Comparison:
    return compare_runs(*runs)


def render(draw: Callable[[Console], object], width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), emoji=False)
    draw(console)
    return console.export_text()


BOX = "│┃┏┗┡┢┣┠┌└├╭╰"  # a line starting with one of these is a table's and must end with its border


def assert_whole(text: str, width: int, words: tuple[str, ...]) -> None:
    """Every word appears whole; nothing was cut with '…', folded or cropped at the edge."""
    assert "…" not in text, text
    for word in words:
        assert re.search(rf"(?<![\w.=]){re.escape(word)}(?![\w=])", text), f"{word!r} missing:\n{text}"
    for ln in text.splitlines():
        if ln.strip() and ln.lstrip()[0] in BOX:
            assert len(ln) <= width and ln.rstrip()[-1] in "│┃┓┛┩┪┫┨┐┘┤╮╯", f"cropped at {width}:\n{ln}"
    # A name or parameter folded across lines leaves a piece of it ending a line or a cell.
    for word in words:
        if "." in word or "=" in word:
            cut = min(word.index(c) for c in ".=" if c in word) + 1
            for end in range(cut, len(word)):
                piece = re.escape(word[:end])
                assert not re.search(rf"(?<![\w.=]){piece}\s*(?:[│┃]|$)", text, re.M), f"{word!r} folded:\n{text}"


@pytest.mark.parametrize("width", WIDTHS)
def test_run_summary_keeps_names_parameters_and_statuses_whole(runs: tuple[RunResult, RunResult], width: int) -> None:
    text = render(lambda c: print_summary(c, runs[0]), width)
    assert_whole(text, width, VARIANTS + PARAMS + STATUSES)
    # the two windows stay apart: each heads (or starts) its own rows
    assert len(re.findall(r"sparse\.sliding_window window=(256|512)", text)) == 2, text


def test_run_summary_is_one_table_where_it_fits_and_one_per_design_at_80(runs: tuple[RunResult, RunResult]) -> None:
    wide = render(lambda c: print_summary(c, runs[0]), 120)
    assert wide.count("┏") == 1 and "┃ variant" in wide
    narrow = render(lambda c: print_summary(c, runs[0]), 80)
    assert narrow.count("┏") == 5  # a table per design: 2 windows and 3 other variants
    assert narrow.splitlines()[0].startswith("run 20261101-000000-synthetic-aaaa (synthetic)")
    for title in ("sparse.sliding_window window=256", "hierarchical.transformer_xl", "full.sdpa"):
        assert any(ln.rstrip() == title for ln in narrow.splitlines()), title


@pytest.mark.parametrize("width", WIDTHS)
def test_terminal_report_keeps_names_parameters_and_statuses_whole(report: Report, width: int) -> None:
    text = render(lambda c: print_report(c, report), width)
    assert_whole(text, width, VARIANTS + PARAMS + STATUSES + ("20261101-000000-synthetic-aaaa",))


def test_terminal_report_splits_a_wide_table_repeating_its_names(report: Report) -> None:
    text = render(lambda c: print_report(c, report), 80)
    assert "(continued)" in text  # the scaling table's columns in two parts at 80 columns
    start = text.index("Scaling")
    part = text[start : text.index("Median ms per call")]
    assert part.count("hierarchical.transformer_xl") == 2  # once in each part
    assert "┃ label   ┃ synthetic-aaaa" in text  # one run: its fields as rows


@pytest.mark.parametrize("width", (*WIDTHS, 200))
def test_compare_keeps_names_verdicts_and_statuses_whole(comparison: Comparison, width: int) -> None:
    text = render(lambda c: render_table(comparison, c), width)
    verdicts = tuple({c.verdict for c in comparison.cases})
    assert {"unstable", "missing", "regression", "no change"} <= set(verdicts)
    assert_whole(text, width, VARIANTS + verdicts + ("skipped", "timeout", "unsupported"))


def test_compare_tells_the_windows_apart(comparison: Comparison) -> None:
    assert_whole(render(lambda c: render_table(comparison, c), 80), 80, PARAMS)


@pytest.mark.parametrize("width", WIDTHS)
def test_bench_list_keeps_names_and_default_parameters_whole(width: int) -> None:
    from attnbench.cli.list import print_list
    from attnbench.core.registry import WORKLOADS, load_plugins

    load_plugins()
    names = tuple(WORKLOADS)
    params = tuple(f"{k}={v}" for cls in WORKLOADS.values() for k, v in cls.default_params().items())
    text = render(print_list, width)
    assert_whole(text, width, names + params + ("cpu", "smoke", "default"))


LONG_CASE = BenchCase(
    "adaptive.act",
    (
        ("max_steps", 12),
        ("target_steps", 3.0),
        ("halting", "frozen"),
        ("execution", "auto"),
        ("seed", 0),
        ("attention", "full.sdpa"),
    ),
    "layer",
    "cpu",
    "float32",
    "forward",
    1,
    1,
    8,
    64,
)


@pytest.mark.parametrize("width", WIDTHS)
def test_progress_shows_counts_clocks_and_the_whole_case_in_flight(width: int) -> None:
    assert len(LONG_CASE.label()) > 80

    def draw(console: Console) -> None:
        bar = progress_bar(console)
        bar.add_task(in_flight(LONG_CASE), total=240, completed=17)
        console.print(bar.get_renderable())

    text = render(draw, width)
    params = tuple(f"{k}={v}" for k, v in LONG_CASE.params)
    assert_whole(text, width, ("adaptive.act", *params, "cpu/float32/forward", "n=64"))
    first = text.splitlines()[0]
    assert re.search(r"17/240 cases elapsed \d+:\d\d:\d\d eta (-:--:--|\d+:\d\d:\d\d)$", first.rstrip()), first
    assert all(len(ln) <= width for ln in text.splitlines())


def test_run_progress_on_an_80_column_terminal_names_the_case_in_flight() -> None:
    tty = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=80, emoji=False)
    progress = RunProgress(tty)
    progress.start(240, 17)
    progress.case_started(LONG_CASE)
    assert progress._bar is not None
    progress._bar.refresh()
    progress.stop()
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tty.file.getvalue())  # type: ignore[attr-defined]
    assert "…" not in out
    assert "adaptive.act[max_steps=12, target_steps=3.0," in out and "attention=full.sdpa]" in out
    assert "17/240 cases elapsed 0:00:0" in out


def test_make_console_honours_columns_off_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from attnbench.report.console import make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console(io.StringIO()).width == 120  # a CI log: room for the wide layouts
    assert make_console(io.StringIO(), log_width=170).width == 170
    monkeypatch.setenv("COLUMNS", "80")
    assert make_console(io.StringIO()).width == 80


@pytest.mark.parametrize("width", WIDTHS)
def test_terminal_report_of_a_quality_run_keeps_designs_and_figures_whole(tmp_path: Path, width: int) -> None:
    from tests.quality_fixtures import write_approx_run, write_quality_run

    runs = [load_run(write_quality_run(tmp_path / "q")), load_run(write_approx_run(tmp_path / "a"))]
    quality = build(ReportData(runs), "bench report q a --format terminal")
    text = render(lambda c: print_report(c, quality), width)
    designs = (
        "sparse.sliding_window",
        "sparse.bigbird",
        "hierarchical.han",
        "full.sdpa",
        "sparse.lsh",
        "W=16,",
        "g=0)",
    )
    # a figure may wrap at its spaces ("0.700 ±" over "0.248 (3)"), never inside a number
    assert_whole(text, width, (*designs, "0.700", "0.248", "(3)", "0.083"))
    assert "Kendall's τ = 1.00" in text
