"""The `bench` command: run, list, env, and the commands other modules register.

Each further command lives in its own module, named in COMMAND_MODULES, with
`add_parser(subparsers) -> argparse.ArgumentParser` and `run(args, argv) -> int`.
Those modules import heavy dependencies (torch, matplotlib, ray) inside `run` only,
so `bench --help` and a usage error stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import import_module
from pathlib import Path
from typing import NoReturn

from attnbench.core import interrupts
from attnbench.core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

# Modules that each add one command (see the module docstring).
COMMAND_MODULES: tuple[str, ...] = (
    "attnbench.cli.calibrate",
    "attnbench.cli.report",
    "attnbench.cli.history",
    "attnbench.cli.compare",
    "attnbench.cli.export",
    "attnbench.cli.profile",
    "attnbench.cli.ab",
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


RUN_OUT_HELP = "run folder to write (default: results/<run_id>)"


def add_run_arguments(run: argparse.ArgumentParser, out_help: str = RUN_OUT_HELP) -> None:
    """The flags of `bench run` (bench ab takes them too, for both of its sides)."""
    run.add_argument("--suite", default="default", help="built-in suite name or path to a .toml file")
    run.add_argument("--variants", type=_csv, help="comma list of variants, or 'all', 'subquadratic'")
    run.add_argument("--backends", type=_csv, help="comma list of backends, or 'available'")
    run.add_argument("--seq-lens", type=_csv, help="comma list of sequence lengths")
    run.add_argument("--batch", type=_csv, help="batch size(s)")
    run.add_argument("--heads", type=_csv, help="head count(s)")
    run.add_argument("--head-dim", type=_csv, help="head dimension(s)")
    run.add_argument("--dtypes", type=_csv, help="float32, float64, bfloat16, float16")
    run.add_argument("--mode", type=_csv, help="forward, train (forward+backward), or both")
    run.add_argument("--scope", type=_csv, help="core (attention alone) or layer (a whole transformer layer)")
    run.add_argument("--threads", type=_csv, help="CPU threads (default: physical cores)")
    run.add_argument(
        "--transforms",
        type=_csv,
        help="optimisations to sweep: none, compile, autocast_bf16, autocast_fp16, int8, prune_heads, prune_24, "
        "distill",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="VARIANT.NAME=V[,V]",
        help="a variant parameter, e.g. full.chunked.chunk=256,512 (repeatable; a list sweeps)",
    )
    run.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="BACKEND.KEY=VALUE",
        help="a backend setting, e.g. onnxruntime.providers=CPUExecutionProvider (repeatable; see bench env)",
    )
    run.add_argument("--max-time-per-case", type=float, help="seconds of sampling per case")
    run.add_argument("--target-ci", type=float, help="stop sampling when the median's 95%% CI is within ±this")
    run.add_argument(
        "--passes",
        type=int,
        help="time each case in N fresh workers, one per pass over the sweep, sharing its budget (default 1)",
    )
    run.add_argument("--timeout", type=float, help="seconds before a case's worker is stopped")
    run.add_argument("--max-memory", type=float, help="GiB a worker may hold before it is stopped (oom)")
    run.add_argument("--no-verify", action="store_true", help="skip the float64 reference check before timing")
    run.add_argument(
        "--profile",
        action="store_true",
        help="after timing each case, profile it in a worker of its own (RUN/profiles/<case_id>/; see bench profile)",
    )
    run.add_argument("--out", type=Path, help=out_help)
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    run.add_argument(
        "--history",
        metavar="PATH",
        help="history to record the run in (default: $ATTNBENCH_HISTORY or results/history.sqlite; 'off': none)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="local: this machine (default); ray: a Ray cluster, each case a task (--resume keeps the run's)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="the Ray cluster's head, host:port or 'auto' (default: RAY_ADDRESS, else a local cluster for the run)",
    )
    run.add_argument(
        "--ray-resource",
        action="append",
        default=[],
        metavar="[BACKEND:]NAME=AMOUNT",
        help="a Ray resource cases ask for, to target a machine type, e.g. cuda:accelerator_type:H100=0.01",
    )


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Hardware-aware benchmarks of transformer attention.")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

    add_run_arguments(sub.add_parser("run", help="run a suite (default: the built-in 'default' suite)"))

    sub.add_parser("list", help="variants, backends and suites")
    env = sub.add_parser("env", help="host fingerprint, and each backend's device, versions and meters")
    env.add_argument("--json", action="store_true", help="print JSON")
    for name in COMMAND_MODULES:
        module = import_module(name)
        module.add_parser(sub).set_defaults(command_module=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    with interrupts.noted():
        return _dispatch(parser, args, argv)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    try:
        if getattr(args, "command_module", None):
            return import_module(args.command_module).run(args, argv)
        if args.command == "run":
            from attnbench.cli.commands import cmd_run

            return cmd_run(args, argv)
        if args.command == "list":
            from attnbench.cli.commands import cmd_list

            return cmd_list()
        if args.command == "env":
            from attnbench.cli.commands import backends_environment
            from attnbench.core.environment import fingerprint

            data = fingerprint()
            data["backends"] = backends_environment()
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                from attnbench.cli.commands import print_env

                print_env(data)
            return 0
        parser.print_help()
        return EXIT_USER_ERROR
    except UserError as exc:
        sys.stderr.write(f"bench: error: {exc}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
