"""`bench calibrate`: measure each device's peak matmul rate (per dtype) and memory bandwidth.

The peaks are the best of several timed repetitions at a few sizes (a ceiling is a
maximum, not a typical value), timed with the backend's own clock and synchronisation
(attnbench.engine.calibrate), and cached per machine fingerprint (attnbench.backends.peaks);
later runs record them in run.json and give each case its fraction of peak. Each calibration
records other processes' share of the CPU while it ran; one taken on a busy machine is stored
marked busy and is not used as a ceiling (nor replaces a quiet one).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from attnbench.core import strict_json
from attnbench.core.errors import UserError

if TYPE_CHECKING:
    from attnbench.engine.calibrate import Calibration

DEFAULT_DTYPES = {"cpu": ("float32", "float64", "bfloat16"), "cuda": ("float32", "bfloat16", "float16")}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="measure peak matmul FLOP/s and memory bandwidth of each device")
    p.add_argument("--backends", help="comma list (default: every available backend that has its own device)")
    p.add_argument("--dtypes", help="comma list (default: float32 plus the device's fast low-precision types)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores, as runs use)")
    p.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repeats: seconds (as bench run's first run does)"
    )
    p.add_argument("--json", action="store_true", help="print the peaks as JSON on stdout, progress on stderr")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.backends.peaks import calibration_path, datasheet_for
    from attnbench.core.registry import BACKENDS, get_backend, load_plugins
    from attnbench.engine.calibrate import calibrate
    from attnbench.report.console import make_console
    from attnbench.report.escaping import LiteralTable, line

    load_plugins()
    names = [n.strip() for n in args.backends.split(",")] if args.backends else None
    if names:
        unknown = [n for n in names if n not in BACKENDS]
        if unknown:
            raise UserError(f"unknown backend {', '.join(unknown)}; known: {', '.join(sorted(BACKENDS))}")
    candidates = names or sorted(BACKENDS)
    console = make_console(file=sys.stderr if args.json else None)
    measured: list[dict[str, Any]] = []  # --json
    table = LiteralTable(title="peaks (measured here, and datasheet where known)", title_justify="left")
    for col in (
        "device",
        "dtype",
        "measured matmul TFLOP/s",
        "datasheet TFLOP/s",
        "bandwidth GB/s (meas./sheet)",
        "others' CPU",
    ):
        table.add_column(col)
    measured_any = False
    loads: list[str] = []  # one line per device: the machine's load while it measured, and what became of it
    quiet = True
    for name in candidates:
        cls = get_backend(name)
        if not cls.calibrates:
            if names:
                console.print(line(f"{name}: shares its device's calibration ({cls.summary})"))
            continue
        avail = cls.availability()
        if not avail.available:
            if names:
                raise UserError(f"backend {name} is not available here: {avail.reason}")
            continue
        dtypes = (
            tuple(d.strip() for d in args.dtypes.split(",")) if args.dtypes else DEFAULT_DTYPES.get(name, ("float32",))
        )
        bad = [d for d in dtypes if d not in cls.dtypes]
        if bad:
            raise UserError(f"backend {name} does not run {', '.join(bad)} (it runs {', '.join(cls.dtypes)})")

        def starting(device: dict[str, Any], name: str = name) -> None:
            console.print(line(f"calibrating {name}: {device['name']} ..."))

        result = calibrate(cls, dtypes, args.threads, args.quick, starting)
        if result is None:  # only with only_if_missing, which this command leaves off
            continue
        entry = result.entry
        quiet = quiet and not entry.get("busy")
        measured_any = True
        loads.append(load_line(name, result))
        device_name = entry["device_name"]
        sheet = datasheet_for(device_name) or {}
        measured.append({"backend": name, **entry, "stored": result.stored, "datasheet": sheet or None})
        sheet_bw = sheet.get("memory_bytes_per_s")
        for dtype, rate in entry["matmul_flops_per_s"].items():
            sheet_rate = (sheet.get("matmul_flops_per_s") or {}).get(dtype)
            table.add_row(
                device_name,
                dtype,
                f"{rate / 1e12:.3f}",
                f"{sheet_rate / 1e12:.1f}" if sheet_rate else "-",
                f"{entry['memory_bytes_per_s'] / 1e9:.1f} / {sheet_bw / 1e9:.0f}"
                if sheet_bw
                else f"{entry['memory_bytes_per_s'] / 1e9:.1f} / -",
                share_text(entry.get("other_cpu_share")),
            )
    if not measured_any:
        raise UserError("no available backend with a device of its own to calibrate; see `bench env`")
    if args.json:
        print(strict_json.dumps({"cache": str(calibration_path()), "devices": measured}, indent=2))
        return 0
    console.print(table)
    for text in loads:
        console.print(line(text), soft_wrap=True)
    then = "runs on this machine now record these peaks" if quiet else "a busy calibration is no run's ceiling"
    console.print(line(f"cached in {calibration_path()}; {then}"))
    return 0


def share_text(share: float | None) -> str:
    return f"{share:.0%}" if share is not None else "unknown"


def load_line(name: str, result: Calibration) -> str:
    """What other processes used of the CPU while the device was measured, and so what was kept."""
    entry = result.entry
    share = share_text(entry.get("other_cpu_share"))
    if not entry.get("busy"):
        return f"{name}: other processes used {share} of the CPU while it measured: stored as the ceiling"
    over = f"{name}: other processes used {share} of the CPU while it measured (over {entry['busy_threshold']:.0%})"
    if not result.stored:
        when = (result.kept or {}).get("calibrated_at") or "earlier"
        return f"{over}: not stored; the quiet calibration of {when} stays the ceiling"
    return f"{over}: stored marked busy, not used as the ceiling; rerun `bench calibrate` when the machine is quiet"
