"""`bench env`: the host's fingerprint, and each backend's device, versions, clock and meters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attnbench.core import strict_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("env", help="host fingerprint, and each backend's device, versions and meters")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from attnbench.core.environment import fingerprint

    data = fingerprint()
    data["backends"] = backends_environment()
    if args.json:
        print(strict_json.dumps(data, indent=2))
    else:
        print_env(data)
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
    from attnbench.report.console import make_console
    from attnbench.report.escaping import LiteralTable, literal

    console = make_console()
    table = LiteralTable(show_header=False)
    for section in ("host", "packages", "git"):
        for k, v in data[section].items():
            table.add_row(f"{section}.{k}", "-" if v is None else str(v))
    console.print(table)
    backends = LiteralTable(title="backends", title_justify="left", show_lines=True)
    for col in ("backend", "available", "device / versions", "clock", "memory", "energy", "peaks", "options"):
        backends.add_column(col, overflow="fold")
    for name, e in data.get("backends", {}).items():
        if not e["available"]:
            backends.add_row(name, literal("no", "red"), e["reason"] or "", "", "", "", "", "")
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
