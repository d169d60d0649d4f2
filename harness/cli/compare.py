"""`bench compare BASELINE CURRENT`: per-case verdicts between two runs, as a table, Markdown and JSON.

BASELINE and CURRENT are run folders or history references (`latest`, `latest~1`, a run
id or a unique prefix of one); `latest` and `latest~N` count one branch's runs (--branch, by
default the branch of the checkout attnbench runs from; --branch any: every run). Exit
status: 0, or 1 with --fail-on-regression when a case regressed or now fails, or when a case
lost its measurement (unless --allow-missing): missing from the current run, failing on both
sides, or measured in the baseline and now skipped or unsupported; 2 for a user error
(including runs from different environments).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnbench.cli.history import BRANCH_HELP, HISTORY_HELP
from attnbench.cli.parsing import add_documented_command
from attnbench.core import strict_json
from attnbench.core.errors import EXIT_REGRESSION, UserError

if TYPE_CHECKING:
    from attnbench.analysis.compare import CaseComparison, Comparison
    from attnbench.analysis.history import History
    from attnbench.core.results import RunResult

NOISE_RUNS = 10


@dataclass(frozen=True)
class CompareRequest:
    """What bench compare is asked for (its flags, by dest; bench ab fills one in for its pair)."""

    baseline: str  # run folder, or history reference
    current: str
    history: str | None = None
    suite: str | None = None
    branch: str | None = None  # whose runs latest/latest~N count: a name, "any", or None (this checkout's)
    threshold: float | None = None
    alpha: float | None = None
    memory_threshold: float | None = None
    energy_threshold: float | None = None
    busy_share: float | None = None
    thresholds: Path | None = None
    time_basis: str = "raw"
    noise_runs: int = NOISE_RUNS
    allow_env_mismatch: bool = False
    fail_on_regression: bool = False
    allow_missing: bool = False  # with fail_on_regression: cases that lost their measurement do not fail it
    markdown: Path | None = None
    json: str | None = None  # FILE, or "-": the JSON to stdout instead of the table
    print_json: bool = False  # the JSON to stdout instead of the table, as well as to a json FILE (bench ab --json)


HELP = "compare two runs: ratio of medians with a bootstrap CI, Mann–Whitney U, a verdict per case"
FAIL_HELP = (
    f"exit {EXIT_REGRESSION} when a case regressed or now fails, or lost its measurement: missing from the current "
    "run, failing on both sides, or measured in the baseline and now skipped or unsupported"
)
ALLOW_MISSING_HELP = (
    "with --fail-on-regression: cases that lost their measurement do not fail it (a case skipped or unsupported "
    "on both sides never does)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_documented_command(subparsers, "compare", HELP, __doc__)
    p.add_argument("baseline", help="run folder, or history reference: latest, latest~N, a run id")
    p.add_argument("current", help="run folder, or history reference: latest, latest~N, a run id")
    p.add_argument("--history", metavar="PATH", help=HISTORY_HELP)
    p.add_argument("--suite", help="resolve latest/latest~N among runs of this suite (default: the other run's suite)")
    p.add_argument("--branch", metavar="NAME", help="resolve latest/latest~N: " + BRANCH_HELP)
    p.add_argument("--threshold", type=float, help="relative time change that counts (default 0.05, or the suite's)")
    p.add_argument("--alpha", type=float, help="significance level of the Mann–Whitney test (default 0.01)")
    p.add_argument("--memory-threshold", type=float, help="relative peak-memory change that counts (default 0.10)")
    p.add_argument("--energy-threshold", type=float, help="relative energy change that counts (default 0.10)")
    p.add_argument(
        "--busy-share",
        type=float,
        help="distrust a time change measured while other processes used more of the CPU than this (default 0.25)",
    )
    p.add_argument(
        "--thresholds", type=Path, metavar="TOML", help="a suite or thresholds file whose [compare] table to use"
    )
    p.add_argument(
        "--time-basis",
        choices=("raw", "host-relative"),  # attnbench.analysis.time_judgements.TIME_BASES, not imported here
        default="raw",
        help="judge time on raw samples (default) or host-relative ones (each sample over the host's reference "
        "kernel timed around it; CPU cases only): see README before choosing host-relative",
    )
    p.add_argument(
        "--noise-runs",
        type=int,
        default=NOISE_RUNS,
        metavar="K",
        help=f"estimate each case's run-to-run noise from up to K earlier runs of the suite in the history "
        f"(default {NOISE_RUNS}; 0: judge on the two runs alone)",
    )
    p.add_argument("--allow-env-mismatch", action="store_true", help="compare runs from different hosts or versions")
    p.add_argument("--fail-on-regression", action="store_true", help=FAIL_HELP)
    p.add_argument("--allow-missing", action="store_true", help=ALLOW_MISSING_HELP)
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report as Markdown")
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON ('-': to stdout, no table)")
    return p


def _is_folder_ref(ref: str) -> bool:
    return Path(ref).exists() or "/" in ref or ref.startswith(".")


def _earlier_runs(current: RunResult, args: CompareRequest, opened: dict[str, History]) -> list[RunResult]:
    """Up to --noise-runs complete runs of the current run's suite that started before it,
    newest first, from the history when there is one (none otherwise)."""
    from attnbench.analysis.history import History, history_path

    path = history_path(args.history)
    if path is None or not path.exists():
        return []
    h = opened.get("h") or opened.setdefault("h", History.open(path, create=False))
    rows = [r for r in h.runs(suite=current.run.suite, complete_only=True) if r.run_id != current.run.run_id]
    rows = [r for r in rows if r.started_at < current.run.started_at][: args.noise_runs]
    return [h.load(r.run_id) for r in rows]


def run(args: argparse.Namespace, argv: list[str]) -> int:
    fields = dataclasses.fields(CompareRequest)
    return compare(CompareRequest(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}))


def lost_measurements(cmp: Comparison) -> list[CaseComparison]:
    """The `missing` cases that fail --fail-on-regression unless --allow-missing: not in the current
    run, failing there (in the baseline too, or skipped there), or measured in the baseline and now
    not (skipped, unsupported). Skipped or unsupported on both sides is both sweeps' decision."""
    from attnbench.analysis.compare import FAILED_STATUSES

    return [
        c
        for c in cmp.cases
        if c.verdict == "missing"
        and (c.current_status is None or c.current_status in FAILED_STATUSES or c.baseline_status == "ok")
    ]


def _ids(cases: list[CaseComparison]) -> str:
    return ", ".join(c.case_id for c in cases[:5]) + (" ..." if len(cases) > 5 else "")


def compare(args: CompareRequest) -> int:
    """Judge the current run against the baseline; print, and write what was asked for.
    Returns the exit code (EXIT_REGRESSION with fail_on_regression when a case regressed)."""
    from attnbench.analysis.compare import compare_runs, suite_compare_config
    from attnbench.analysis.history import History, branch_filter, history_path
    from attnbench.core.results import load_run
    from attnbench.core.thresholds import load_compare_config
    from attnbench.report.compare_tables import render_markdown, render_table
    from attnbench.report.console import make_console

    opened: dict[str, History] = {}

    def history() -> History:
        if "h" not in opened:
            path = history_path(args.history)
            if path is None:
                raise UserError("the history is turned off (ATTNBENCH_HISTORY=off); give run folders instead")
            opened["h"] = History.open(path, create=False)
        return opened["h"]

    branches: dict[str, str | None] = {}  # --branch resolved once, and only for a latest reference

    def load(ref: str, suite: str | None) -> RunResult:
        if _is_folder_ref(ref):
            return load_run(ref)
        h = history()
        if ref.startswith("latest") and "b" not in branches:
            branches["b"] = branch_filter(args.branch)
        return h.load(h.resolve(ref, suite, branches.get("b")))

    if args.noise_runs < 0:
        raise UserError(f"--noise-runs must be 0 or more, got {args.noise_runs}")
    try:
        refs = (args.baseline, args.current)
        suite = args.suite
        # Resolve a concrete reference first, so `latest` means the latest of the same suite.
        order = sorted(range(2), key=lambda i: refs[i].startswith("latest"))
        loaded: dict[int, RunResult] = {}
        for i in order:
            loaded[i] = load(refs[i], suite)
            suite = suite or loaded[i].run.suite
        baseline, current = loaded[0], loaded[1]
        noise_runs = _earlier_runs(current, args, opened) if args.noise_runs else None
    finally:
        for h in opened.values():
            h.close()
    if baseline.run.run_id == current.run.run_id:
        raise UserError(
            f"both references name run {current.run.run_id}; compare two different runs (e.g. latest~1 latest)"
        )
    config = load_compare_config(args.thresholds) if args.thresholds else suite_compare_config(current.run)
    config = config.with_overrides(
        time=args.threshold,
        alpha=args.alpha,
        memory=args.memory_threshold,
        energy=args.energy_threshold,
        busy_share=args.busy_share,
    )
    cmp = compare_runs(
        baseline,
        current,
        config,
        allow_env_mismatch=args.allow_env_mismatch,
        refs=refs,
        noise_runs=noise_runs,
        time_basis=args.time_basis,
    )

    markdown = render_markdown(cmp)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown)
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a") as f:
            f.write(markdown + "\n")
    if args.json and args.json != "-":
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(strict_json.dumps(cmp.to_json(), indent=2) + "\n")
    if args.json == "-" or args.print_json:
        sys.stdout.write(strict_json.dumps(cmp.to_json(), indent=2))
        sys.stdout.write("\n")
    else:
        console = make_console(log_width=170)  # CI logs: room for every column (unless COLUMNS is set)
        render_table(cmp, console)
    if not args.fail_on_regression:
        return 0
    lost = [] if args.allow_missing else lost_measurements(cmp)
    problems = []
    if cmp.failing:
        problems.append(f"{len(cmp.failing)} case(s) regressed or failed: {_ids(cmp.failing)}")
    if lost:
        problems.append(
            f"{len(lost)} case(s) missing or not measured now: {_ids(lost)} (--allow-missing lets them pass)"
        )
    if problems:
        sys.stderr.write("bench compare: " + "; ".join(problems) + "\n")
        return EXIT_REGRESSION
    return 0
