"""`bench report` on quality data (issue 26, "Seeing it"): the Quality section's tables, figures and
LRA comparison from synthetic quality.jsonl records with chosen numbers, a report of a quality run
alone, and a normal run's report without any of it.

Known answers (listops, n=128, 3 seeds each):
  sparse.sliding_window (W=16, g=0)  0.40 0.50 0.60  10 ms/step   front
  sparse.bigbird                     0.55 0.60 0.65  20 ms/step   front
  hierarchical.han                   0.20 0.30 0.40  30 ms/step   beaten by bigbird (faster, more accurate)
  full.sdpa                          0.60 0.70 0.80  40 ms/step   front
  sparse.lsh                         0.80 0.85 0.90  60 ms/step   front
The mean ± t(0.975, 2)·sd/√3 of 0.6, 0.7, 0.8 is 0.700 ± 0.248. Measured order lsh > full >
bigbird > local attention is LRA's published ListOps order, so Kendall's τ = 1 with the exact
two-sided p = 2/4! = 0.083.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attnbench.cli.main import main
from attnbench.core.quality_record import QUALITY_FILE
from attnbench.core.results import load_run
from attnbench.report.data import ReportData
from attnbench.report.quality import design_labels, quality_report
from attnbench.report.report import build
from tests.quality_fixtures import RUN_ID, record, write_approx_run, write_quality_run
from tests.synthetic_runs import Case, noisy, write_run


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_quality_run(tmp_path_factory.mktemp("quality") / "run")


def _rows(table: Any) -> dict[str, list[str]]:
    return {row[0]: row for row in table.rows}


# ----------------------------------------------------------------------------- tables


def test_accuracy_tables_give_mean_ci_chance_and_the_front(quality_run: Path) -> None:
    q = quality_report(ReportData([load_run(quality_run)]))
    assert q is not None and len(q.runs) == 1 and q.runs[0].models == 15 + 8
    tasks = {t.task: t for t in q.runs[0].tasks}
    assert list(tasks) == ["listops", "retrieval"]
    rows = _rows(tasks["listops"].table)
    assert rows["full.sdpa"][1:] == ["128", "0.700 ± 0.248 (3)", "0.140", "3/3", "40", "4 MiB", "yes"]
    assert rows["sparse.sliding_window (W=16, g=0)"][2] == "0.500 ± 0.248 (3)"
    front = {name: row[-1] for name, row in rows.items()}
    assert front == {
        "sparse.sliding_window (W=16, g=0)": "yes",
        "sparse.bigbird": "yes",
        "hierarchical.han": "",  # bigbird is faster and more accurate
        "full.sdpa": "yes",
        "sparse.lsh": "yes",
    }
    retrieval = tasks["retrieval"].table
    lsh = [r for r in retrieval.rows if r[0] == "sparse.lsh"]
    assert [r[2] for r in lsh] == ["0.300 (1) of 2", "0.300 (1) of 2"]  # the diverged seed is counted out
    assert any("sparse.lsh n=16: the training loss was nan at step 7" in n for n in retrieval.notes)


def test_lra_table_gives_kendalls_tau_and_says_only_orderings_compare(quality_run: Path) -> None:
    q = quality_report(ReportData([load_run(quality_run)]))
    assert q is not None
    (lra,) = q.lra
    assert [r[0] for r in lra.rows] == [
        "sparse.lsh",
        "full.sdpa",
        "sparse.bigbird",
        "sparse.sliding_window (Local Attention)",
    ]
    assert _rows(lra)["sparse.lsh"][1:] == ["37.27", "0.850"]
    assert "Kendall's τ = 1.00, p = 0.083 (exact, 4 designs)" in lra.notes
    assert "only the rank order is comparable" in lra.notes[1]
    assert "only the orderings are comparable" in q.lra_note


def test_designs_that_read_alike_are_told_apart_by_what_differs() -> None:
    from attnbench.analysis.quality import summarize_quality

    records = [
        record("mqar", "sparse.bigbird", {"block": 32, "causal": False}, 0, 0.5, 10.0),
        record("mqar", "sparse.bigbird", {"block": 64, "causal": False}, 0, 0.6, 12.0),
        record("mqar", "full.sdpa", {"causal": False}, 0, 0.7, 20.0),
    ]
    labels = design_labels(summarize_quality(records))
    assert sorted(labels.values()) == ["full.sdpa", "sparse.bigbird block=32", "sparse.bigbird block=64"]


# ----------------------------------------------------------------------------- figures


def test_figures_are_written_for_cost_distance_and_maps(quality_run: Path, tmp_path: Path) -> None:
    from attnbench.report.quality_figures import render_quality

    q = quality_report(ReportData([load_run(quality_run)]))
    assert q is not None
    files, notes = render_quality(q, tmp_path)
    names = {f.name for f in files}
    assert names == {
        "quality-listops-n128-cost",
        "quality-retrieval-n16-cost",
        "quality-retrieval-n32-cost",
        "quality-retrieval-distance",  # listops records no distances: no figure
        "quality-retrieval-maps-full.sdpa",  # at the longest length with maps, the first seed
    }
    for f in files:
        assert f.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.png.stat().st_size > 1000
        assert b"<svg" in f.svg.read_bytes()[:2000]
    assert notes == []


def test_a_map_figure_names_task_design_length_seed_pool_and_the_answer(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from attnbench.report.quality_figures import map_figure, read_map

    folder = write_quality_run(tmp_path / "run")
    q = quality_report(ReportData([load_run(folder)]))
    assert q is not None
    task = next(t for t in q.runs[0].tasks if t.task == "retrieval")
    (point,) = task.map_points()
    assert point.seq_len == 32 and point.maps[0].endswith("-s0.json")
    fig, note = map_figure(task, point, folder)
    assert fig is not None and note is None
    title = fig._suptitle.get_text()  # type: ignore[union-attr]
    for part in ("retrieval", "full.sdpa", "n=16", "seed 0", "pooled 2×2", "2 heads", "answer 3, predicted 5"):
        assert part in title, title
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and images[0].get_array().shape == (8, 8)  # one layer, two heads
    plt.close(fig)
    # a record pointing outside its run folder, or at a missing file, is said, not read
    assert read_map(folder, "../../etc/passwd")[1] == "../../etc/passwd lies outside the run folder; not read"
    assert read_map(folder, "maps/gone.json")[1] == "maps/gone.json is missing"
    (folder / "maps" / "ragged.json").write_text(json.dumps({"layers": [{"layer": 0, "heads": [[[0.5, 0.5], [1]]]}]}))
    assert (
        read_map(folder, "maps/ragged.json")[1] == "maps/ragged.json holds a head that is not a square grid of numbers"
    )


def test_a_missing_map_file_is_a_note_not_a_failure(tmp_path: Path) -> None:
    from attnbench.report.quality_figures import render_quality

    folder = write_quality_run(tmp_path / "run")
    for f in (folder / "maps").iterdir():
        f.unlink()
    q = quality_report(ReportData([load_run(folder)]))
    assert q is not None
    files, notes = render_quality(q, tmp_path / "figures")
    assert not any("maps" in f.name for f in files)
    assert notes == ["retrieval full.sdpa: attention maps not drawn (maps/retrieval-full.sdpa-n32-s0.json is missing)."]


# ----------------------------------------------------------------------------- approximation


def test_approximation_table_and_figure_from_cases(tmp_path: Path) -> None:
    from attnbench.report.quality_figures import render_quality

    q = quality_report(ReportData([load_run(write_approx_run(tmp_path / "run"))]))
    assert q is not None and q.runs == ()
    table = q.approx_table
    assert table is not None
    assert table.headers == [
        "design",
        "n",
        "ms/call",
        "rel. error",
        "cosine",
        "pattern mass",
        "partner recall",
        "long-range mass",
        "front",
    ]
    rows = _rows(table)
    assert rows["sparse.sliding_window"][1:] == ["256", "1", "0.3", "0.85", "0.8", "0.8", "0.4", "yes"]
    assert rows["full.sdpa"][3] == "0" and rows["full.sdpa"][-1] == "yes"  # exact: nothing beats it on error
    assert rows["sparse.bigbird"][-1] == ""  # sliding window is faster and closer
    assert rows["hierarchical.han"][3:8] == ["—"] * 5
    assert any("hierarchical.han n=256: no figures (hierarchical.han has no core" in n for n in table.notes)
    files, notes = render_quality(q, tmp_path / "figures")
    assert [f.name for f in files] == ["approx-n256"]
    assert files[0].png.stat().st_size > 1000
    assert notes == ["approximation n=256: full.sdpa drawn at 1e-16 (relative error 0)."]


# ----------------------------------------------------------------------------- bench report


def test_report_of_a_quality_run_alone_in_every_format(
    quality_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(quality_run), "--format", "terminal"]) == 0
    text = capsys.readouterr().out
    for part in ("Quality", "listops: accuracy and cost", "retrieval: accuracy and cost", "Published comparison"):
        assert part in text
    assert "Kendall's τ = 1.00" in text
    assert "baseline full.sdpa is not in these runs" not in text  # a quality run times nothing
    assert "every case is ok" not in text
    out = tmp_path / "report"
    assert main(["report", str(quality_run), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    for doc in (md, html):
        for part in ("Quality", "listops: accuracy and cost", "retrieval: accuracy and cost", "LRA ListOps"):
            assert part in doc
        assert "only the orderings are comparable" in doc
        assert "Cases not ok" not in doc  # no cases to fail
    assert "figures/quality-listops-n128-cost.png" in md
    assert 'href="#quality"' in html and html.count("data:image/svg+xml;base64,") == 5
    assert (out / "figures" / "quality-retrieval-distance.png").stat().st_size > 0


def test_a_run_with_neither_cases_nor_quality_records_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_run(tmp_path / "empty", "20261201-000000-quality-smoke-e001", [], suite="quality-smoke")
    (folder / QUALITY_FILE).write_text("")
    assert main(["report", str(folder), "--format", "terminal"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: these runs hold no cases or quality records yet")
    assert len(err.strip().splitlines()) == 1


def test_a_normal_run_has_no_quality_section(tmp_path: Path) -> None:
    from attnbench.report.figures import Figures
    from attnbench.report.html import render_html
    from attnbench.report.markdown import render_markdown

    folder = write_run(tmp_path / "run", "20261201-000000-synthetic-n001", [Case("a", noisy(1e-3, 20, 0.01, 1))])
    report = build(ReportData([load_run(folder)]), "bench report run")
    assert report.quality is None
    assert "models" not in report.runs.headers
    figs = Figures(tmp_path, [], {})
    md, html = render_markdown(report, figs), render_html(report, figs)
    assert "Quality" not in md and 'id="quality"' not in html and "LRA" not in md


def test_a_normal_run_beside_a_quality_run_keeps_its_sections_and_gains_quality(
    quality_run: Path, tmp_path: Path
) -> None:
    folder = write_run(tmp_path / "run", "20261201-000000-synthetic-n002", [Case("a", noisy(1e-3, 20, 0.01, 1))])
    report = build(ReportData([load_run(folder), load_run(quality_run)]), "bench report")
    assert report.quality is not None and [r.run_id for r in report.quality.runs] == [RUN_ID]
    assert report.runs.headers[-1] == "models" and [r[-1] for r in report.runs.rows] == ["0", "23"]
    assert [g.key for g in report.data.groups] == ["cpu-float32-forward"]


def test_a_quality_report_never_imports_torch(quality_run: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from attnbench.cli.main import main\n"
        f"rc = main(['report', {str(quality_run)!r}, '--format', 'all', '--out', {str(tmp_path / 'r')!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "r" / "index.html").is_file()
