"""`bench report RUN [RUN ...]`: render stored runs as HTML, Markdown, figures and CSV, or in the terminal."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
from pathlib import Path

from attnbench.core.cases import BASELINE_VARIANT
from attnbench.core.errors import UserError

FORMATS = ("files", "terminal", "all")
OUTPUTS = ("index.html", "report.md", "data.csv", "figures")
REPORTS_DIR = Path("reports")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="render stored runs as scaling-curve and comparison reports (never re-runs anything)",
        description="Render one or more stored runs as a self-contained index.html, a GitHub-flavoured report.md, "
        "figures/ (PNG and SVG) and data.csv; several runs overlay in the same figures.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (results/<run_id>), its run.json, or a run id")
    p.add_argument("--out", type=Path, help="report folder (default: reports/<run_id>, or one named after the runs)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="files",
        help="files: write the report folder (default); terminal: print the tables only; all: both",
    )
    p.add_argument("--baseline", help="variant the speedups and crossovers are measured against (default full.sdpa)")
    p.add_argument("--fit-min-len", type=int, default=0, metavar="N", help="fit scaling exponents over lengths ≥ N")
    p.add_argument("--title", help="report title (default: suite and host of the runs)")
    p.add_argument(
        "--labels",
        type=lambda t: [x.strip() for x in t.split(",")],
        metavar="A,B,...",
        help="a short name per run, in order, for legends (e.g. before,after); default: host, or run id",
    )
    p.add_argument(
        "--figure-base-url",
        metavar="URL",
        help="where the report folder is published; report.md then shows the figures from URL/figures/",
    )
    return p


def default_out(run_ids: list[str]) -> Path:
    name = (
        run_ids[0]
        if len(run_ids) == 1
        else "_vs_".join(run_ids[:2]) + (f"_and_{len(run_ids) - 2}_more" if len(run_ids) > 2 else "")
    )
    return REPORTS_DIR / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def prepare_out(folder: Path) -> None:
    """Make the folder, replacing a previous report there but nothing else."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give --out a folder")
    if folder.is_dir():
        others = [p.name for p in folder.iterdir() if p.name not in OUTPUTS]
        if others and not (folder / "index.html").exists():
            raise UserError(f"{folder} holds other files ({', '.join(sorted(others)[:3])}); choose an empty --out")
        if (folder / "figures").is_dir():
            shutil.rmtree(folder / "figures")  # stale figures of an earlier report must not linger
    try:
        (folder / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the report to {folder}: {exc.strerror or exc}; choose another --out") from None


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.report.console import make_console
    from attnbench.report.data import ReportData, load_runs
    from attnbench.report.report import build

    if args.fit_min_len < 0:
        raise UserError(f"--fit-min-len must be a length ≥ 0, got {args.fit_min_len}")
    runs = load_runs(args.runs)
    data = ReportData(runs, baseline=args.baseline or BASELINE_VARIANT, labels=args.labels)
    if args.baseline and not data.baseline_present:
        present = sorted({p.case.variant for p in data.points})
        raise UserError(f"--baseline {args.baseline} is not in these runs; choose one of: {', '.join(present)}")
    report = build(data, "bench " + shlex.join(argv), title=args.title, fit_min_len=args.fit_min_len)
    if not data.points and report.quality is None:  # a `bench quality` run has models instead of cases
        raise UserError(
            "these runs hold no cases or quality records yet; finish them with `bench run --resume RUN` first"
        )
    console = make_console()
    if args.format in ("terminal", "all"):
        from attnbench.report.terminal import print_report

        print_report(console, report)
    if args.format == "terminal":
        return 0

    from attnbench.report.csvdata import write_csv
    from attnbench.report.escaping import line
    from attnbench.report.figures import render
    from attnbench.report.html import render_html
    from attnbench.report.markdown import render_markdown

    folder = args.out if args.out is not None else default_out([r.run.run_id for r in runs])
    prepare_out(folder)
    figs = render(data, report.stats, folder / "figures")
    if report.quality is not None:
        from attnbench.report.quality_figures import render_quality

        files, notes = render_quality(report.quality, folder / "figures")
        figs.files.extend(files)
        figs.notes["quality"] = notes
    (folder / "index.html").write_text(render_html(report, figs, link_base=folder))
    (folder / "report.md").write_text(render_markdown(report, figs, args.figure_base_url, link_base=folder))
    write_csv(data, report.stats, folder / "data.csv")
    console.print(
        line(
            f"report: {folder / 'index.html'} (also report.md, data.csv, {len(figs.files)} figures in "
            f"{folder / 'figures'})"
        ),
        soft_wrap=True,
    )
    return 0
