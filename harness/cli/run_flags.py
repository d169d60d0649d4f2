"""`bench run`'s flags, declared once: bench run takes them all, bench ab passes them on to both
of its sides, and bench profile takes those that name one case (CASE_FLAGS)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.core.errors import UserError

RUN_OUT_HELP = "run folder to write (default: results/<run_id>)"


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass(frozen=True)
class Flag:
    """One flag: its name and argparse's keywords for it."""

    name: str
    options: Mapping[str, Any]

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


# In the order `bench run --help` lists them.
RUN_FLAGS: tuple[Flag, ...] = (
    Flag("--suite", {"default": "default", "help": "built-in suite name or path to a .toml file"}),
    Flag("--variants", {"type": csv_list, "help": "comma list of variants, or 'all', 'subquadratic'"}),
    Flag("--backends", {"type": csv_list, "help": "comma list of backends, or 'available'"}),
    Flag("--seq-lens", {"type": csv_list, "help": "comma list of sequence lengths"}),
    Flag("--batch", {"type": csv_list, "help": "batch size(s)"}),
    Flag("--heads", {"type": csv_list, "help": "head count(s)"}),
    Flag("--head-dim", {"type": csv_list, "help": "head dimension(s)"}),
    Flag("--dtypes", {"type": csv_list, "help": "float32, float64, bfloat16, float16"}),
    Flag("--mode", {"type": csv_list, "help": "forward, train (forward+backward), or forward,train for both"}),
    Flag("--scope", {"type": csv_list, "help": "core (attention alone) or layer (a whole transformer layer)"}),
    Flag("--threads", {"type": csv_list, "help": "CPU threads (default: physical cores)"}),
    Flag(
        "--transforms",
        {
            "type": csv_list,
            "help": "optimisations to sweep: none, compile, autocast_bf16, autocast_fp16, int8, prune_heads, "
            "prune_24, distill",
        },
    ),
    Flag(
        "--impls",
        {
            "type": csv_list,
            "help": "implementations to sweep: native (default), masked_sdpa, flex, hf, flash_attn, xformers, "
            "all (see bench list; one "
            "that cannot run a case records it unsupported, with the reason)",
        },
    ),
    Flag(
        "--param",
        {
            "action": "append",
            "default": [],
            "metavar": "VARIANT.NAME=V[,V]",
            "help": "a variant parameter, e.g. full.chunked.chunk=256,512 (repeatable; a list sweeps)",
        },
    ),
    Flag(
        "--backend-option",
        {
            "action": "append",
            "default": [],
            "metavar": "BACKEND.KEY=VALUE",
            "help": "a backend setting, e.g. onnxruntime.providers=CPUExecutionProvider (repeatable; see bench env)",
        },
    ),
    Flag(
        "--max-time-per-case",
        {
            "type": float,
            "help": "seconds of sampling per case (the suite's, else 2); a slow case gets 6 × its first call's time t1 "
            "instead (6 samples: a 95%% CI of the median) if that is at most 300 s, else 3 samples",
        },
    ),
    Flag("--target-ci", {"type": float, "help": "stop sampling when the median's 95%% CI is within ±this"}),
    Flag(
        "--passes",
        {
            "type": int,
            "help": "time each case in N fresh workers, one per pass over the sweep, sharing its budget (default 1)",
        },
    ),
    Flag(
        "--timeout",
        {
            "type": float,
            "help": "seconds from a case's worker's start to its result, a hard limit. bench run's default: a base of "
            "max(120, 10 × max-time-per-case + 60) to the first timed call, the base again for that call "
            "(on the host CPU, calibrated: at least 10 × its FLOPs at the matmul ceiling), "
            "then max(base, 2 × (samples + 2) × t1 + 60), samples being 6 (3 if 6 × t1 > 300)",
        },
    ),
    Flag("--max-memory", {"type": float, "help": "GiB a worker may hold before it is stopped (oom)"}),
    Flag("--no-verify", {"action": "store_true", "help": "skip the float64 reference check before timing"}),
    Flag(
        "--quality",
        {
            "choices": ["approx"],
            "help": "approx: also compare each case's output with exact full attention on structured inputs (local and "
            "long-range dependencies): relative error, cosine, the share of attention mass inside the pattern; "
            "after the measurements, never timed",
        },
    ),
    Flag(
        "--profile",
        {
            "action": "store_true",
            "help": "after timing each case, profile it in a worker of its own (RUN/profiles/<case_id>/; "
            "see bench profile)",
        },
    ),
    Flag("--out", {"type": Path, "help": RUN_OUT_HELP}),
    Flag("--resume", {"type": Path, "metavar": "RUN_DIR", "help": "finish an interrupted run"}),
    Flag(
        "--allow-plugins",
        {
            "action": "store_true",
            "help": "with --resume: import the plugin modules the run was made with (run.json names them)",
        },
    ),
    Flag(
        "--history",
        {
            "metavar": "PATH",
            "help": "history to record the run in (default: $ATTNBENCH_HISTORY or results/history.sqlite; 'off': none)",
        },
    ),
    Flag(
        "--executor",
        {
            "choices": ("local", "ray"),
            "help": "local: this machine (default); ray: a Ray cluster, each case a task (--resume keeps the run's)",
        },
    ),
    Flag(
        "--ray-address",
        {
            "metavar": "ADDRESS",
            "help": "the Ray cluster's head, host:port or 'auto' (default: RAY_ADDRESS, else a local cluster for "
            "the run)",
        },
    ),
    Flag(
        "--ray-resource",
        {
            "action": "append",
            "default": [],
            "metavar": "[BACKEND:]NAME=AMOUNT",
            "help": "a Ray resource cases ask for, to target a machine type, e.g. cuda:accelerator_type:H100=0.01",
        },
    ),
    Flag(
        "--no-calibrate",
        {
            "action": "store_true",
            "help": "skip measuring the device's peaks on a machine that has no calibration for it yet (a few "
            "seconds, once; ATTNBENCH_NO_CALIBRATE=1 does the same)",
        },
    ),
)

# The flags that make up the sweep (a resumed run takes its sweep from run.json instead).
SWEEP_FLAGS = (
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
    "impls",
)
# The flags that name cases and how to run them: bench profile takes these to name its one case.
CASE_FLAGS = (
    "suite",
    *SWEEP_FLAGS,
    "transforms",
    "param",
    "backend_option",
    "timeout",
    "max_memory",
)
# Of those, the ones that select cases (rather than a suite or how to run them).
SELECTING = tuple(f for f in CASE_FLAGS if f not in ("suite", "timeout", "max_memory", "backend_option"))


def memory_limit_bytes(gib: float | None) -> int:
    """--max-memory in bytes; without it, 90% of the memory available now."""
    import psutil

    if gib is not None:
        if not (math.isfinite(gib) and gib > 0):
            raise UserError(f"--max-memory must be a positive, finite number of GiB, got {gib}")
        return int(gib * 2**30)
    # Leave the rest of the machine alive: stop a worker before the kernel has to.
    return int(0.9 * psutil.virtual_memory().available)


def add_run_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    only: Collection[str] | None = None,
    out_help: str = RUN_OUT_HELP,
) -> None:
    """Add bench run's flags (those named in `only`, by dest, when given) in bench run's order."""
    for flag in RUN_FLAGS:
        if only is not None and flag.dest not in only:
            continue
        options = dict(flag.options)
        if flag.dest == "out":
            options["help"] = out_help
        if isinstance(options.get("default"), list):
            options["default"] = []  # a fresh list per parser: append must not share one
        parser.add_argument(flag.name, **options)
