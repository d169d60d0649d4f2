"""Text from users and records reaches every medium as written (issue 21: "every text is
escaped for the medium it goes to"): the terminal (rich), HTML, Markdown, CSV and figure
labels, through attnbench.report.escaping.

A property-based test feeds random hostile text (rich markup, math text, Markdown and HTML
syntax, formulas, line breaks) through each renderer and reads it back: from the terminal as
printed, from HTML after unescaping, from Markdown after rendering it with a CommonMark
reader, from CSV after removing the neutralising quote, from figures in their SVG text. The
three cases seen on main are regression tests through the real CLI.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import re
import shutil
import subprocess
import warnings
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from rich.text import Text

from attnbench.analysis.compare import Comparison, compare_runs
from attnbench.core.cases import Case as BenchCase
from attnbench.core.record import CaseRecord
from attnbench.core.results import RunResult, load_run
from attnbench.report.compare_tables import render_markdown as compare_markdown
from attnbench.report.compare_tables import render_table as compare_table
from attnbench.report.console import RunProgress, make_console, print_summary
from attnbench.report.csvdata import write_csv
from attnbench.report.data import ReportData
from attnbench.report.escaping import (
    LiteralTable,
    csv_cell,
    csv_read_back,
    line,
    literal,
    literal_figure,
    md_cell,
    md_code,
    md_text,
    relative_href,
    visible,
)
from attnbench.report.figures import Figures
from attnbench.report.html import html_table, render_html
from attnbench.report.markdown import md_table, render_markdown
from attnbench.report.report import Report, build
from attnbench.report.tables import Table, series_stats
from attnbench.report.terminal import print_report, rich_table
from tests.conftest import BENCH, cli_env
from tests.synthetic_runs import Case, noisy, record, write_run

# What has a meaning somewhere: rich markup and emoji codes, math text, Markdown and HTML
# syntax, spreadsheet formulas, line breaks, terminal escapes. Random text is made of these
# and of any other characters (control characters come from this list only).
HOSTILE = [
    "[/]", "[bold]", "[/bold]", "[red]x[/]", "[onnx]", "[chunk=256]", "\\", "\\[b]", "$x$", "$", "\\$",
    "|", "`", "``", "<script>alert(1)</script>", "<br>", "&amp;", "&", "=1+1", "+1", "-1", "@SUM(A1)",
    "'", '"', "\t", "\n", "\r\n", "\r", "# h", "#", "- ", "1. ", "2) ", "> ", "*a*", "_a_", "__init__",
    "~~s~~", "~", "[l](javascript:alert(1))", "![i](x.png)", ":smile:", "---", "===", "    ", "\x1b[2J",
    "\x07", "中文", "é",
]  # fmt: skip
CHARS = st.characters(blacklist_categories=("Cs", "Cc"))
hostile = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(CHARS, max_size=6)), max_size=8).map("".join)
# Tabs aside: a terminal expands them to its tab stops.
terminal_text = hostile.map(lambda s: s.replace("\t", " "))
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wrapped(text: str) -> str:
    """The text between two markers, so that it can be found in a whole page."""
    return f"ZQX{text}QXZ"


def folded(text: str) -> str:
    """White space folded, as Markdown and HTML fold it."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, RunResult]:
    root = tmp_path_factory.mktemp("escaping")
    cases = [
        Case("full.sdpa-cpu-n512-aaaa", noisy(0.004, 15, 0.03, seed=1)),
        Case("broken", None, status="error"),
    ]
    a = load_run(write_run(root / "a", "run-a", cases))
    b = load_run(write_run(root / "b", "run-b", cases, started_at="2026-11-02T00:00:00+00:00"))
    return a, b


@pytest.fixture(scope="module")
def report(runs: tuple[RunResult, RunResult]) -> Report:
    return build(ReportData([runs[0]]), "bench report run-a")


@pytest.fixture(scope="module")
def comparison(runs: tuple[RunResult, RunResult]) -> Comparison:
    return compare_runs(*runs)


def with_text(report: Report, text: str) -> Report:
    """The report with `text` as its title, a warning, and a highlight of every group."""
    return dataclasses.replace(report, title=text, warnings=[text], highlights={k: [text] for k in report.highlights})


def compared_with_text(cmp: Comparison, text: str) -> Comparison:
    cases = [dataclasses.replace(c, label=text, reason=text) for c in cmp.cases]
    return dataclasses.replace(cmp, cases=cases, environment_notes=[text], environment_refusals=[text])


NO_FIGURES = Figures(folder=Path("figures"), files=[], notes={})


def console() -> Any:
    """The project's console, writing to a buffer, wide enough that nothing wraps."""
    c = make_console(io.StringIO())
    c.width = 100_000
    return c


class Page(HTMLParser):
    """The text of an HTML page (entities unescaped, <br> as a line break) and its tags."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.tags: Counter[str] = Counter()
        self.hrefs: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.hrefs += [v or "" for k, v in attrs if k == "href"]
        if tag == "br":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def read_markdown(md: str) -> Page:
    """Markdown as a CommonMark reader with GitHub's tables and strikethrough shows it."""
    return Page(MarkdownIt("commonmark").enable("table").enable("strikethrough").render(md))


def structure(page: Page) -> Counter[str]:
    return page.tags - Counter({"br": page.tags["br"]})


# ----------------------------------------------------------------------------- terminal


@PROPERTY
@given(text=terminal_text)
@example(text="[/] [bold]x[/bold] attnbench[onnx] :smile: \\")
def test_terminal_prints_any_text_as_written(text: str) -> None:
    c = console()
    c.print(line(("styled", "bold"), f" {text}"), soft_wrap=True)
    assert c.file.getvalue() == visible(f"styled {text}") + "\n"
    table = LiteralTable(title=text)
    table.add_column(text)
    table.add_row(text, literal(text, "red"))
    assert all(isinstance(cell, Text) and cell.plain == visible(text) for cell in table.columns[0].cells)
    assert isinstance(table.title, Text) and table.title.plain == visible(text)


@PROPERTY
@given(text=terminal_text)
def test_run_progress_and_summary_print_any_text_as_written(
    text: str, runs: tuple[RunResult, RunResult], tmp_path_factory: pytest.TempPathFactory
) -> None:
    case = BenchCase("full.chunked", (("chunk", 256), ("note", text)), "core", "cpu", "float32", "forward", 1, 1, 8, 64)
    rec = CaseRecord.from_json(record("run-x", Case("x", None, status="error", extra={"reason": text})))
    c = console()
    progress = RunProgress(c)
    progress.start(1, 0)
    progress.case_finished(case, rec)
    assert c.file.getvalue() == visible(f"[1/1] {case.label()}: error {text}") + "\n"
    folder = tmp_path_factory.mktemp("summary")
    result = load_run(write_run(folder / "r", "run-s", [Case("bad", None, status="error", extra={"reason": text})]))
    c = console()
    print_summary(c, result)
    assert visible(f"  error full.sdpa n=512: {text}") + "\n" in c.file.getvalue()


@PROPERTY
@given(text=terminal_text)
def test_report_and_comparison_on_the_terminal_print_any_text_as_written(
    text: str, report: Report, comparison: Comparison
) -> None:
    c = console()
    print_report(c, with_text(report, text))
    out = c.file.getvalue()
    assert visible(f"attnbench report: {text}") + "\n" in out
    assert visible(f"warning: {text}") + "\n" in out
    assert visible(f"  • {text}") + "\n" in out
    cells = list(rich_table(Table(text, [text], [[text]])).columns[0].cells)
    assert [cell.plain for cell in cells] == [visible(text)]  # type: ignore[union-attr]
    c = console()
    compare_table(compared_with_text(comparison, text), c)
    assert visible(f"note: {text}") + "\n" in c.file.getvalue()
    assert visible(f"environment differs (allowed by --allow-env-mismatch): {text}") in c.file.getvalue()


def test_control_characters_are_spelt_out_not_sent_to_the_terminal() -> None:
    assert visible("a\x1b[2Jb\x07c\r\nd\re") == "a\\x1b[2Jb\\x07c\nd\ne"
    c = console()
    c.print(line("\x1b]0;title\x07 :smile: [/]"))
    assert c.file.getvalue() == "\\x1b]0;title\\x07 :smile: [/]\n"


def test_a_case_label_with_brackets_prints_whole_in_progress_lines_and_the_bar() -> None:
    """Observed on main: `full.chunked[chunk=256]` printed as `full.chunked` (rich read the
    brackets as a style), so the points of a sweep could not be told apart in CI logs."""
    case = BenchCase("full.chunked", (("chunk", 256),), "core", "cpu", "float32", "forward", 1, 1, 8, 64)
    assert case.label().startswith("full.chunked[chunk=256] ")
    rec = CaseRecord.from_json(record("run-x", Case("x", None, status="error", extra={"reason": "[/] boom"})))
    c = console()  # a CI log: one line per case
    progress = RunProgress(c)
    progress.start(1, 0)
    progress.case_finished(case, rec)
    assert c.file.getvalue() == f"[1/1] {case.label()}: error [/] boom\n"
    from rich.console import Console

    tty = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=200, emoji=False)
    progress = RunProgress(tty)  # a terminal: the live bar names the case running
    progress.start(1, 0)
    progress.case_started(case)
    assert progress._bar is not None
    progress._bar.refresh()
    progress.case_finished(case, rec)
    progress.stop()
    out = tty.file.getvalue()  # type: ignore[attr-defined]
    assert "full.chunked[chunk=256] cpu/float32/forward n=64" in out
    assert f"error {case.label()}: [/] boom" in out


def test_bench_list_shows_the_onnx_extra(tmp_path: Path) -> None:
    """Observed on main: `bench list` told users to `pip install 'attnbench'`: rich swallowed
    the `[onnx]` of `attnbench[onnx]`. The ONNX packages are hidden from this run."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "onnxscript.py").write_text('raise ImportError("hidden by the test", name="onnxscript")\n')
    env = cli_env(COLUMNS="400")
    env["PYTHONPATH"] = f"{blocked}:{env['PYTHONPATH']}"
    r = subprocess.run([*BENCH, "list"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "onnxscript is not installed (pip install 'attnbench[onnx]')" in r.stdout


@pytest.mark.slow  # a real `bench run` of one tiny case: about 15 s
def test_suite_notes_with_markup_and_a_bracketed_label_run_to_the_history(tmp_path: Path) -> None:
    """Observed on main: a suite `notes` holding `[/]` aborted `bench run` with a MarkupError
    and the run never reached the history; `full.chunked[chunk=256]` printed as `full.chunked`."""
    notes = "closes [/] nothing; [bold]not bold[/bold]; $x$ :smile: | `x` \\"
    suite = tmp_path / "marked.toml"
    suite.write_text(
        f'description = "markup in the notes"\nnotes = {json.dumps(notes)}\n'
        '[sweep]\nvariants = ["full.chunked"]\nbackends = ["cpu"]\nseq_lens = [64]\nbatch = [1]\nheads = [1]\n'
        'head_dim = [8]\ndtypes = ["float32"]\nmodes = ["forward"]\nscopes = ["core"]\n'
        "[settings]\nmax_time_per_case = 0.05\n"
    )
    db = tmp_path / "h.sqlite"
    args = ["run", "--suite", str(suite), "--param", "full.chunked.chunk=256", "--threads", "1"]
    r = subprocess.run(
        [*BENCH, *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(ATTNBENCH_HISTORY=str(db), COLUMNS="400"),
    )
    assert r.returncode == 0, r.stderr
    assert "MarkupError" not in r.stderr
    assert f"note: {notes}\n" in r.stdout
    assert re.search(r"\[1/1\] full\.chunked\[[^\]]*chunk=256[^\]]*\] cpu/float32/forward n=64: ok ", r.stdout)
    assert "history: recorded in" in r.stdout
    run = load_run(tmp_path / "run").run
    assert run.status == "complete" and run.suite_notes == notes


# ----------------------------------------------------------------------------- HTML


@PROPERTY
@given(text=hostile)
@example(text='<script>alert(1)</script> " onload="x')
def test_html_shows_any_text_as_written_and_adds_no_element(text: str, report: Report) -> None:
    marked = wrapped(text)
    baseline = Page(render_html(with_text(report, wrapped("plain")), NO_FIGURES))
    page = Page(render_html(with_text(report, marked), NO_FIGURES))
    assert page.tags == baseline.tags
    assert page.text.count(marked) == baseline.text.count(wrapped("plain")) >= 4  # <title>, <h1>'s line, warning, li
    table = Page(html_table(Table(marked, [marked], [[marked]], notes=[marked])))
    assert table.text.count(marked) == 4 and table.tags["a"] == 0


def test_links_are_relative_inside_the_report_or_the_runs_or_dropped(tmp_path: Path) -> None:
    report_dir, run_dir = tmp_path / "report", tmp_path / "run"
    (report_dir / "figures").mkdir(parents=True)
    (run_dir / "profiles" / "javascript:alert(1)").mkdir(parents=True)
    assert relative_href(run_dir / "profiles" / "javascript:alert(1)", report_dir, [run_dir]) == (
        "../run/profiles/javascript%3Aalert%281%29"
    )
    assert relative_href(report_dir / "javascript:x", report_dir) == "javascript%3Ax"  # a path, not a scheme
    assert relative_href(report_dir / "figures" / "a b#c?.png", report_dir) == "figures/a%20b%23c%3F.png"
    assert relative_href("/etc/passwd", report_dir, [run_dir]) is None
    assert relative_href(run_dir / ".." / "elsewhere", report_dir, [run_dir]) is None
    assert relative_href(run_dir / "profiles", None, [run_dir]) is None  # no report folder: no link
    (tmp_path / "outside").mkdir()
    (run_dir / "sneaky").symlink_to(tmp_path / "outside")
    assert relative_href(run_dir / "sneaky" / "x", report_dir, [run_dir]) is None  # symlinks are followed


def test_profile_links_from_a_record_cannot_leave_the_run_or_name_a_scheme(tmp_path: Path) -> None:
    """A profile.json names its files; the report links them only as relative paths inside the run."""
    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "published", run_dir)
    run = load_run(run_dir)
    case = next(c for c in run.cases if c.variant == "sparse.lsh" and c.mode == "forward")
    prof_dir = run_dir / "profiles" / case.case_id
    prof_dir.mkdir(parents=True)
    (prof_dir / "profile.json").write_text(
        json.dumps({"trace": "javascript:alert(1)", "ops_md": "/etc/passwd", "steps": [], "top_ops": []})
    )
    report = build(ReportData([run]), "bench report run")
    out = tmp_path / "report"
    out.mkdir()
    figs = Figures(folder=out / "figures", files=[], notes={})
    hrefs = Page(render_html(report, figs, link_base=out)).hrefs
    md_hrefs = read_markdown(render_markdown(report, figs, link_base=out)).hrefs
    trace = f"../run/profiles/{case.case_id}/javascript%3Aalert%281%29"
    assert trace in hrefs and trace in md_hrefs
    for href in hrefs + md_hrefs:
        assert href == "data:," or href.startswith(("#", "figures/", "../run/")), href  # data:, the icon
        assert "passwd" not in href


# ----------------------------------------------------------------------------- Markdown


@PROPERTY
@given(text=hostile)
@example(text="`a` | *b* <i>c</i> [l](javascript:x) $x$\n# d\n- e")
def test_markdown_shows_any_text_as_written_and_adds_no_element(
    text: str, report: Report, comparison: Comparison
) -> None:
    marked = wrapped(text)
    baseline = read_markdown(render_markdown(with_text(report, wrapped("plain")), NO_FIGURES))
    page = read_markdown(render_markdown(with_text(report, marked), NO_FIGURES))
    assert structure(page) == structure(baseline)
    assert folded(page.text).count(folded(marked)) == folded(baseline.text).count(wrapped("plain")) >= 3
    table = read_markdown(md_table(Table(marked, [marked, "x"], [[marked, marked]], notes=[marked])))
    assert structure(table) == Counter({"h3": 1, "table": 1, "thead": 1, "tbody": 1, "tr": 2, "th": 2, "td": 2, "p": 1,
                                        "sub": 1})  # fmt: skip
    assert folded(table.text).count(folded(marked)) == 5
    plain = compared_with_text(comparison, wrapped("plain"))
    baseline = read_markdown(compare_markdown(plain))
    page = read_markdown(compare_markdown(compared_with_text(comparison, marked)))
    assert structure(page) == structure(baseline)
    assert folded(page.text).count(folded(marked)) == folded(baseline.text).count(wrapped("plain")) >= 4


@PROPERTY
@given(text=hostile)
def test_markdown_code_span_holds_any_text(text: str) -> None:
    marked = wrapped(text)
    for md in (md_code(marked), f"| a |\n|---|\n| {md_code(marked, in_table=True)} |\n"):
        page = read_markdown(md)
        assert page.tags["code"] == 1, md
        assert folded(marked) in folded(page.text)  # a code span shows line breaks as spaces


def test_markdown_escapes_read_naturally() -> None:
    assert md_text("sparse.sliding_window: 3.99 ms, -1.5%") == "sparse.sliding_window: 3.99 ms, -1.5%"
    assert md_text("a|b `c` <img src=x> *d*\n# e") == "a\\|b \\`c\\` \\<img src=x\\> \\*d\\*<br>\\# e"
    assert md_text("- item") == "\\- item" and md_text("1. first") == "1\\. first" and md_text("===") == "\\==="
    assert md_cell("") == " " and md_code("a`b") == "``a`b``" and md_code("x|y", in_table=True) == "`x\\|y`"


# ----------------------------------------------------------------------------- CSV


def runs_as_formula(cell: str) -> bool:
    """Whether a spreadsheet would run the cell (a plain number, -1.5, it shows as a number)."""
    return bool(re.match(r"[=+\-@\t\r]", cell)) and not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", cell)


@PROPERTY
@given(st.one_of(hostile, st.floats(allow_nan=False, allow_infinity=False), st.integers()))
def test_csv_cells_read_back_and_never_start_a_formula(value: object) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerow([csv_cell(value)])
    (cell,) = next(csv.reader(io.StringIO(buf.getvalue())))
    if isinstance(value, str):
        assert csv_read_back(cell) == value
        assert not runs_as_formula(cell)
    else:
        assert csv_cell(value) is value and cell == str(value)  # numbers stay numbers, negatives included
        assert not runs_as_formula(cell)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile)
@example(text='=HYPERLINK("http://x","y")')
def test_data_csv_carries_any_text_as_written(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    text = text or "="  # never empty: an empty host name reads "unknown host"
    folder = tmp_path_factory.mktemp("csv")
    cases = [
        Case("ok-1", noisy(0.004, 10, 0.03, seed=1)),
        Case("bad", None, status="error", extra={"reason": text}),
    ]
    data = ReportData([load_run(write_run(folder / "r", "run-c", cases, host={"hostname": text}))])
    write_csv(data, {g.key: series_stats(data, g, 0) for g in data.groups}, folder / "data.csv")
    with open(folder / "data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {csv_read_back(r["host"]) for r in rows} == {text}
    assert not any(runs_as_formula(cell) for r in rows for cell in r.values())
    assert [csv_read_back(r["reason"]) for r in rows if r["status"] == "error"] == [text]
    ok = next(r for r in rows if r["status"] == "ok")
    assert float(ok["median_s"]) > 0 and not ok["median_s"].startswith("'")


def test_csv_neutralises_formulas_but_not_numbers() -> None:
    assert csv_cell('=HYPERLINK("http://x","y")') == '\'=HYPERLINK("http://x","y")'
    assert [csv_cell(x) for x in ("+1 extra", "-x", "@SUM(A1)", "\t=1", "\r=1")] == [
        "'+1 extra", "'-x", "'@SUM(A1)", "'\t=1", "'\r=1",
    ]  # fmt: skip
    assert [csv_cell(x) for x in (-1.5, -3, "-1.5", "+2e-3", None)] == [-1.5, -3, "-1.5", "+2e-3", ""]
    assert csv_cell(float("-inf")) == "'-inf" and csv_cell("'=x") == "''=x" and csv_cell("'x") == "'x"


# ----------------------------------------------------------------------------- figures


def svg_texts(fig: Any) -> list[str]:
    """The figure's texts, as its SVG holds them with fonts left to the viewer (one per line)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from the font: drawn as boxes, still the text
        fig.savefig(buf, format="svg")
    plt.close(fig)
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", buf.getvalue())]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile)
@example(text="$x$ and $\\alpha$")
def test_figure_labels_show_any_text_as_written(text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marked = wrapped(text)
    with plt.rc_context({"text.usetex": False}):
        fig, ax = plt.subplots(figsize=(3, 2))
        (curve,) = ax.plot([1, 2], [1, 2])
        ax.set_title(marked)
        ax.set_xlabel(marked)
        ax.legend([curve], [marked])
        ax.annotate(marked, (1, 1))
        literal_figure(fig)
    drawn = svg_texts(fig)
    for one_line in visible(marked).split("\n"):
        assert sum(one_line == t for t in drawn) >= 4, (one_line, drawn)


def test_report_and_history_figures_draw_dollars_as_dollars(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from attnbench.report.figures import render
    from attnbench.report.history_figure import trend_figure

    cases = [
        Case("a", noisy(0.004, 10, 0.03, seed=1), extra={"params": {"tag": "$a$"}}),
        Case("b", noisy(0.002, 10, 0.03, seed=2), extra={"params": {"tag": "_b $b$"}}),
    ]
    data = ReportData([load_run(write_run(tmp_path / "r", "run-f", cases))])
    with plt.rc_context({"svg.fonttype": "none"}):
        figs = render(data, {g.key: series_stats(data, g, 0) for g in data.groups}, tmp_path / "figures")
        time_svg = next(f.svg for f in figs.files if f.name.endswith("-time")).read_text()
        rows = [
            {"case_id": "_hidden $y$", "started_at": f"2026-11-0{i}T00:00:00", "value": 0.004, "ci95_low": 0.0039,
             "ci95_high": 0.0041, "stable": 1, "seq_len": 512}
            for i in (1, 2)
        ]  # fmt: skip
        trend_figure(rows, "time", "[/] $x$", tmp_path / "trend.svg")
    labels = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", time_svg)]
    assert any("tag=$a$" in t for t in labels) and any("tag=_b $b$" in t for t in labels), labels
    trend = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", (tmp_path / "trend.svg").read_text())]
    assert "time of [/] $x$ over runs (hollow: unstable)" in trend
    assert "_hidden $y$" in trend  # a label starting with _ is not hidden from the legend
