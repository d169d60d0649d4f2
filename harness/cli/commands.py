"""The subcommands behind the CLI: each reads its arguments and does one job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from attnbench.core import interrupts
from attnbench.core.errors import EXIT_INTERRUPTED, UserError
from attnbench.core.results import check_writable, load_run

SWEEP_FLAGS = ("variants", "backends", "seq_lens", "batch", "heads", "head_dim", "dtypes", "mode", "scope", "threads")


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    with interrupts.deferred():  # torch's import aborts the process if interrupted halfway
        from attnbench.core.registry import PLUGINS_ENV
        from attnbench.core.settings import RunSettings
        from attnbench.engine.executors.ray import check_flags, make_executor
        from attnbench.engine.runner import Runner, new_run, new_run_id, read_run_json
        from attnbench.engine.suites import load_suite, overrides_from_args, resolve
        from attnbench.engine.turns import interleaved_from_env
        from attnbench.report.console import RunProgress, make_console, print_summary

    console = make_console()
    check_flags(args)
    if args.profile and args.executor == "ray":
        raise UserError(
            "--profile runs with the local executor (profiles are files on the machine that ran the case); "
            "drop --executor ray, or profile single cases on a node with bench profile"
        )
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
        load_run(folder)  # validates the folder and its schema
        run = read_run_json(folder)
        plugins = run["settings"].get("plugins")
        if plugins and not os.environ.get(PLUGINS_ENV):
            os.environ[PLUGINS_ENV] = plugins  # the variants the run was made with
        run["status"] = "running"
        run["resumed_at"] = [*run.get("resumed_at", []), " ".join(["bench", *argv])]
        check_writable(folder)
    else:
        spec = load_suite(args.suite)
        sweep, suite_settings = resolve(spec, overrides_from_args(args))
        # On Ray each node guards with its own free memory unless a limit is given.
        memory_limit = None if args.executor == "ray" and args.max_memory is None else _memory_limit(args.max_memory)
        settings = RunSettings(
            **suite_settings,
            memory_limit_bytes=memory_limit,
            plugins=os.environ.get(PLUGINS_ENV, ""),
            **({"verify": False} if args.no_verify else {}),
            profile=args.profile,
        )
        run_id = new_run_id(spec.name)
        folder = args.out if args.out is not None else Path("results") / run_id
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder} already holds files; choose an empty --out, or --resume {folder}")
        check_writable(folder)
        run = new_run(run_id, spec.name, sweep, settings, ["bench", *argv], "local")
        run["suite_notes"] = spec.notes or None  # how this run differs from what the suite mirrors
        run["reference"] = spec.reference
        interleaved = interleaved_from_env()
        if interleaved:  # a side of bench ab: compare pairs it with the other side block by block
            run["interleaved"] = interleaved

    if run["settings"].get("profile"):  # profiles go beside the run, wherever its folder is now
        run["settings"]["profile_dir"] = str((folder / "profiles").resolve())
    settings = RunSettings.from_json(run["settings"])
    console.print(
        f"attnbench: suite [bold]{run['suite']}[/] → {folder}  "
        f"(variants {', '.join(run['sweep']['variants'])}; backends {', '.join(run['sweep']['backends'])})",
        highlight=False,
        soft_wrap=True,
    )
    if run.get("suite_notes"):
        console.print(f"note: {run['suite_notes']}", highlight=False, soft_wrap=True)
    executor = make_executor(args, run, settings)
    runner = Runner(folder, run, executor, RunProgress(console))
    try:
        runner.execute()
    except KeyboardInterrupt:
        result = load_run(folder)
        console.print(
            f"[bold yellow]interrupted[/]: {len(result.cases)} of {run['cases_total']} cases recorded in "
            f"{folder}; finish with: bench run --resume {folder}",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_INTERRUPTED
    finally:
        if hasattr(executor, "close"):
            executor.close()  # a Ray cluster started for the run goes with it
    print_summary(console, load_run(folder))
    if settings.profile:
        console.print(
            f"profiles: {folder / 'profiles'}/<case_id>/ (trace.json, ops.md, memory.png; bench profile explains them)",
            highlight=False,
            soft_wrap=True,
        )
    from attnbench.analysis.history import record_finished_run

    record_finished_run(folder, getattr(args, "history", None), console)  # warns, never fails the run
    return 0


def _memory_limit(gib: float | None) -> int:
    import psutil

    if gib is not None:
        if gib <= 0:
            raise UserError(f"--max-memory must be a positive number of GiB, got {gib}")
        return int(gib * 2**30)
    # Leave the rest of the machine alive: stop a worker before the kernel has to.
    return int(0.9 * psutil.virtual_memory().available)


def cmd_list() -> int:
    from attnbench.core.registry import BACKENDS, PLUGIN_ERRORS, WORKLOADS, load_plugins
    from attnbench.engine.suites import builtin_suites

    load_plugins()
    console = Console()
    variants = Table(title="variants", title_justify="left")
    for col in ("variant", "family", "parameters (defaults)", "scopes", "what"):
        variants.add_column(col)
    for name, cls in sorted(WORKLOADS.items()):
        params = ", ".join(f"{k}={v}" for k, v in cls.default_params().items()) or "-"
        tag = " (sub-quadratic)" if cls.subquadratic else ""
        variants.add_row(name, cls.family, params, ",".join(cls.scopes), cls.summary + tag)
    console.print(variants)

    backends = Table(title="backends", title_justify="left")
    for col in ("backend", "available", "why not / what"):
        backends.add_column(col)
    for name, cls in sorted(BACKENDS.items()):
        avail = cls.availability()
        what = avail.reason or cls.summary + ("" if cls.in_available else " (runs when named: --backends)")
        backends.add_row(name, "yes" if avail.available else "[red]no[/]", what)
    console.print(backends)

    suites = Table(title="suites", title_justify="left")
    suites.add_column("suite")
    suites.add_column("what")
    for name, desc in builtin_suites().items():
        suites.add_row(name, desc)
    console.print(suites)
    for where, err in PLUGIN_ERRORS.items():
        console.print(f"[red]plugin failed to load[/] {where}: {err}", highlight=False, soft_wrap=True)
    return 0


def backends_environment() -> dict[str, Any]:
    """Every backend: available or why not, device, versions, and the clock and meters a case gets."""
    from attnbench.core.registry import BACKENDS, load_plugins

    load_plugins()
    out: dict[str, Any] = {}
    for name, cls in sorted(BACKENDS.items()):
        avail = cls.availability()
        entry: dict[str, Any] = {"available": avail.available, "reason": avail.reason}
        if avail.available:
            try:
                entry.update(cls.environment())
            except Exception as exc:  # a broken driver must not hide the other backends
                entry["environment_error"] = f"{type(exc).__name__}: {exc}"
        entry["options"] = {k: {"default": o.default, "help": o.help} for k, o in cls.options.items()}
        out[name] = entry
    return out


def _peaks_text(peaks: dict[str, Any] | None) -> str:
    if not peaks:
        return "-"
    if peaks.get("source") is None:
        return peaks.get("reason") or "-"
    flops = ", ".join(f"{d} {v / 1e12:.3g} TFLOP/s" for d, v in (peaks.get("matmul_flops_per_s") or {}).items())
    bw = peaks.get("memory_bytes_per_s")
    return f"{peaks['source']}: {flops}" + (f"; {bw / 1e9:.3g} GB/s" if bw else "")


def print_env(data: dict[str, Any]) -> None:
    console = Console()
    table = Table(show_header=False)
    for section in ("host", "packages", "git"):
        for k, v in data[section].items():
            table.add_row(f"{section}.{k}", "-" if v is None else str(v))
    console.print(table)
    backends = Table(title="backends", title_justify="left", show_lines=True)
    for col in ("backend", "available", "device / versions", "clock", "memory", "energy", "peaks", "options"):
        backends.add_column(col, overflow="fold")
    for name, e in data.get("backends", {}).items():
        if not e["available"]:
            backends.add_row(name, "[red]no[/]", e["reason"] or "", "", "", "", "", "")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in (e.get("versions") or {}).items())
        energy = e.get("energy_method") or f"none: {e.get('energy_reason')}"
        options = ", ".join(f"{k}={v['default']}" for k, v in e["options"].items()) or "-"
        backends.add_row(
            name,
            "yes",
            f"{e.get('device', '-')}\n{versions}".strip(),
            e.get("clock", "-"),
            e.get("memory_method", "-"),
            energy,
            _peaks_text(e.get("peaks")),
            options,
        )
    console.print(backends)
    sys.stdout.flush()
