"""`bench profile CASE`: where the time and memory of one case go, under the backend's profiler.

The case is a case of a stored run (`RUN_DIR/CASE_ID`, or `CASE_ID --run RUN_DIR`; a unique
prefix of the id will do), or the one case that `bench run`'s own flags name. It runs in
a fresh worker process, warmed up, then a few calls under the profiler; the files land in
`<run>/profiles/<case_id>/` (a run's case) or `results/profiles/<case_id>/` (flags).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.cli.parsing import add_documented_command
from attnbench.cli.run import stdout_to_stderr
from attnbench.cli.run_flags import CASE_FLAGS, SELECTING, add_run_flags, memory_limit_bytes
from attnbench.core import strict_json
from attnbench.core.errors import EXIT_FAILED, UserError

if TYPE_CHECKING:
    from attnbench.core.cases import Case
    from attnbench.core.settings import RunSettings

DEFAULT_ROOT = Path("results") / "profiles"
PROFILE_TIMEOUT_S = 900.0  # without --timeout


HELP = "one case under its backend's profiler: trace, top operators, named steps, memory timeline"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_documented_command(subparsers, "profile", HELP, __doc__)
    p.add_argument("case", nargs="?", help="RUN_DIR/CASE_ID, or CASE_ID (or a unique prefix) with --run")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="the run folder holding CASE")
    p.add_argument("--out", type=Path, metavar="DIR", help="folder the case's profile folder goes in")
    p.add_argument("--calls", type=int, default=3, help="calls profiled after warm-up (default 3)")
    p.add_argument("--top", type=int, default=12, help="operators printed (default 12)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the profile as JSON on stdout (the case, its files, named steps, top operators; "
        "on failure its status and reason), progress on stderr",
    )
    add_run_flags(p.add_argument_group("or name one case with bench run's flags"), only=CASE_FLAGS)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.registry import get_backend, load_plugins
    from attnbench.engine.executors.local import LocalExecutor
    from attnbench.report.console import make_console
    from attnbench.report.escaping import line
    from attnbench.report.profiles import print_profile, write_profile_files

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
    console = make_console(file=sys.stderr if args.json else None)
    console.print(
        line(
            "profiling ",
            (case.label(), "bold"),
            f" ({case.case_id}): {args.calls} call(s) after warm-up, in a fresh worker",
        ),
        soft_wrap=True,
    )
    executor = LocalExecutor(settings)
    with stdout_to_stderr() if args.json else contextlib.nullcontext():
        outcome = executor.profile(case)
    if outcome.status != "ok":
        if outcome.traceback and outcome.status == "error":
            sys.stderr.write(outcome.traceback)
        sys.stderr.write(f"bench: profile of {case.case_id} failed ({outcome.status}): {outcome.reason}\n")
        if args.json:
            print(strict_json.dumps(profile_json(case, outcome.status, outcome.reason, None, args.top), indent=2))
        return EXIT_FAILED
    profile = outcome.result["profile"]
    write_profile_files(Path(profile["path"]))
    if args.json:
        print(strict_json.dumps(profile_json(case, "ok", None, profile, args.top), indent=2))
        return 0
    print_profile(console, profile, args.top)
    return 0


def profile_json(
    case: Case, status: str, reason: str | None, profile: dict[str, Any] | None, top: int
) -> dict[str, Any]:
    """bench profile --json: the case, and what print_profile shows (the named steps, the top
    operators) with where the files are; for a failed profile, its status and why."""
    out: dict[str, Any] = {"case_id": case.case_id, "label": case.label(), "status": status, "reason": reason}
    if profile is None:
        return out
    summary = json.loads((Path(profile["path"]) / profile["summary"]).read_text())
    files = ("trace", "ops_csv", "ops_md", "memory_png", "summary", "tensorboard")
    out.update(
        folder=profile["path"],
        files={name: profile[name] for name in files if profile.get(name)},
        profiler=profile.get("profiler"),
        calls=summary["calls"],
        call_s=summary["call_s"],
        time_basis=summary.get("time_basis"),
        steps=summary.get("steps_all") or [],
        ops=summary.get("ops", [])[:top],
        notes=summary.get("notes", []),
    )
    return out


def _case_from_run(args: argparse.Namespace) -> tuple[Case, RunSettings, Path]:
    from attnbench.core.results import load_run
    from attnbench.core.settings import RunSettings

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
    raw = dict(result.run.settings or {})
    settings = RunSettings.from_json(raw)
    if settings.plugins and not os.environ.get("ATTNBENCH_PLUGINS"):
        os.environ["ATTNBENCH_PLUGINS"] = settings.plugins  # the variants the run was made with
    root = args.out if args.out is not None else Path(folder) / "profiles"
    return rec.case(), settings, root


def _case_from_flags(args: argparse.Namespace) -> tuple[Case, RunSettings, Path]:
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
        memory_limit_bytes=memory_limit_bytes(args.max_memory),
        plugins=os.environ.get(PLUGINS_ENV, ""),
    )
    return cases[0], settings, args.out if args.out is not None else DEFAULT_ROOT


def _varying(cases: list[Case]) -> list[str]:
    if not cases:
        return []
    first = cases[0].identity()
    return sorted({k for c in cases[1:] for k, v in c.identity().items() if v != first[k]})
