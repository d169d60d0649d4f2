"""`bench export RUN --format F`: a run in pytest-benchmark, Bencher BMF or github-action-benchmark JSON.

github-action-benchmark takes one tool per file: `--format github-action-benchmark -o F.json`
writes the customSmallerIsBetter entries (time, peak memory) to F.json and the
customBiggerIsBetter ones (throughput) to F-throughput.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from attnbench.cli.history import BRANCH_HELP, HISTORY_HELP
from attnbench.core import strict_json
from attnbench.core.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from attnbench.analysis.exporters import FORMATS

    p = subparsers.add_parser(
        "export",
        help="a run as pytest-benchmark, Bencher (BMF) or github-action-benchmark JSON",
        description=__doc__,
    )
    p.add_argument("run", help="run folder, or history reference: latest, latest~N, a run id")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--history", metavar="PATH", help=HISTORY_HELP)
    p.add_argument("--suite", help="resolve latest/latest~N among runs of this suite")
    p.add_argument("--branch", metavar="NAME", help="resolve latest/latest~N: " + BRANCH_HELP)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.analysis.exporters import COMPANIONS, export
    from attnbench.analysis.history import History, branch_filter, history_path
    from attnbench.cli.compare import _is_folder_ref
    from attnbench.core.results import load_run

    if _is_folder_ref(args.run):
        result = load_run(args.run)
    else:
        path = history_path(args.history)
        if path is None:
            raise UserError("the history is turned off (ATTNBENCH_HISTORY=off); give a run folder instead")
        # --branch counts for latest/latest~N only (as in bench compare): a run id names one run.
        branch = branch_filter(args.branch) if args.run.startswith("latest") else None
        with History.open(path, create=False) as history:
            result = history.load(history.resolve(args.run, args.suite, branch))
    data = export(result, args.format)
    if not args.output:
        sys.stdout.write(_text(data))
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    _write(args.output, args.format, data)
    if args.format in COMPANIONS:
        fmt, suffix = COMPANIONS[args.format]
        path = args.output.with_name(f"{args.output.stem}{suffix}{args.output.suffix}")
        extra = export(result, fmt)
        if extra:
            _write(path, fmt, extra)
        else:  # github-action-benchmark refuses a file with no entries
            sys.stderr.write(f"no {fmt} entries in this run: {path} not written\n")
    return 0


def _text(data: Any) -> str:
    return strict_json.dumps(data, indent=2) + "\n"


def _write(path: Path, fmt: str, data: Any) -> None:
    path.write_text(_text(data))
    n = len(data) if not isinstance(data, dict) or "benchmarks" not in data else len(data["benchmarks"])
    sys.stderr.write(f"{n} entries of {fmt} written to {path}\n")
