"""`bench history`: ingest runs made elsewhere, list runs, show a metric's trend, export a run,
find the commit at which a case moved.

bench history ingest DIR_OR_FILE...     run folders (searched recursively) or pytest-benchmark JSON
bench history list                      runs, newest first
bench history show --variant full.sdpa --seq-len 1024 --metric time    table + plot
bench history export latest results/baselines/nightly                  a run folder again
bench history bisect time CASE_ID       the first run past the threshold, with the run before it

list, show, export and bisect see one branch's runs (and those of unknown branch): --branch
NAME, by default the branch of the checkout attnbench runs from; --branch any sees every run.
bisect exits 0 when it finds a step, 1 when it finds none, 2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attnbench.cli.parsing import add_documented_command
from attnbench.core import strict_json
from attnbench.core.errors import EXIT_FAILED, EXIT_USER_ERROR, UserError

HISTORY_HELP = "history file (default: $ATTNBENCH_HISTORY or results/history.sqlite)"
BRANCH_HELP = (
    "only runs of this branch (and of unknown branch) count (default: the branch of the checkout attnbench runs "
    "from; 'any': every run)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_documented_command(
        subparsers, "history", "the run history (SQLite): ingest, list, show a trend, export, bisect", __doc__
    )
    sub = p.add_subparsers(dest="history_command", metavar="SUBCOMMAND")

    ingest = sub.add_parser("ingest", help="add run folders (recursively) or pytest-benchmark JSON files")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ingest.add_argument("--include-incomplete", action="store_true", help="also add interrupted runs")

    ls = sub.add_parser("list", help="runs in the history, newest first")
    ls.add_argument("--suite", help="only runs of this suite")
    ls.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50; 0: all)")
    ls.add_argument("--json", action="store_true", help="print the runs as JSON (for scripts)")

    show = sub.add_parser("show", help="a metric's trend for a case or a variant, as a table and a plot")
    show.add_argument("--case", help="a case_id")
    show.add_argument("--variant", help="a variant, e.g. full.sdpa (one line per length)")
    show.add_argument("--seq-len", type=int, help="only this sequence length")
    show.add_argument("--backend", help="only this backend")
    show.add_argument("--suite", help="only runs of this suite")
    show.add_argument("--metric", default="time", help="time, tokens_per_s, flops_per_s, memory, energy")
    show.add_argument("--limit", type=int, help="only the last N runs")
    show.add_argument("--plot", type=Path, metavar="PNG", help="where to write the plot (default: reports/history/...)")
    show.add_argument("--no-plot", action="store_true", help="table only")
    show.add_argument(
        "--json", action="store_true", help="print the trend as JSON (for scripts; a plot only with --plot)"
    )

    export = sub.add_parser("export", help="write a run from the history as a run folder (e.g. to pin a baseline)")
    export.add_argument("ref", help="latest, latest~N, or a run id")
    export.add_argument("folder", type=Path)
    export.add_argument("--suite", help="resolve latest/latest~N among runs of this suite")

    bisect = sub.add_parser(
        "bisect",
        help="the first run (in commit order) at which a case's metric moved past bench compare's threshold",
    )
    bisect.add_argument("metric", help="time (median seconds per call), memory (peak bytes) or energy (J per call)")
    bisect.add_argument("case", help="a case_id, or a unique prefix of one")
    bisect.add_argument("--suite", help="only runs of this suite")
    bisect.add_argument(
        "--threshold",
        type=float,
        help="relative change that counts (default: the suite's [compare] threshold for the metric, as bench compare)",
    )
    bisect.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")

    for q in (ls, show, export, bisect):
        q.add_argument("--branch", metavar="NAME", help=BRANCH_HELP)
    for q in (ingest, ls, show, export, bisect):
        q.add_argument("--history", metavar="PATH", help=HISTORY_HELP)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.analysis.history import History, history_path

    if not args.history_command:
        raise UserError("say what to do: bench history ingest|list|show|export|bisect (see bench history --help)")
    path = history_path(args.history)
    if path is None:
        raise UserError("the history is turned off (ATTNBENCH_HISTORY=off); give --history PATH")
    with History.open(path, create=args.history_command == "ingest") as history:
        commands = {"ingest": _ingest, "list": _list, "show": _show, "export": _export, "bisect": _bisect}
        return commands[args.history_command](history, args)


def _ingest(history: Any, args: argparse.Namespace) -> int:
    from attnbench.analysis.history import ingest_paths
    from attnbench.report.console import make_console
    from attnbench.report.escaping import line

    console = make_console()
    report = ingest_paths(history, args.paths, include_incomplete=args.include_incomplete)
    for path, why in report.skipped:
        console.print(line(("skipped", "yellow"), f" {path}: {why}"), soft_wrap=True)
    console.print(
        line(
            f"{len(report.added)} run(s) added, {len(report.replaced)} replaced, {len(report.skipped)} skipped "
            f"→ {history.path}"
        )
    )
    return 0 if report.added or report.replaced or not report.skipped else EXIT_USER_ERROR


def _list(history: Any, args: argparse.Namespace) -> int:
    from attnbench.analysis.history import branch_filter
    from attnbench.report.console import make_console
    from attnbench.report.escaping import LiteralTable, line

    branch = branch_filter(args.branch)
    runs = history.runs(suite=args.suite, limit=args.limit or None, branch=branch)
    if args.json:
        import dataclasses

        print(strict_json.dumps([dataclasses.asdict(r) for r in runs], indent=2))
        return 0
    console = make_console()
    on = f" on branch {branch}" if branch else ""
    if not runs:
        console.print(line(f"no runs in {history.path}" + (f" of suite {args.suite}" if args.suite else "") + on))
        return 0
    table = LiteralTable(title=f"{history.path}{on}", title_justify="left")
    for col in ("ref", "run_id", "suite", "started (UTC)", "status", "cases ok", "host", "commit", "branch", "from"):
        table.add_column(col)
    complete = 0
    for r in runs:
        ref = ""
        if r.status == "complete":
            ref = "latest" if complete == 0 else f"latest~{complete}"
            complete += 1
        commit = (r.git_commit or "-")[:10] + ("+dirty" if r.git_dirty else "")
        table.add_row(
            ref,
            r.run_id,
            r.suite,
            r.started_at[:19],
            r.status,
            f"{r.ok}/{r.cases}",
            r.hostname or "-",
            commit,
            r.branch or "-",
            r.origin,
        )
    console.print(table)
    if branch:
        console.print(
            line((f"runs of branch {branch} and of unknown branch ('-'); --branch any lists every run", "dim"))
        )
    if not args.suite and len({r.suite for r in runs}) > 1:
        console.print(line(("refs count every suite; with --suite they count that suite's runs", "dim")))
    return 0


def _show(history: Any, args: argparse.Namespace) -> int:
    from attnbench.analysis.history import METRICS, branch_filter
    from attnbench.report.console import make_console
    from attnbench.report.escaping import LiteralTable, line, literal
    from attnbench.report.history_figure import trend_figure

    if args.metric not in METRICS:
        raise UserError(f"unknown metric '{args.metric}'; choose from {', '.join(METRICS)}")
    if not args.case and not args.variant:
        raise UserError("say which case: --case CASE_ID, or --variant NAME (optionally --seq-len N)")
    rows = history.trend(
        args.metric,
        case_id=args.case,
        variant=args.variant,
        seq_len=args.seq_len,
        suite=args.suite,
        backend=args.backend,
        limit=args.limit,
        branch=branch_filter(args.branch),
    )
    what = args.case or args.variant + (f" n={args.seq_len}" if args.seq_len else "")
    if not rows:
        raise UserError(f"no measured {args.metric} for {what} in {history.path}; see `bench history list`")
    _, unit, scale = METRICS[args.metric]
    if args.json:
        if args.plot:
            trend_figure(rows, args.metric, what, args.plot)
        # Values in the history's units (seconds, bytes, ...); the table shows value × scale in `unit`.
        plot = str(args.plot) if args.plot else None
        trend = {"metric": args.metric, "unit": unit, "scale": scale, "of": what, "plot": plot, "rows": rows}
        print(strict_json.dumps(trend, indent=2, default=str))
        return 0
    console = make_console()
    table = LiteralTable(title=f"{args.metric} ({unit}) of {what}", title_justify="left")
    for col in ("started (UTC)", "run_id", "commit", "case", "n", "value", "95% CI", "vs previous", "stable"):
        table.add_column(col, justify="right" if col in ("n", "value", "95% CI", "vs previous") else "left")
    previous: dict[str, float] = {}
    for r in rows:
        value = r["value"] * scale
        ci = "-"
        if r["ci95_low"] is not None and r["ci95_high"] is not None:
            ci = f"{r['ci95_low'] * scale:.4g} – {r['ci95_high'] * scale:.4g}"
        prev = previous.get(r["case_id"])
        delta = "-" if prev is None or prev == 0 else f"{value / prev - 1:+.1%}"
        previous[r["case_id"]] = value
        table.add_row(
            r["started_at"][:19],
            r["run_id"],
            (r["git_commit"] or "-")[:10],
            r["case_id"],
            str(r["seq_len"]),
            f"{value:.4g}",
            ci,
            delta,
            {None: literal("-"), 1: literal("yes"), 0: literal("no", "yellow")}[r["stable"]],
        )
    console.print(table)
    if not args.no_plot:
        slug = (args.case or args.variant + (f"-n{args.seq_len}" if args.seq_len else "")).replace("/", "_")
        out = args.plot or Path("reports") / "history" / f"{slug}-{args.metric}.png"
        trend_figure(rows, args.metric, what, out)
        console.print(line(f"plot: {out}"))
    return 0


def _export(history: Any, args: argparse.Namespace) -> int:
    from attnbench.analysis.history import branch_filter, export_run

    run_id = history.resolve(args.ref, args.suite, branch_filter(args.branch))
    export_run(history.load(run_id), args.folder)
    print(f"run {run_id} written to {args.folder}")
    return 0


def _bisect(history: Any, args: argparse.Namespace) -> int:
    from attnbench.analysis.history import METRICS, branch_filter
    from attnbench.report.console import make_console
    from attnbench.report.escaping import LiteralTable, line

    branch = branch_filter(args.branch)
    found = history.bisect(args.metric, args.case, branch=branch, suite=args.suite, threshold=args.threshold)
    if args.json:
        print(strict_json.dumps(found.to_json(), indent=2))
        return 0 if found.found else EXIT_FAILED
    _, unit, scale = METRICS[args.metric]
    on = f"branch {branch}" if branch else "every branch"
    first, last = found.first, found.last
    walked = f"{found.runs} runs on {on} from {_when(first)} ({_commit(first)}) to {_when(last)} ({_commit(last)})"
    console = make_console()
    if not found.found:
        th = f"±{found.threshold:.0%}" if found.threshold is not None else "the threshold"
        console.print(
            line(
                f"no step in {args.metric} of {found.case_id}: of {walked}, none moved past {th} of the first "
                "as bench compare judges it"
            ),
            soft_wrap=True,
        )
        return EXIT_FAILED
    assert found.before is not None and found.after is not None and found.change is not None
    console.print(
        line(
            f"{args.metric} of {found.case_id}: {walked}, each judged against the first as bench compare judges "
            f"(threshold {found.threshold:.0%}, {found.config_source})"
        ),
        soft_wrap=True,
    )
    step = f", {found.step - 1:+.1%} on the run before" if found.step is not None else ""
    console.print(
        line(
            (f"first step: {found.verdict}", "red" if found.verdict == "regression" else "green"),
            f" {found.change - 1:+.1%} against the first{step}, at commit {_commit(found.after)} "
            f"({_when(found.after)})",
        ),
        soft_wrap=True,
    )
    table = LiteralTable()
    for col in ("", "run_id", "commit", "commit time (UTC)", "branch", f"{args.metric} ({unit})", "95% CI"):
        table.add_column(col, justify="right" if col in (f"{args.metric} ({unit})", "95% CI") else "left")
    for side, point in (("before", found.before), ("after", found.after)):
        ci = "-"
        if point.ci95_low is not None and point.ci95_high is not None:
            ci = f"{point.ci95_low * scale:.4g} – {point.ci95_high * scale:.4g}"
        table.add_row(
            side,
            point.run_id,
            _commit(point),
            (point.commit_time or "-")[:19],
            point.branch or "-",
            f"{point.value * scale:.4g}",
            ci,
        )
    console.print(table)
    for note in found.notes:
        console.print(line(("note: ", "dim"), note), soft_wrap=True)
    return 0


def _commit(point: Any) -> str:
    return (point.git_commit or "-")[:10] + ("+dirty" if point.git_dirty else "")


def _when(point: Any) -> str:
    """When a run sits in the branch: its commit's time, else (marked) its start."""
    return point.commit_time[:19] if point.commit_time else f"started {point.started_at[:19]}"
