"""`bench calibrate`: measure each device's peak matmul rate (per dtype) and memory bandwidth.

The peaks are the best of several timed repetitions at a few sizes (a ceiling is a
maximum, not a typical value), timed with the backend's own clock and synchronisation
(attnbench.engine.calibrate), and cached per machine fingerprint (attnbench.backends.peaks);
later runs record them in run.json and give each case its fraction of peak.
"""

from __future__ import annotations

import argparse
from typing import Any

from attnbench.core.errors import UserError

DEFAULT_DTYPES = {"cpu": ("float32", "float64", "bfloat16"), "cuda": ("float32", "bfloat16", "float16")}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="measure peak matmul FLOP/s and memory bandwidth of each device")
    p.add_argument("--backends", help="comma list (default: every available backend that has its own device)")
    p.add_argument("--dtypes", help="comma list (default: float32 plus the device's fast low-precision types)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores, as runs use)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (for tests)")
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
    console = make_console()
    table = LiteralTable(title="peaks (measured here, and datasheet where known)", title_justify="left")
    for col in ("device", "dtype", "measured matmul TFLOP/s", "datasheet TFLOP/s", "bandwidth GB/s (meas./sheet)"):
        table.add_column(col)
    measured_any = False
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

        entry = calibrate(cls, dtypes, args.threads, args.quick, starting)
        measured_any = True
        device_name = entry["device_name"]
        sheet = datasheet_for(device_name) or {}
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
            )
    if not measured_any:
        raise UserError("no available backend with a device of its own to calibrate; see `bench env`")
    console.print(table)
    console.print(line(f"cached in {calibration_path()}; runs on this machine now record these peaks"))
    return 0
