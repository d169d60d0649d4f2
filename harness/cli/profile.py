"""`bench profile CASE`: where the time and memory of one case go, under the backend's profiler.

The case is a case of a stored run (`RUN_DIR/CASE_ID`, or `CASE_ID --run RUN_DIR`; a unique
prefix of the id will do), or the one case that `bench run`'s own flags name. It runs in
a fresh worker process, warmed up, then a few calls under the profiler; the files land in
`<run>/profiles/<case_id>/` (a run's case) or `results/profiles/<case_id>/` (flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.core.errors import UserError

if TYPE_CHECKING:
    from attnbench.core.cases import Case
    from attnbench.core.settings import RunSettings

# bench run's flags that name cases (and how to run them), shared so the two never drift.
RUN_FLAGS = (
    "suite",
    "variants",
    "backends",
    "seq_lens",
    "batch",
    "heads",
    "head_dim",
    "dtypes",
    "mode",
    "scope",
    "threads",
    "transforms",
    "param",
    "backend_option",
    "timeout",
    "max_memory",
)
SELECTING = tuple(f for f in RUN_FLAGS if f not in ("suite", "timeout", "max_memory", "backend_option"))
DEFAULT_ROOT = Path("results") / "profiles"
PROFILE_TIMEOUT_S = 900.0  # without --timeout


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "profile",
        help="one case under its backend's profiler: trace, top operators, named steps, memory timeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("case", nargs="?", help="RUN_DIR/CASE_ID, or CASE_ID (or a unique prefix) with --run")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="the run folder holding CASE")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder the case's profile folder goes in")
    p.add_argument("--calls", type=int, default=3, help="calls profiled after warm-up (default 3)")
    p.add_argument("--top", type=int, default=12, help="operators printed (default 12)")
    run_parser = subparsers.choices.get("run")
    if run_parser is not None:
        group = p.add_argument_group("or name one case with bench run's flags")
        for action in run_parser._actions:  # the very same flags, help and parsing as bench run
            if action.dest in RUN_FLAGS:
                group._add_action(action)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.registry import get_backend, load_plugins
    from attnbench.engine.executors.local import LocalExecutor
    from attnbench.report.console import make_console

    if args.calls < 1:
        raise UserError(f"--calls must be at least 1, got {args.calls}")
    load_plugins()
    if args.case is not None or args.run is not None:
        given = [f for f in SELECTING if getattr(args, f, None)]
        if given:
            raise UserError(
                "name the case once: a run's case, or bench run's flags; drop "
                + ", ".join("--" + f.replace("_", "-") for f in given)
            )
        case, settings, root = _case_from_run(args)
    else:
        case, settings, root = _case_from_flags(args)
    avail = get_backend(case.backend).availability()
    if not avail.available:
        raise UserError(f"backend {case.backend} is not available here: {avail.reason}")

    settings = dataclasses.replace(settings, profile=True, profile_dir=str(root.resolve()), profile_calls=args.calls)
    if args.timeout is None:  # one case, asked for by hand: wait for a slow export or compile
        settings = dataclasses.replace(settings, timeout_s=max(PROFILE_TIMEOUT_S, settings.case_timeout()))
    console = make_console()
    console.print(
        f"profiling [bold]{case.label()}[/] ({case.case_id}): {args.calls} call(s) after warm-up, in a fresh worker",
        highlight=False,
        soft_wrap=True,
    )
    executor = LocalExecutor(settings)
    outcome = executor.profile(case)
    if outcome.status != "ok":
        if outcome.traceback and outcome.status == "error":
            sys.stderr.write(outcome.traceback)
        sys.stderr.write(f"bench: profile of {case.case_id} failed ({outcome.status}): {outcome.reason}\n")
        return 1
    print_profile(console, outcome.result["profile"], args.top)
    return 0


def _case_from_run(args: argparse.Namespace) -> tuple[Case, RunSettings, Path]:
    from attnbench.core.results import load_run
    from attnbench.core.settings import RunSettings
    from attnbench.engine.runner import _case_of

    if args.case is None:
        raise UserError("--run needs a CASE_ID: bench profile CASE_ID --run RUN_DIR")
    folder, wanted = args.run, args.case
    if folder is None:
        path = Path(args.case)
        if not (path.parent / "run.json").is_file():
            raise UserError(
                f"{args.case} is not RUN_DIR/CASE_ID (no run.json in {path.parent}); "
                "give the run: bench profile CASE_ID --run RUN_DIR"
            )
        folder, wanted = path.parent, path.name
    result = load_run(folder)
    if not result.cases:
        raise UserError(f"{folder} has no cases yet; finish it with bench run --resume {folder}")
    exact = [c for c in result.cases if c.case_id == wanted]
    found = exact or [c for c in result.cases if c.case_id.startswith(wanted)]
    if len(found) != 1:
        sample = ", ".join(c.case_id for c in (found or result.cases)[:5])
        what = f"{len(found)} cases start with" if found else "no case matches"
        raise UserError(f"{what} '{wanted}' in {folder} (e.g. {sample}); give a full case id")
    rec = found[0]
    raw = dict(result.run.extra.get("settings") or {})
    settings = RunSettings.from_json(raw)
    if settings.plugins and not os.environ.get("ATTNBENCH_PLUGINS"):
        os.environ["ATTNBENCH_PLUGINS"] = settings.plugins  # the variants the run was made with
    root = args.out if args.out is not None else Path(folder) / "profiles"
    return _case_of(rec), settings, root


def _case_from_flags(args: argparse.Namespace) -> tuple[Case, RunSettings, Path]:
    from attnbench.cli.commands import _memory_limit
    from attnbench.core.registry import PLUGINS_ENV
    from attnbench.core.settings import RunSettings
    from attnbench.engine.expand import expand
    from attnbench.engine.suites import load_suite, overrides_from_args, resolve

    if not any(getattr(args, f, None) for f in SELECTING) and args.suite == "default":
        raise UserError(
            "name a case: bench profile RUN_DIR/CASE_ID, or bench run's flags naming one case "
            "(e.g. --variants sparse.lsh --seq-lens 1024 --backends cpu)"
        )
    spec = load_suite(args.suite)
    sweep, suite_settings = resolve(spec, overrides_from_args(args))
    cases = expand(sweep)
    if len(cases) != 1:
        axes = _varying(cases)
        raise UserError(
            f"the flags name {len(cases)} cases, not one"
            + (f" (they differ in {', '.join(axes)})" if axes else "")
            + "; narrow them with --variants, --seq-lens, --backends, ... or give RUN_DIR/CASE_ID"
        )
    settings = RunSettings(
        **suite_settings,
        memory_limit_bytes=_memory_limit(args.max_memory),
        plugins=os.environ.get(PLUGINS_ENV, ""),
    )
    return cases[0], settings, args.out if args.out is not None else DEFAULT_ROOT


def _varying(cases: list[Case]) -> list[str]:
    if not cases:
        return []
    first = cases[0].identity()
    return sorted({k for c in cases[1:] for k, v in c.identity().items() if v != first[k]})


def print_profile(console: Any, profile: dict[str, Any], top: int) -> None:
    """The named steps and the top operators, then where the files are."""
    import json

    from rich.table import Table

    folder = Path(profile["path"])
    summary = json.loads((folder / profile["summary"]).read_text())
    basis = summary.get("time_basis", "self time")
    console.print(
        f"{summary['calls']} call(s), {summary['call_s'] * 1e3:.3f} ms each under the profiler "
        "(its overhead included: the timed figures come from bench run)",
        highlight=False,
    )
    steps = summary.get("steps_all") or []
    if steps:
        t = Table(title="named steps (inclusive, per call)", title_justify="left")
        for col, just in (("step", "left"), ("ms", "right"), ("share of call", "right"), ("allocated MiB", "right")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for s in steps:
            t.add_row(
                "  " * (s["depth"] - 1) + s["name"],
                f"{s['total_s'] * 1e3:.3f}",
                f"{s['share']:.1%}",
                f"{s['allocated_bytes'] / 2**20:.2f}",
            )
        console.print(t)
    t = Table(title=f"top operators by {basis} (per call)", title_justify="left")
    for col, just in (
        ("operator", "left"),
        ("step", "left"),
        ("calls", "right"),
        ("self ms", "right"),
        ("share", "right"),
        ("device ms", "right"),
        ("allocated MiB", "right"),
    ):
        t.add_column(col, justify=just, no_wrap=col == "operator")  # type: ignore[arg-type]
    for o in summary.get("ops", [])[:top]:
        t.add_row(
            o["name"],
            o["step"] or "-",
            f"{o['count']:g}",
            f"{o['self_s'] * 1e3:.3f}",
            f"{o['share']:.1%}",
            "-" if o["device_s"] is None else f"{o['device_s'] * 1e3:.3f}",
            f"{o['allocated_bytes'] / 2**20:.2f}",
        )
    console.print(t)
    for name, m in (summary.get("metrics") or {}).items():
        console.print(
            f"torch-xla {name}: {m['count']} × {m['total_s'] / max(1, m['count']) * 1e3:.3f} ms", highlight=False
        )
    for note in summary.get("notes", []):
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    files = [profile[k] for k in ("trace", "ops_md", "ops_csv", "memory_png", "summary")]
    if profile.get("tensorboard"):
        files.append(profile["tensorboard"] + "/")
    console.print(f"files in {folder}: {', '.join(files)}", highlight=False, soft_wrap=True)
    console.print(
        "open trace.json in https://ui.perfetto.dev or chrome://tracing"
        + ("; tensorboard --logdir " + str(folder / profile["tensorboard"]) if profile.get("tensorboard") else ""),
        highlight=False,
        soft_wrap=True,
    )
