"""`bench run`: run a suite (default: the built-in 'default' suite), or finish an interrupted run."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.cli.run_flags import SWEEP_FLAGS, add_run_flags, memory_limit_bytes
from attnbench.core import interrupts
from attnbench.core.errors import EXIT_INTERRUPTED, UserError

if TYPE_CHECKING:
    from attnbench.core.cases import Case
    from attnbench.engine.runner import Progress


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="run a suite (default: the built-in 'default' suite)")
    add_run_flags(p)
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
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

    console = make_console()
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
        return EXIT_INTERRUPTED
    finally:
        executor.close()  # a Ray cluster started for the run goes with it
    print_summary(console, load_run(folder))
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
    return 0


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
