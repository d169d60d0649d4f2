"""`bench calibrate`: measure each device's peak matmul rate (per dtype) and memory bandwidth.

The peaks are the best of several timed repetitions at a few sizes (a ceiling is a
maximum, not a typical value), timed with the backend's own clock and synchronisation,
and cached per machine fingerprint (attnbench.backends.peaks); later runs record them in run.json
and give each case its fraction of peak.
"""

from __future__ import annotations

import argparse
from typing import Any

from attnbench.core.errors import UserError

MATMUL_SIZES = {"cpu": (512, 1024, 2048), "cuda": (2048, 4096, 8192), "xla": (1024, 2048, 4096)}
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20, "xla": 256 * 2**20}
REPEATS = 5
DEFAULT_DTYPES = {"cpu": ("float32", "float64", "bfloat16"), "cuda": ("float32", "bfloat16", "float16")}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="measure peak matmul FLOP/s and memory bandwidth of each device")
    p.add_argument("--backends", help="comma list (default: every available backend that has its own device)")
    p.add_argument("--dtypes", help="comma list (default: float32 plus the device's fast low-precision types)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores, as runs use)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (for tests)")
    return p


def _best_rate(timer: Any, step: Any, work: float, repeats: int) -> float:
    """Work per second of the fastest of `repeats` timed calls, after one warm-up call."""
    timer.time(step, 1)
    best = min(timer.time(step, 1) for _ in range(repeats))
    return work / best


def measure_device(backend: Any, dtypes: tuple[str, ...], quick: bool) -> dict[str, Any]:
    import torch

    from attnbench.backends.base import DTYPES

    kind = backend.name
    device = backend.device
    timer = backend.timer()
    sync = getattr(backend, "synchronize", lambda: None)
    sizes = MATMUL_SIZES.get(kind, MATMUL_SIZES["cpu"])
    repeats = 2 if quick else REPEATS
    if quick:
        sizes = sizes[:2]
    flops: dict[str, float] = {}
    per_size: dict[str, dict[str, float]] = {}
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        rates = {}
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)

            def mm(a: Any = a, b: Any = b) -> Any:
                return a @ b

            rates[str(n)] = _best_rate(timer, mm, 2.0 * n**3, repeats)
            del a, b
        per_size[dtype_name] = rates
        flops[dtype_name] = max(rates.values())
    nbytes = COPY_BYTES.get(kind, COPY_BYTES["cpu"]) // (8 if quick else 1)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)

    def copy() -> Any:
        return dst.copy_(src)

    bandwidth = _best_rate(timer, copy, 2.0 * src.numel() * 4, repeats)  # one read and one write per element
    sync()
    return {
        "matmul_flops_per_s": flops,
        "matmul_by_size": per_size,
        "memory_bytes_per_s": bandwidth,
        "method": (
            f"best of {repeats} timed calls ({timer.clock}; {timer.sync}): square matmuls of n={list(sizes)} "
            f"(2n^3 FLOP), and a {nbytes / 2**20:.0f} MiB float32 copy (read + write bytes)"
        ),
    }


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from attnbench.backends.peaks import calibration_path, datasheet_for, now_iso, save_calibration
    from attnbench.core.cases import Case
    from attnbench.core.registry import BACKENDS, get_backend, load_plugins

    load_plugins()
    names = [n.strip() for n in args.backends.split(",")] if args.backends else None
    if names:
        unknown = [n for n in names if n not in BACKENDS]
        if unknown:
            raise UserError(f"unknown backend {', '.join(unknown)}; known: {', '.join(sorted(BACKENDS))}")
    candidates = names or sorted(BACKENDS)
    console = Console()
    table = Table(title="peaks (measured here, and datasheet where known)", title_justify="left")
    for col in ("device", "dtype", "measured matmul TFLOP/s", "datasheet TFLOP/s", "bandwidth GB/s (meas./sheet)"):
        table.add_column(col)
    measured_any = False
    for name in candidates:
        cls = get_backend(name)
        if not getattr(cls, "calibrates", False):
            if names:
                console.print(f"{name}: shares its device's calibration ({cls.summary})", highlight=False)
            continue
        avail = cls.availability()
        if not avail.available:
            if names:
                raise UserError(f"backend {name} is not available here: {avail.reason}")
            continue
        backend = cls()
        dtypes = (
            tuple(d.strip() for d in args.dtypes.split(",")) if args.dtypes else DEFAULT_DTYPES.get(name, ("float32",))
        )
        bad = [d for d in dtypes if d not in cls.dtypes]
        if bad:
            raise UserError(f"backend {name} does not run {', '.join(bad)} (it runs {', '.join(cls.dtypes)})")
        settings = backend.setup(Case("calibrate", (), "core", name, dtypes[0], "forward", 1, 1, 1, 1, args.threads))
        desc = backend.describe()
        console.print(f"calibrating {name}: {desc['name']} ...", highlight=False)
        entry = measure_device(backend, dtypes, args.quick)
        entry.update(calibrated_at=now_iso(), threads=settings.get("threads"), device_name=desc["name"])
        save_calibration(backend.peak_key(), entry)
        measured_any = True
        sheet = datasheet_for(desc["name"]) or {}
        sheet_bw = sheet.get("memory_bytes_per_s")
        for dtype, rate in entry["matmul_flops_per_s"].items():
            sheet_rate = (sheet.get("matmul_flops_per_s") or {}).get(dtype)
            table.add_row(
                desc["name"],
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
    console.print(f"cached in {calibration_path()}; runs on this machine now record these peaks", highlight=False)
    return 0
