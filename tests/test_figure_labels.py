"""Text labels in the report's figures never overlap and stay inside their axes (issue 22).

Measured as matplotlib draws them (Agg): every Text artist of the axes and of the figure,
annotations included, by the window extent matplotlib reports after a draw.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

import tests.report_fixtures as fixtures
from attnbench.core.record import CaseRecord
from attnbench.core.results import CASES_FILE, RUN_FILE, load_run
from attnbench.report.data import ReportData
from attnbench.report.figures import RC, Painter, roofline_figure, speedup_figure
from attnbench.report.labels import separate_labels
from attnbench.report.tables import series_stats
from attnbench.report.transforms_figure import tradeoff_figure
from tests.synthetic_runs import Case as Made
from tests.synthetic_runs import record

LENGTHS = (256, 512, 1024, 2048, 4096)
TWO_CLOSE = (1014, 1180)  # the pair: their labels printed on top of each other
FIVE_CLOSE = (1000, 1060, 1120, 1200, 1290)  # five crossovers within a factor 1.3


@pytest.fixture(autouse=True)
def report_style() -> Iterator[None]:
    with plt.rc_context(RC):  # the style `render` draws the report's figures in
        yield
    plt.close("all")


def _data(tmp_path: Path, crossovers: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> ReportData:
    """full.sdpa takes 1e-9·n² s and variant i takes (c_i/1e9)·n s: its speedup n/c_i crosses 1 at n = c_i."""
    monkeypatch.setattr(fixtures, "_stored_pattern", lambda *_: None)  # no pattern: no torch to import
    run_id = "20260101-000000-labels"
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / RUN_FILE).write_text(
        json.dumps(fixtures.run_dict(run_id, "synthetic-host", "cuda", "GPU", fixtures.PEAKS))
    )
    recs = []
    for n in LENGTHS:
        recs.append(fixtures.case(run_id, "cuda", "GPU", "full.sdpa", n, fixtures.sdpa_time(n)))
        for c in crossovers:
            params = {"window": c, "global_tokens": 0, "dilation": 1, "causal": False}  # one curve per crossover
            recs.append(fixtures.case(run_id, "cuda", "GPU", "sparse.sliding_window", n, c / 1e9 * n, params=params))
    (folder / CASES_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return ReportData([load_run(folder)])


def _labels(fig: Figure) -> list[tuple[Text, Bbox]]:
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)  # a bare Figure()
    canvas.draw()  # a real Agg draw: the extents are those of the PNG
    renderer = canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
    return [(t, t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def _assert_apart(fig: Figure) -> list[tuple[Text, Bbox]]:
    labels = _labels(fig)
    for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
        assert not box_a.overlaps(box_b), (a.get_text(), box_a, b.get_text(), box_b)
    for t, box in labels:
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), (t.get_text(), box)
        if t.axes is not None and t in t.axes.texts:
            frame = t.axes.get_window_extent()
            assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), (t.get_text(), box, frame)
    return labels


def _speedup(data: ReportData) -> Figure:
    group = data.groups[0]
    fig = speedup_figure(data, Painter(data), group, series_stats(data, group, 0))
    assert fig is not None
    return fig


@pytest.mark.parametrize("crossovers", [TWO_CLOSE, FIVE_CLOSE], ids=["two", "five"])
def test_close_crossover_labels_do_not_overlap(
    crossovers: tuple[int, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fig = _speedup(_data(tmp_path, crossovers, monkeypatch))
    labels = _assert_apart(fig)
    assert sorted(t.get_text() for t, _ in labels) == sorted(f"n≈{c:,}" for c in crossovers)  # all shown
    # labels move up or down only, so each stays beside its own crossover line, in the lines' order
    by_x = sorted(labels, key=lambda tb: tb[1].x0)
    assert [t.get_text() for t, _ in by_x] == [f"n≈{c:,}" for c in sorted(crossovers)]


def test_the_first_of_two_close_labels_keeps_its_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what collides moves, and only as far as it must (a label gap, a label height)."""
    fig = _speedup(_data(tmp_path, TWO_CLOSE, monkeypatch))
    (first, _), (second, _) = sorted(_labels(fig), key=lambda tb: tb[1].x0)
    assert first.xyann == (5, -12)  # type: ignore[attr-defined]
    assert second.xyann[0] == pytest.approx(5) and second.xyann[1] < -12  # type: ignore[attr-defined]
    assert second.xyann[1] > -12 - 3 * 7.5  # type: ignore[attr-defined]


def test_roofline_length_labels_do_not_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every curve has the same intensity at a given n, so its first and last labels share an x."""
    data = _data(tmp_path, FIVE_CLOSE, monkeypatch)
    fig, _ = roofline_figure(data, Painter(data), data.groups[0])
    assert fig is not None
    labels = _assert_apart(fig)
    assert len(labels) == 2 * (1 + len(FIVE_CLOSE))  # shortest and longest length of each curve


def test_transform_figure_labels_stay_apart() -> None:
    _assert_apart(tradeoff_figure([]))  # "no transformed case" in each half, and the title

    def made(case_id: str, median: float, **fields: object) -> CaseRecord:
        return CaseRecord.from_json(record("r", Made(case_id, [median] * 6, peak_memory_bytes=100, extra=fields)))

    fid = {"rel_err": 0.01, "cosine": 0.999, "within": True}
    cases = [made("a", 2.0, transform="none"), made("b", 1.0, transform="int8", fidelity=fid)]
    assert len(_assert_apart(tradeoff_figure(cases))) == 1  # the suptitle


def test_labels_that_cannot_all_fit_side_by_side_are_stacked_inside_the_axes() -> None:
    """Many identical labels at one point, by the axes' bottom-right corner: moved up and in, none over another."""
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for i in range(8):
        ax.annotate(f"label {i}", (0.98, 0.02), xytext=(5, -12), textcoords="offset points")
    ax.text(1.0, 0.5, "at the right edge")
    separate_labels(ax)
    assert len(_assert_apart(fig)) == 9
