"""`bench run`: run a suite (default: the built-in 'default' suite), or finish an interrupted run."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.cli.run_flags import SWEEP_FLAGS, add_run_flags, memory_limit_bytes
from attnbench.core import interrupts, strict_json
from attnbench.core.errors import EXIT_CASES_FAILED, EXIT_INTERRUPTED, UserError

if TYPE_CHECKING:
    from attnbench.core.cases import Case
    from attnbench.core.results import RunResult
    from attnbench.engine.runner import Progress

SUMMARY_SCHEMA = "attnbench.run-summary/1"  # bench run --json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="run a suite (default: the built-in 'default' suite)")
    add_run_flags(p)
    # bench run's own, not RUN_FLAGS: bench ab passes those on to its sides, whose output and exit it reads itself.
    p.add_argument(
        "--json",
        action="store_true",
        help="print a summary as JSON on stdout (run id, folder, counts by status, each case's figures); "
        "progress and everything else bench run prints go to stderr",
    )
    p.add_argument(
        "--fail-on-error",
        action="store_true",
        help=f"exit {EXIT_CASES_FAILED} when any case failed (error, timeout, oom). skipped and unsupported cases are "
        "the sweep's decisions and an unstable case is ok, so none of them counts. Without the flag bench run exits "
        f"{EXIT_CASES_FAILED} only when cases failed and none is ok",
    )
    return p


@dataclass(frozen=True)
class Finished:
    """How a bench run ended: its exit code so far, its folder, and the history it went into."""

    code: int
    folder: Path
    history: Path | None = None


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.results import load_run

    if not args.json:
        finished = _run(args, argv)
        return _exit_code(load_run(finished.folder), finished.code, args.fail_on_error)
    with stdout_to_stderr():
        finished = _run(args, argv)
        result = load_run(finished.folder)
        code = _exit_code(result, finished.code, args.fail_on_error)
    sys.stdout.write(strict_json.dumps(summary_json(result, finished.folder, finished.history), indent=2) + "\n")
    return code


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """--json (bench run, bench profile): while the work goes on, file descriptor 1 is stderr's, so
    that nothing else printed (a console, a workload, a library, the workers that inherit it) lands
    in the JSON written to stdout after."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _exit_code(result: RunResult, code: int, fail_on_error: bool) -> int:
    """code, or EXIT_CASES_FAILED when a finished run's cases failed: any (fail_on_error), or all
    (none ok); the line on stderr says which."""
    from attnbench.analysis.compare import FAILED_STATUSES

    failed = [c for c in result.cases if c.status in FAILED_STATUSES]
    if code != 0 or not failed:
        return code
    ok = sum(1 for c in result.cases if c.status == "ok")
    if fail_on_error or not ok:
        why = "--fail-on-error" if ok else "no case is ok"
        sys.stderr.write(
            f"bench run: {len(failed)} case(s) failed ({', '.join(c.case_id for c in failed[:3])}"
            f"{' ...' if len(failed) > 3 else ''}); exit {EXIT_CASES_FAILED} ({why})\n"
        )
        return EXIT_CASES_FAILED
    return code


def summary_json(result: RunResult, folder: Path, history: Path | None) -> dict[str, Any]:
    """bench run --json: the run, its counts by status and each case's main figures."""
    from attnbench.analysis.compare import FAILED_STATUSES
    from attnbench.core.record import CASE_STATUSES

    counts = dict.fromkeys(CASE_STATUSES, 0)
    for c in result.cases:
        counts[c.status] = counts.get(c.status, 0) + 1
    return {
        "schema": SUMMARY_SCHEMA,
        "run_id": result.run.run_id,
        "suite": result.run.suite,
        "status": result.run.status,
        "folder": str(folder),
        "history": str(history) if history is not None else None,
        "cases_total": result.run.cases_total,
        "counts": counts,
        "failed": sum(1 for c in result.cases if c.status in FAILED_STATUSES),
        "unstable": sum(1 for c in result.cases if c.status == "ok" and not c.stable),
        "cases": [
            {
                "case_id": c.case_id,
                "variant": c.variant,
                "params": c.params,
                "scope": c.scope,
                "backend": c.backend,
                "dtype": c.dtype,
                "mode": c.mode,
                "transform": c.transform,
                "seq_len": c.seq_len,
                "status": c.status,
                "reason": c.reason,
                "median_s": c.median_s,
                "ci95": [c.time_s.ci95_low, c.time_s.ci95_high] if c.time_s else None,
                "peak_memory_bytes": c.peak_memory_bytes,
                "stable": c.stable,
            }
            for c in result.cases
        ],
    }


def _run(args: argparse.Namespace, argv: list[str]) -> Finished:
    with interrupts.deferred():  # torch's import aborts the process if interrupted halfway
        from attnbench.core.registry import PLUGINS_ENV
        from attnbench.core.results import check_writable, load_run
        from attnbench.core.settings import RunSettings
        from attnbench.engine.executors.choice import ExecutorChoice, check_choice, make_executor
        from attnbench.engine.runner import Runner, new_run, new_run_id
        from attnbench.engine.suites import load_suite, overrides_from_args, resolve
        from attnbench.engine.turns import interleaved_from_env
        from attnbench.report.console import RunProgress, make_console, print_summary
        from attnbench.report.escaping import line

    console = make_console(file=sys.stderr if args.json else None)
    choice = ExecutorChoice(args.executor, args.ray_address, tuple(args.ray_resource))
    check_choice(choice, resuming=args.resume is not None)
    if args.profile and args.executor == "ray":
        raise UserError(
            "--profile runs with the local executor (profiles are files on the machine that ran the case); "
            "drop --executor ray, or profile single cases on a node with bench profile"
        )
    if args.allow_plugins and args.resume is None:
        raise UserError("--allow-plugins goes with --resume (a new run imports the plugins named in the environment)")
    if args.resume is not None:
        given = (
            [f for f in SWEEP_FLAGS if getattr(args, f) is not None]
            + (["param"] if args.param else [])
            + (["backend_option"] if args.backend_option else [])
            + (["profile"] if args.profile else [])
        )
        if given or args.out is not None:
            raise UserError(
                "--resume takes the sweep and folder from run.json; drop "
                + ", ".join("--" + f.replace("_", "-") for f in given or ["out"])
            )
        folder = args.resume
        run = load_run(folder).run  # validates the folder and its schema
        if run.sweep is None or run.settings is None:
            raise UserError(f"{folder} was not written by bench run (its run.json has no sweep); it cannot be resumed")
        plugins = run.settings.get("plugins")
        # run.json is untrusted input: importing a module it names runs that module's code.
        if plugins and os.environ.get(PLUGINS_ENV) != plugins:
            if not args.allow_plugins:
                raise UserError(
                    f"{folder} was made with the plugin modules {plugins}, which resuming imports; "
                    f"add --allow-plugins to import them (or set {PLUGINS_ENV}={plugins})"
                )
            os.environ[PLUGINS_ENV] = plugins  # the variants the run was made with
        run = replace(run, status="running", resumed_at=[*run.resumed_at, " ".join(["bench", *argv])])
        check_writable(folder)
    else:
        spec = load_suite(args.suite)
        sweep, suite_settings = resolve(spec, overrides_from_args(args))
        # On Ray each node guards with its own free memory unless a limit is given.
        ray_default = args.executor == "ray" and args.max_memory is None
        memory_limit = None if ray_default else memory_limit_bytes(args.max_memory)
        settings = RunSettings(
            **suite_settings,
            memory_limit_bytes=memory_limit,
            plugins=os.environ.get(PLUGINS_ENV, ""),
            **({"verify": False} if args.no_verify else {}),
            profile=args.profile,
        )
        run_id = new_run_id(spec.name)
        folder = args.out if args.out is not None else Path("results") / run_id
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file, not a folder; choose a folder for the run")
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder} already holds files; choose an empty --out, or --resume {folder}")
        check_writable(folder)
        run = replace(
            new_run(run_id, spec.name, sweep, settings, ["bench", *argv], "local"),
            suite_notes=spec.notes or None,  # how this run differs from what the suite mirrors
            reference=spec.reference,
            # A side of bench ab: compare pairs it with the other side block by block.
            interleaved=interleaved_from_env() or None,
        )

    run_settings = run.settings or {}
    if run_settings.get("profile"):  # profiles go beside the run, wherever its folder is now
        run_settings = {**run_settings, "profile_dir": str((folder / "profiles").resolve())}
        run = replace(run, settings=run_settings)
    settings = RunSettings.from_json(run_settings)
    sweep_axes = run.sweep or {}
    console.print(
        line(
            "attnbench: suite ",
            (run.suite, "bold"),
            f" → {folder}  (variants {', '.join(sweep_axes['variants'])}; "
            f"backends {', '.join(sweep_axes['backends'])})",
        ),
        soft_wrap=True,
    )
    if run.suite_notes:
        console.print(line(f"note: {run.suite_notes}"), soft_wrap=True)
    # First run on this machine: measure each device's ceilings once, before the sweep (issue 22).
    if not args.no_calibrate:
        from attnbench.engine.calibrate import calibration_skipped_by_env, first_run_calibration

        if not calibration_skipped_by_env():
            for text, warning in first_run_calibration(run, folder, choice.name or run.executor or "local"):
                console.print(line(("warning", "bold yellow"), f": {text}") if warning else line(text), soft_wrap=True)
    executor, run = make_executor(choice, run, settings)
    progress: Progress = RunProgress(console)
    if settings.profile_dir:
        progress = ProfileFiles(progress, Path(settings.profile_dir))
    runner = Runner(folder, run, executor, progress)
    try:
        runner.execute()
    except KeyboardInterrupt:
        result = load_run(folder)
        console.print(
            line(
                ("interrupted", "bold yellow"),
                f": {len(result.cases)} of {runner.run.cases_total} cases recorded in {folder}; "
                f"finish with: bench run --resume {folder}",
            ),
            soft_wrap=True,
        )
        return Finished(EXIT_INTERRUPTED, folder)
    finally:
        executor.close()  # a Ray cluster started for the run goes with it
    print_summary(console, load_run(folder))
    from attnbench.engine.calibrate import over_ceiling_line  # cases faster than their ceiling (issue 22)

    if (over := over_ceiling_line(load_run(folder).cases)) is not None:
        console.print(line(("note", "bold yellow"), f": {over}"), soft_wrap=True)
    if settings.profile:
        console.print(
            line(
                f"profiles: {folder / 'profiles'}/<case_id>/ (trace.json, ops.md, memory.png; "
                "bench profile explains them)"
            ),
            soft_wrap=True,
        )
    from attnbench.analysis.history import record_finished_run

    recorded, why_not = record_finished_run(folder, args.history)  # warns, never fails the run
    if recorded is not None:
        console.print(line(f"history: recorded in {recorded}"), soft_wrap=True)
    if why_not is not None:
        console.print(
            line(
                ("warning", "bold yellow"),
                f": the run was not added to the history ({why_not}); it is safe in {folder}: "
                f"add it later with `bench history ingest {folder}`",
            ),
            soft_wrap=True,
        )
    return Finished(0, folder, recorded)


class ProfileFiles:
    """bench run --profile: as each case ends, its profile's tables and memory figure are drawn
    here from the profile.json its profile worker left (attnbench.report.profiles)."""

    def __init__(self, progress: Progress, root: Path) -> None:
        self.progress = progress
        self.root = root

    def start(self, total: int, done: int) -> None:
        self.progress.start(total, done)

    def case_started(self, case: Case) -> None:
        self.progress.case_started(case)

    def case_finished(self, case: Case, record: Any) -> None:
        from attnbench.engine.profile_data import SUMMARY
        from attnbench.report.profiles import write_profile_files

        folder = self.root / case.case_id
        if (folder / SUMMARY).is_file():  # the profile succeeded (a failed one leaves no summary)
            write_profile_files(folder)
        self.progress.case_finished(case, record)

    def stop(self) -> None:
        self.progress.stop()
