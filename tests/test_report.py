"""`bench report`: what it writes from stored runs, and that it only reads them.

The report under test is rendered once per process from a real CPU run (sparse variants,
ACT; legacy peaks: no calibration, no energy) and a synthetic run with exact answers
(known crossover, calibrated ceilings, energy, an oom, an error, a skipped case).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from attnbench.cli.main import main
from attnbench.cli.report import default_out, prepare_out
from attnbench.core.errors import UserError
from attnbench.core.results import load_run
from attnbench.report.data import ReportData, find_run, load_runs
from attnbench.report.tables import series_stats
from tests.conftest import BENCH, cli_env
from tests.report_fixtures import REAL_CPU, REAL_CPU_ORT, SYNTHETIC, rendered_report, write_run


@pytest.fixture(scope="module")
def report() -> Path:
    return rendered_report(SYNTHETIC, REAL_CPU)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- the folder


def test_writes_html_markdown_csv_and_figures_in_two_formats(report: Path) -> None:
    assert (report / "index.html").is_file() and (report / "report.md").is_file() and (report / "data.csv").is_file()
    pngs = sorted(p.stem for p in (report / "figures").glob("*.png"))
    svgs = sorted(p.stem for p in (report / "figures").glob("*.svg"))
    assert pngs == svgs and len(pngs) >= 10
    for stem in pngs:
        assert (report / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (report / "figures" / f"{stem}.svg").read_bytes()[:2000]


def test_figures_per_backend_dtype_mode_and_an_overlay_across_backends(report: Path) -> None:
    names = {p.stem for p in (report / "figures").glob("*.png")}
    # synthetic "cuda": calibrated ceilings and energy, so every figure is drawn
    for kind in ("time", "throughput", "memory", "energy", "speedup", "roofline"):
        assert f"cuda-float32-forward-{kind}" in names
    # the real CPU run: no energy counter, no calibration (legacy peaks) -> those two are absent, and said so
    for kind in ("time", "throughput", "memory", "speedup"):
        assert f"cpu-float32-forward-{kind}" in names
    assert "cpu-float32-forward-energy" not in names and "cpu-float32-forward-roofline" not in names
    # both backends share float32/forward: one overlay group draws them together
    assert "all-float32-forward-time" in names
    assert {"patterns", "ponder"} <= names
    md = (report / "report.md").read_text()
    assert "roofline: no calibration for cpu" in md
    assert "energy: not measured (no RAPL counter" in md


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key] or "")


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "index.html").read_text()
    refs = _Refs()
    refs.feed(page)
    assert refs.imgs and all(src.startswith("data:image/svg+xml;base64,") for src in refs.imgs)
    assert len(refs.imgs) == len(list((report / "figures").glob("*.svg")))
    # nothing is fetched: only data URIs, in-page anchors, and links to the folder's own files
    for ref in refs.refs:
        assert ref.startswith(("data:", "#", "figures/")), ref
    assert "script" not in refs.tags and "http://" not in page and "https://" not in page
    assert "<style>" in page


def _md_tables(md: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_tables_are_well_formed_and_carry_the_answers(report: Path) -> None:
    md = (report / "report.md").read_text()
    tables = _md_tables(md)
    assert tables
    for t in tables:
        assert all(len(row) == len(t[0]) for row in t), t[0]
        assert all(re.fullmatch(r"-+:?", c) for c in t[1])
    cuda = md.split("### cuda · float32 · forward")[1].split("\n### ")[0]
    scaling = next(t for t in _md_tables(cuda) if "crossover" in t[0])
    rows = {r[0]: dict(zip(scaling[0], r, strict=True)) for r in scaling[2:]}
    # the synthetic window's speedup is n/2000: it wins from 2048 on, ≈2000 interpolated
    assert rows["sparse.sliding_window"]["crossover"] == "2,048 (≈2,000)"
    assert rows["sparse.sliding_window"]["time exp."] == "1.00 ± 0.00"
    assert rows["full.sdpa"]["time exp."] == "2.00 ± 0.00"
    assert rows["full.naive"]["crossover"] == "never (to 8,192)"  # skipped where the baseline ran
    assert rows["sparse.bigbird"]["crossover"].startswith("2,048")  # wins at 512, loses at 1024, then for good
    assert "worker resident memory 9.10 GiB exceeded the limit" in md
    for status in ("oom", "error", "skipped"):
        assert f"| {status} |" in md
    assert "> [!WARNING]" in md and "unstable" in md
    assert "from stored results only" in md


def test_csv_has_a_row_per_case_with_the_figures(report: Path) -> None:
    with open(report / "data.csv") as f:
        rows = list(csv.DictReader(f))
    expected = len(load_run(SYNTHETIC).cases) + len(load_run(REAL_CPU).cases)
    assert len(rows) == expected
    by = {(r["variant"], r["backend"], int(r["seq_len"])): r for r in rows}
    w = by[("sparse.sliding_window", "cuda", 4096)]
    assert float(w["speedup_vs_baseline"]) == pytest.approx(4096 / 2000)
    assert float(w["energy_per_token_j"]) == pytest.approx(300 * 2e-6)
    assert float(w["fraction_of_peak_flops"]) > 0
    oom = by[("full.naive", "cuda", 4096)]
    assert oom["status"] == "oom" and oom["median_s"] == "" and "exceeded the limit" in oom["reason"]
    cpu = by[("full.sdpa", "cpu", 1024)]
    assert cpu["energy_per_token_j"] == "" and "RAPL" in cpu["energy_reason"]


def test_report_reads_and_never_writes_the_runs(tmp_path: Path) -> None:
    before = {run: _digest(run) for run in (SYNTHETIC, REAL_CPU)}
    rendered_report(SYNTHETIC, REAL_CPU)
    assert {run: _digest(run) for run in (SYNTHETIC, REAL_CPU)} == before


def test_nothing_is_run_only_read() -> None:
    """In a fresh process, the terminal report imports no executor, worker or backend."""
    code = (
        "import sys; from attnbench.cli.main import main; "
        f"rc = main(['report', {str(REAL_CPU_ORT)!r}, '--format', 'terminal']); "
        "loaded = [m for m in ('attnbench.engine.executors.local', 'attnbench.engine.worker', "
        "'attnbench.engine.runner', 'attnbench.backends.cpu') "
        "if m in sys.modules]; print('LOADED', loaded); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout


# ----------------------------------------------------------------------------- terminal


def test_terminal_format_prints_tables_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = subprocess.run(
        [*BENCH, "report", str(REAL_CPU_ORT), "--format", "terminal"],
        capture_output=True,
        text=True,
        env=cli_env(COLUMNS="200"),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("Scaling — cpu · float32 · forward", "onnxruntime · float32 · forward", "Cases not ok"):
        assert needle in text
    for status in ("timeout", "unsupported", "skipped"):
        assert status in text
    assert "no calibration for cpu" in text  # new-style peaks with source null and a reason
    assert "cpu vs onnxruntime" in text  # the overlay group
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- labels, grouping


def test_two_hosts_of_one_backend_are_labelled_by_host(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", run_id="20260101-000000-synthetic-aaaa", host="box-a")
    b = write_run(tmp_path / "b", run_id="20260101-000001-synthetic-bbbb", host="box-b", scale=2.0)
    data = ReportData(load_runs([a, b]))
    [group] = data.groups  # one backend, dtype, mode: one group, no overlay
    labels = {data.series_label(k, group) for k in group.series}
    assert "full.sdpa · box-a" in labels and "full.sdpa · box-b" in labels
    # each host's curve is compared with its own host's baseline
    window = next(k for k in group.series if k.curve.variant == "sparse.sliding_window" and k.source.host == "box-b")
    base = data.baseline_for(window, group.series)
    assert base is not None and base.source.host == "box-b"


def test_same_host_twice_is_labelled_by_run_or_by_the_users_names(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", run_id="20260101-000000-nightly-aaaa")
    b = write_run(tmp_path / "b", run_id="20260102-000000-nightly-bbbb")
    data = ReportData(load_runs([a, b]))
    key = next(k for k in data.groups[0].series if k.curve.variant == "full.sdpa" and k.source.run_index == 0)
    assert data.series_label(key, data.groups[0]) == "full.sdpa · nightly-aaaa"
    named = ReportData(load_runs([a, b]), labels=["before", "after"])
    assert named.series_label(key, named.groups[0]) == "full.sdpa · before"
    with pytest.raises(UserError, match="one per run"):
        ReportData(load_runs([a, b]), labels=["only-one"])


def test_a_layer_scope_curve_is_not_compared_with_a_core_baseline() -> None:
    data = ReportData(load_runs([REAL_CPU]))
    [group] = data.groups
    act = next(k for k in group.series if k.curve.variant == "adaptive.act")
    assert data.baseline_for(act, group.series) is None
    assert data.curve_label(act.curve, group) == "adaptive.act [layer]"


def test_sparse_patterns_are_drawn_from_the_patterns_the_cases_stored(tmp_path: Path) -> None:
    """The heatmap is each variant's own mask at a measured length, with the run's window (64), not
    the default: the worker stored it (attnbench.engine.patterns) and the report only reads it."""
    pytest.importorskip("matplotlib")
    from attnbench.report.figures import pattern_figure

    run = write_run(tmp_path / "run")  # synthetic cases carry patterns built by pattern_of
    data = ReportData(load_runs([run]))
    fig, notes = pattern_figure(data)
    assert fig is not None and not notes
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    n, half = 1024, 64 // 2
    band = (n * (2 * half + 1) - half * (half + 1)) / n**2  # pairs with |i - j| <= 32
    stored = next(c for c in load_run(run).cases if c.variant == "sparse.sliding_window" and c.seq_len == n)
    assert stored.pattern is not None and stored.pattern["density"] == band
    assert any(t.startswith("sparse.sliding_window") and "n=1,024" in t and f"{band:.1%}" in t for t in titles)
    assert any(t.startswith("sparse.bigbird") and "n=1,024" in t for t in titles)


def test_a_run_from_before_patterns_were_stored_gets_a_note_not_a_figure() -> None:
    """The real CPU fixture predates stored patterns: nothing is rebuilt, each sparse curve says why."""
    pytest.importorskip("matplotlib")
    from attnbench.report.figures import pattern_figure

    fig, notes = pattern_figure(ReportData(load_runs([REAL_CPU])))
    assert fig is None
    assert len(notes) == 2
    for variant in ("sparse.sliding_window", "sparse.bigbird"):
        [note] = [n for n in notes if n.startswith(variant)]
        assert note.endswith(": pattern not stored in this run (recorded from attnbench 0.2.0 on).")


def test_patterns_are_drawn_without_torch(tmp_path: Path) -> None:
    """In a fresh process, `bench report` draws the stored patterns and never imports torch."""
    run = write_run(tmp_path / "run")
    lines = [json.loads(x) for x in (run / "cases.jsonl").read_text().splitlines()]
    keep = [x for x in lines if x["seq_len"] == 1024 and x["variant"].startswith("sparse.")]  # a quick render
    (run / "cases.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
    code = (
        "import sys; from attnbench.cli.main import main; "
        f"rc = main(['report', {str(run)!r}, '--out', {str(tmp_path / 'out')!r}]); "
        "print('TORCH', 'torch' in sys.modules); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TORCH False" in out.stdout
    assert (tmp_path / "out" / "figures" / "patterns.png").is_file()


# ----------------------------------------------------------------------------- CLI and errors


def _bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no/such/run"], "does not exist"),
        ([str(REAL_CPU), "--baseline", "full.flash"], "--baseline full.flash is not in these runs"),
        ([str(REAL_CPU), str(REAL_CPU)], "is given twice"),
        ([str(REAL_CPU), "--labels", "a,b"], "one per run"),
        ([str(REAL_CPU), "--fit-min-len", "-1"], "--fit-min-len"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *args, "--format", "terminal"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert err.startswith("bench: error: ")


def test_out_folder_holding_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        prepare_out(tmp_path)
    assert main(["report", str(REAL_CPU), "--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_previous_report_is_replaced_and_its_stale_figures_removed(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "old-time.png").write_bytes(b"stale")
    (tmp_path / "index.html").write_text("old")
    prepare_out(tmp_path)
    assert list((tmp_path / "figures").iterdir()) == []


def test_default_folder_is_under_reports_and_named_after_the_runs() -> None:
    assert default_out(["20260101-000000-smoke-ab12"]) == Path("reports/20260101-000000-smoke-ab12")
    assert default_out(["a", "b"]) == Path("reports/a_vs_b")
    assert default_out(["a", "b", "c", "d"]) == Path("reports/a_vs_b_and_2_more")


def test_a_bare_run_id_is_found_under_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(tmp_path / "results" / "20260101-000000-synthetic-gpu0")
    monkeypatch.chdir(tmp_path)
    assert find_run("20260101-000000-synthetic-gpu0") == Path("results/20260101-000000-synthetic-gpu0")
    assert find_run("results/20260101-000000-synthetic-gpu0/run.json") == Path("results/20260101-000000-synthetic-gpu0")


def test_without_out_the_report_goes_under_reports_and_says_where(tmp_path: Path) -> None:
    run = write_run(tmp_path / "results" / "20260101-000000-tiny-0001", run_id="20260101-000000-tiny-0001")
    # one variant at two lengths keeps this render quick
    lines = [json.loads(x) for x in (run / "cases.jsonl").read_text().splitlines()]
    keep = [x for x in lines if x["seq_len"] in (512, 1024) and x["variant"] == "full.sdpa"]
    (run / "cases.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
    out = _bench("report", "20260101-000000-tiny-0001", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "reports" / "20260101-000000-tiny-0001"
    assert (folder / "index.html").is_file()
    assert "reports/20260101-000000-tiny-0001/index.html" in out.stdout


def test_transformed_cases_are_curves_of_their_own_compared_with_the_untransformed(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    lines = [json.loads(x) for x in (run / "cases.jsonl").read_text().splitlines()]
    compiled = []
    for rec in lines:
        if rec["variant"] == "full.sdpa":
            c = json.loads(json.dumps(rec))
            c["case_id"] += "-compile"
            c["transform"] = "compile"
            c["fidelity"] = {"rel_err": 1e-6, "cosine": 1.0, "within": True}
            for k in ("median", "ci95_low", "ci95_high"):
                c["time_s"][k] /= 2
            compiled.append(c)
    (run / "cases.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines + compiled))
    data = ReportData(load_runs([run]))
    [group] = data.groups
    key = next(k for k in group.series if k.curve.transform == "compile")
    assert data.series_label(key, group) == "full.sdpa +compile"
    base = data.baseline_for(key, group.series)
    assert base is not None and base.curve.variant == "full.sdpa" and base.curve.transform == "none"
    [stats] = [s for s in series_stats(data, group) if s.key == key]
    assert [sp.speedup for sp in stats.speedups] == pytest.approx([2.0] * 5)
    from attnbench.report.figures import transforms_figure

    fig, note = transforms_figure(data)
    assert fig is not None and note is None
