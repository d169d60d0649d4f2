"""`bench report`'s speedup and memory ratio tables against the baseline at the long lengths.

Built from stored runs written by tests/synthetic_runs.py, with chosen medians and peaks so
every cell and both crossovers have an exact answer.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from attnbench.report.analysis import Crossover, MemoryPoint, memory_crossover
from attnbench.report.data import ReportData, load_runs
from attnbench.report.report import Report, build
from attnbench.report.tables import Table
from tests.synthetic_runs import Case, write_run

MIB = 2**20
K4, K8, K16, K32 = 4096, 8192, 16384, 32768
GROUP = "cpu-float32-forward"
TITLE = "cpu · float32 · forward"

# variant -> length -> (median seconds, or samples around it; peak MiB); None: skipped there
BASELINE = {K4: (0.010, 100), K8: (0.040, 400), K16: (0.160, 1600), K32: None}
WINDOW = {K4: (0.020, 400), K8: (0.030, 200), K16: (0.050, 400), K32: (0.090, 800)}
# at 8K its samples spread ±10% around the baseline's median: a speedup of 1 whose band includes 1
BIGBIRD = {K4: (0.005, 150), K8: ([0.036, 0.038, 0.040, 0.042, 0.044], 600), K16: (0.020, 2400), K32: (0.040, 4800)}


def _cases(variant: str, table: dict[int, tuple[float | list[float], int] | None]) -> list[Case]:
    out = []
    for n, figures in table.items():
        case_id = f"{variant}-n{n}"
        if figures is None:
            out.append(Case(case_id, None, variant=variant, seq_len=n, status="skipped"))
            continue
        time, peak = figures
        samples = time if isinstance(time, list) else [time] * 5
        out.append(Case(case_id, samples, peak * MIB, variant=variant, seq_len=n))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cases = _cases("full.sdpa", BASELINE) + _cases("sparse.sliding_window", WINDOW) + _cases("sparse.bigbird", BIGBIRD)
    return write_run(tmp_path_factory.mktemp("ratios") / "run", "20260101-000000-ratios", cases)


def _rows(table: Table) -> dict[str, dict[str, str]]:
    return {r[0]: dict(zip(table.headers, r, strict=True)) for r in table.rows}


def _report(run: Path, baseline: str = "full.sdpa") -> Report:
    return build(ReportData(load_runs([run]), baseline=baseline), "bench report run")


def _crossing(lo: int, lo_value: float, hi: int, hi_value: float) -> float:
    """Where log(value), linear in log n from lo to hi, crosses 0 (the tables' ≈)."""
    frac = -math.log(lo_value) / (math.log(hi_value) - math.log(lo_value))
    return lo * (hi / lo) ** frac


def test_speedup_table_at_the_three_longest_baseline_lengths(run: Path) -> None:
    speed, _ = _report(run).ratios[GROUP]
    assert speed.title == f"Speedup vs full.sdpa — {TITLE}"
    assert speed.headers == ["variant", "8K", "16K", "32K", "crossover"]
    rows = _rows(speed)
    assert set(rows) == {"sparse.sliding_window", "sparse.bigbird"}  # the baseline is no row of its own
    window, bigbird = rows["sparse.sliding_window"], rows["sparse.bigbird"]
    assert [window[c] for c in ("8K", "16K", "32K")] == ["1.33×", "3.20×", "baseline skipped"]
    assert [bigbird[c] for c in ("8K", "16K", "32K")] == ["1.00× (n.s.)", "8.00×", "baseline skipped"]
    # slower at 4K (0.5×), faster from 8K (1.33×) on; the skipped baseline at 32K counts as a win
    assert window["crossover"] == f"8,192 (≈{_crossing(K4, 0.5, K8, 4 / 3):,.0f})"
    # faster at 4K, even at 8K (band includes 1), faster from 16K on: uncertain, ≈ at 8K itself
    assert bigbird["crossover"] == "16,384 (≈8,192) ?"
    assert any("above 1: faster" in n for n in speed.notes)


def test_memory_table_gives_variant_over_baseline_peaks_and_their_crossover(run: Path) -> None:
    _, memory = _report(run).ratios[GROUP]
    assert memory.title == f"Memory vs full.sdpa — {TITLE}"
    assert memory.headers == ["variant", "8K", "16K", "32K", "crossover"]
    window, bigbird = _rows(memory)["sparse.sliding_window"], _rows(memory)["sparse.bigbird"]
    assert [window[c] for c in ("8K", "16K", "32K")] == ["0.50×", "0.25×", "baseline skipped"]
    assert [bigbird[c] for c in ("8K", "16K", "32K")] == ["1.50×", "1.50×", "baseline skipped"]
    # 4× the baseline's peak at 4K, half of it at 8K and a quarter at 16K; 32K has no baseline peak
    assert window["crossover"] == f"8,192 (≈{_crossing(K4, 1 / 4, K8, 2):,.0f})"
    assert bigbird["crossover"] == "never (to 16,384)"
    assert any("below 1: less" in n for n in memory.notes)


def test_another_baseline_is_compared_with_and_a_lone_or_absent_baseline_gives_no_tables(run: Path) -> None:
    speed, memory = _report(run, baseline="sparse.sliding_window").ratios[GROUP]
    assert speed.title == f"Speedup vs sparse.sliding_window — {TITLE}"
    assert speed.headers == ["variant", "8K", "16K", "32K", "crossover"]
    sdpa = _rows(speed)["full.sdpa"]
    assert (sdpa["8K"], sdpa["32K"]) == ("0.75×", "variant skipped")
    assert _rows(memory)["full.sdpa"]["16K"] == "4.00×"
    assert _report(run, baseline="full.naive").ratios[GROUP] == []  # no baseline in the group


def test_a_group_holding_only_the_baseline_has_no_ratio_tables(tmp_path: Path) -> None:
    only = write_run(tmp_path / "only", "20260101-000000-only", _cases("full.sdpa", BASELINE))
    assert _report(only).ratios[GROUP] == []


def test_markdown_html_and_terminal_show_both_tables(run: Path, tmp_path: Path) -> None:
    from attnbench.report.figures import Figures
    from attnbench.report.html import render_html
    from attnbench.report.markdown import render_markdown
    from attnbench.report.terminal import print_report

    report = _report(run)
    figs = Figures(folder=tmp_path / "figures", files=[], notes={})
    md = render_markdown(report, figs)
    assert f"#### Speedup vs full.sdpa — {TITLE}" in md and f"#### Memory vs full.sdpa — {TITLE}" in md
    assert "| sparse.sliding_window | 1.33× | 3.20× | baseline skipped |" in md
    assert "| sparse.bigbird | 1.50× | 1.50× | baseline skipped | never (to 16,384) |" in md
    html = render_html(report, figs)
    assert f"Memory vs full.sdpa — {TITLE}" in html and "1.00× (n.s.)" in html
    buf = io.StringIO()
    print_report(Console(file=buf, width=80), report)
    text = buf.getvalue()
    assert f"Speedup vs full.sdpa — {TITLE}" in text and f"Memory vs full.sdpa — {TITLE}" in text
    assert "3.20×" in text and "0.25×" in text and "baseline skipped" in text
    assert all(len(line) <= 80 for line in text.splitlines() if "│" in line)  # the tables fit 80 columns


def test_memory_crossover_conventions() -> None:
    assert memory_crossover([]) == Crossover("none")
    always = memory_crossover([MemoryPoint(1024, 0.9), MemoryPoint(2048, 0.5)])
    assert always.text() == "always (from 1,024)"
    assert memory_crossover([MemoryPoint(1024, 0.5), MemoryPoint(2048, 1.2)]).text() == "never (to 2,048)"
    # only the variant ran at 4096 (the baseline ran out of memory): below there, no ≈ beside it
    c = memory_crossover([MemoryPoint(1024, 1.5), MemoryPoint(2048, 1.1), MemoryPoint(4096, None, "baseline failed")])
    assert (c.kind, c.length, c.below, c.interpolated) == ("at", 4096, 2048, None)
    assert memory_crossover([MemoryPoint(1024, 0.5), MemoryPoint(2048, None, "variant failed")]).kind == "never"
