"""`bench quality`: what each design gives up, measured. Trains a small fixed model (token
embedding, learned positions, `--layers` blocks of the variant's layer scope, a linear head)
from scratch on synthetic long-range tasks generated on the fly, and reports held-out accuracy
with a 95% CI over seeds beside time per training step and peak memory, measured by the same
workers as `bench run`.

Tasks: mqar (multi-query associative recall, Zoology), listops (LRA's generator rules),
retrieval (a key-value lookup whose dependency distance is a parameter). The run folder holds
run.json and quality.jsonl (docs/result-format.md) and, with --maps, maps/; `bench report`
draws accuracy against cost with the Pareto front, and the attention maps.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from attnbench.cli.parsing import add_documented_command
from attnbench.cli.run_flags import add_run_flags, csv_list, memory_limit_bytes
from attnbench.core import interrupts
from attnbench.core.errors import EXIT_CASES_FAILED, EXIT_INTERRUPTED, UserError

if TYPE_CHECKING:
    from attnbench.core.quality_record import QualityJob, QualityRecord

HELP = "train small models on long-range tasks: accuracy beside time per step and memory"
DEFAULT_SUITE = "quality-smoke"
QUALITY_FLAGS = ("variants", "backends", "seq_lens", "dtypes", "threads", "impls", "param", "timeout", "max_memory")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_documented_command(subparsers, "quality", HELP, __doc__)
    p.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        help="quality suite: quality-smoke (default, about 2 minutes), quality (about an hour), or a .toml "
        "with a [quality] table",
    )
    p.add_argument("--tasks", type=csv_list, help="comma list of tasks: mqar, listops, retrieval")
    p.add_argument("--steps", help="training steps per model")
    p.add_argument("--seeds", help="models per configuration, seeds 0..K-1 (the CI is over them)")
    p.add_argument("--batch", help="training batch size")
    p.add_argument("--lr", help="peak learning rate (AdamW; linear warm-up, cosine decay)")
    p.add_argument("--layers", help="blocks in the model")
    p.add_argument("--model-dim", help="model width D")
    p.add_argument("--heads", help="attention heads (head dim = D / heads)")
    p.add_argument("--eval-examples", help="held-out examples per model")
    p.add_argument("--maps", action="store_true", default=None, help="write attention maps of one held-out example")
    p.add_argument(
        "--task-param",
        action="append",
        default=[],
        metavar="TASK.NAME=V",
        help="a task parameter, e.g. retrieval.distance=256 (repeatable)",
    )
    add_run_flags(p, only=(*QUALITY_FLAGS, "out"), out_help="the run folder (default results/<run id>)")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    with interrupts.deferred():  # torch's import aborts the process if interrupted halfway
        from attnbench.core.registry import PLUGINS_ENV
        from attnbench.core.results import check_writable
        from attnbench.core.settings import RunSettings
        from attnbench.engine.executors.local import LocalExecutor
        from attnbench.engine.quality.runner import (
            parse_quality,
            parse_task_params,
            quality_cases,
            quality_jobs,
            run_jobs,
        )
        from attnbench.engine.runner import new_run, new_run_id
        from attnbench.engine.suites import load_suite, overrides_from_args
        from attnbench.report.console import make_console
        from attnbench.report.escaping import line

    console = make_console()
    spec = load_suite(args.suite, kind="quality")
    flags = {
        "tasks": args.tasks,
        "steps": args.steps,
        "seeds": args.seeds,
        "batch": args.batch,
        "lr": args.lr,
        "layers": args.layers,
        "model_dim": args.model_dim,
        "heads": args.heads,
        "eval_examples": args.eval_examples,
        "maps": args.maps,
    }
    qs = parse_quality(spec.quality or {}, spec.source, flags)
    qs = parse_task_params(args.task_param, qs)
    sweep, cases = quality_cases(spec, overrides_from_args(args), qs)
    jobs = quality_jobs(cases, qs)
    settings = RunSettings(
        timeout_s=args.timeout,
        memory_limit_bytes=memory_limit_bytes(args.max_memory),
        verify=False,  # training has no float64 reference; the variants' own tests check them
        plugins=os.environ.get(PLUGINS_ENV, ""),
    )
    run_id = new_run_id(spec.name)
    folder = args.out if args.out is not None else Path("results") / run_id
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file, not a folder; choose a folder for the run")
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} already holds files; choose an empty --out")
    check_writable(folder)
    run = new_run(run_id, spec.name, sweep, settings, ["bench", *argv], "local")
    run = replace(run, settings={**(run.settings or {}), "quality": qs.to_json()}, suite_notes=spec.notes or None)
    console.print(
        line(
            "attnbench quality: suite ",
            (spec.name, "bold"),
            f" → {folder}  ({len(jobs)} models: tasks {', '.join(qs.tasks)}; variants {', '.join(sweep.variants)}; "
            f"n {', '.join(str(n) for n in sweep.seq_lens)}; {qs.seeds} seeds × {qs.steps} steps)",
        ),
        soft_wrap=True,
    )

    def progress(i: int, total: int, job: QualityJob, record: QualityRecord | None) -> None:
        if record is None:
            return
        console.print(line(f"[{i}/{total}] {_label(job)}: ", *_outcome(record)), soft_wrap=True)

    executor = LocalExecutor(settings)
    executor.warm()
    try:
        run_jobs(folder, run, jobs, executor, progress)
    except KeyboardInterrupt:
        console.print(line(("interrupted", "bold yellow"), f": the records so far are in {folder}"), soft_wrap=True)
        return EXIT_INTERRUPTED
    from attnbench.analysis.quality import summarize_quality
    from attnbench.core.quality_record import load_quality
    from attnbench.report.quality import print_quality_summary

    records = load_quality(folder)
    print_quality_summary(console, summarize_quality(records))
    console.print(line(f"results: {folder} (bench report {folder} draws them)"), soft_wrap=True)
    failed = [r for r in records if r.status not in ("ok", "unsupported")]
    return EXIT_CASES_FAILED if failed else 0


def _label(job: QualityJob) -> str:
    case = job.case
    impl = f" impl={case.impl}" if case.impl != "native" else ""
    return f"{job.task} {case.variant}{impl} n={case.seq_len} seed {job.seed}"


def _outcome(record: QualityRecord) -> tuple:
    if record.status != "ok":
        return ((record.status, "red" if record.status != "unsupported" else "yellow"), f" {record.reason}")
    step = record.step_time_s["median"] * 1e3 if record.step_time_s else None
    learned = "" if record.learned else " (not above chance)"
    figures = f" accuracy {record.accuracy:.3f} (chance {record.chance:.3f}){learned}"
    if step is not None:
        figures += f", {step:.3g} ms/step"
    return ("ok", figures)
