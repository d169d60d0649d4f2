"""Hardware ceilings: measured (`bench calibrate`) and datasheet, kept apart and labelled.

A figure is only hardware-aware when it can be placed against what the device could do:
each case's FLOP/s and bytes/s are divided by the peak matrix-multiply rate (per dtype)
and the memory bandwidth of its device. Measured peaks are cached per machine
fingerprint; datasheet peaks (dense, no structured sparsity, boost clock) are a fallback
for known accelerators and are never presented as measured. A calibration taken while other
processes used the CPU (`busy`, attnbench.engine.calibrate) is kept but is never a ceiling.
A case that runs faster than its ceiling gets no fraction but a note (`over_ceiling`): a
fraction above 1 only says the ceiling is wrong.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil

from attnbench.core.strict_json import dumps

CACHE_ENV = "ATTNBENCH_CACHE_DIR"
CALIBRATION_SCHEMA = "attnbench.calibration/1"

# Dense peaks from vendor datasheets: {name substring: (flops per dtype, memory bytes/s, source)}.
# float32 is the non-tensor-core rate, because torch does not use TF32 for float32 matmul by default.
TFLOPS = 1e12
DATASHEET: dict[str, tuple[dict[str, float], float, str]] = {
    "H200": (
        {"float32": 67 * TFLOPS, "bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS},
        4.8e12,
        "NVIDIA H200 SXM datasheet (dense)",
    ),
    "H100 PCIe": (
        {"float32": 51 * TFLOPS, "bfloat16": 756 * TFLOPS, "float16": 756 * TFLOPS},
        2.0e12,
        "NVIDIA H100 PCIe datasheet (dense)",
    ),
    "H100": (
        {"float32": 67 * TFLOPS, "bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS},
        3.35e12,
        "NVIDIA H100 SXM datasheet (dense)",
    ),
    "A100-SXM4-80GB": (
        {"float32": 19.5 * TFLOPS, "bfloat16": 312 * TFLOPS, "float16": 312 * TFLOPS},
        2.039e12,
        "NVIDIA A100 80GB SXM datasheet (dense)",
    ),
    "A100": (
        {"float32": 19.5 * TFLOPS, "bfloat16": 312 * TFLOPS, "float16": 312 * TFLOPS},
        1.555e12,
        "NVIDIA A100 40GB datasheet (dense)",
    ),
    "L4": (
        {"float32": 30.3 * TFLOPS, "bfloat16": 121 * TFLOPS, "float16": 121 * TFLOPS},
        300e9,
        "NVIDIA L4 datasheet (dense)",
    ),
    "A10": (
        {"float32": 31.2 * TFLOPS, "bfloat16": 125 * TFLOPS, "float16": 125 * TFLOPS},
        600e9,
        "NVIDIA A10 datasheet (dense)",
    ),
    "T4": ({"float32": 8.1 * TFLOPS, "float16": 65 * TFLOPS}, 320e9, "NVIDIA T4 datasheet (dense)"),
    "V100": ({"float32": 15.7 * TFLOPS, "float16": 125 * TFLOPS}, 900e9, "NVIDIA V100 SXM2 datasheet"),
    "RTX 4090": (
        {"float32": 82.6 * TFLOPS, "bfloat16": 165 * TFLOPS, "float16": 165 * TFLOPS},
        1008e9,
        "NVIDIA RTX 4090 datasheet (dense, FP16 accumulate FP32)",
    ),
    "TPU v4": ({"bfloat16": 275 * TFLOPS}, 1.2e12, "Google Cloud TPU v4 documentation (per chip)"),
    "TPU v5e": ({"bfloat16": 197 * TFLOPS}, 819e9, "Google Cloud TPU v5e documentation (per chip)"),
    "TPU v5p": ({"bfloat16": 459 * TFLOPS}, 2.765e12, "Google Cloud TPU v5p documentation (per chip)"),
    "TPU v6e": ({"bfloat16": 918 * TFLOPS}, 1.64e12, "Google Cloud TPU v6e (Trillium) documentation (per chip)"),
}


def datasheet_for(device_name: str) -> dict[str, Any] | None:
    """The first datasheet entry whose key occurs in the device name (longest keys first)."""
    for key in sorted(DATASHEET, key=len, reverse=True):
        if key.lower() in device_name.lower():
            flops, bandwidth, source = DATASHEET[key]
            return {"matmul_flops_per_s": dict(flops), "memory_bytes_per_s": bandwidth, "source_note": source}
    return None


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "attnbench"


def machine_fingerprint() -> str:
    """Stable for one machine: hostname, CPU model, core counts, memory. Not the software."""
    from attnbench.core.environment import cpu_model

    parts = [
        platform.node(),
        platform.machine(),
        cpu_model(),
        str(psutil.cpu_count(logical=False)),
        str(psutil.cpu_count(logical=True)),
        str(psutil.virtual_memory().total),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def calibration_path() -> Path:
    return cache_dir() / "peaks" / f"{machine_fingerprint()}.json"


def load_calibration() -> dict[str, Any]:
    """Device key -> measured peaks, for this machine; {} when never calibrated."""
    path = calibration_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if data.get("schema") != CALIBRATION_SCHEMA or data.get("fingerprint") != machine_fingerprint():
        return {}
    return data.get("devices", {})


def save_calibration(device_key: str, entry: dict[str, Any]) -> Path:
    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    devices = load_calibration()
    devices[device_key] = entry
    data = {"schema": CALIBRATION_SCHEMA, "fingerprint": machine_fingerprint(), "devices": devices}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dumps(data, indent=2))
    tmp.replace(path)
    return path


def is_busy(entry: dict[str, Any]) -> bool:
    """Whether a stored calibration was taken while other processes used too much of the CPU.
    One from before the load was recorded counts as quiet: nothing says otherwise."""
    return entry.get("busy") is True


def peaks_for(device_key: str, device_name: str) -> dict[str, Any]:
    """The ceilings a run records for a device: measured if calibrated here on a quiet machine,
    else datasheet, else null."""
    measured = load_calibration().get(device_key)
    sheet = datasheet_for(device_name)
    if measured and not is_busy(measured):
        return {
            "source": "calibrated",
            "reason": None,
            "matmul_flops_per_s": measured["matmul_flops_per_s"],
            "memory_bytes_per_s": measured["memory_bytes_per_s"],
            "calibrated_at": measured.get("calibrated_at"),
            "threads": measured.get("threads"),
            "method": measured.get("method"),
            "other_cpu_share": measured.get("other_cpu_share"),
            "quick": measured.get("quick"),
            "datasheet": sheet,
        }
    if measured:  # busy: recorded beside the ceiling (if any), so the run says why it was not used
        share = measured.get("other_cpu_share")
        missing = (
            f"this machine's calibration of {device_key} ({measured.get('calibrated_at') or 'undated'}) was taken "
            f"while other processes used {f'{share:.0%}' if isinstance(share, (int, float)) else 'too much'} of the "
            "CPU, so it is no ceiling; run `bench calibrate` "
            "when the machine is quiet"
        )
        busy = {
            k: measured.get(k)
            for k in ("matmul_flops_per_s", "memory_bytes_per_s", "calibrated_at", "other_cpu_share", "method")
        }
    else:
        missing, busy = None, None
    if sheet:
        return {
            "source": "datasheet",
            "reason": f"{missing or 'not calibrated on this machine (run `bench calibrate`)'}; "
            f"datasheet: {sheet['source_note']}",
            "matmul_flops_per_s": sheet["matmul_flops_per_s"],
            "memory_bytes_per_s": sheet["memory_bytes_per_s"],
            "datasheet": sheet,
            **({"busy_calibration": busy} if busy else {}),
        }
    return {
        "source": None,
        "reason": f"{missing} (and no datasheet entry)"
        if missing
        else f"no calibration for {device_key} on this machine and no datasheet entry; run `bench calibrate`",
        "matmul_flops_per_s": {},
        "memory_bytes_per_s": None,
        "datasheet": None,
        **({"busy_calibration": busy} if busy else {}),
    }


def fraction_of_peak(
    peaks: dict[str, Any] | None, dtype: str, flops_per_s: float | None, bytes_per_s: float | None
) -> dict[str, Any]:
    """A case's achieved rates over its device's ceilings (None where a ceiling is unknown).

    A rate above its ceiling gets no fraction (a fraction above 1 is no figure of the case: the
    ceiling is wrong) but `over_ceiling` {flops|bytes: achieved over ceiling} and a reason."""
    if not peaks:
        return {"flops": None, "bytes": None, "source": None, "reason": "the device recorded no peak figures"}
    flops_peak = (peaks.get("matmul_flops_per_s") or {}).get(dtype)
    bandwidth = peaks.get("memory_bytes_per_s")
    reasons = []
    if peaks.get("reason") and peaks.get("source") is None:
        reasons.append(peaks["reason"])
    elif not flops_peak:
        reasons.append(f"no {dtype} matmul peak for this device")
    fractions = {
        "flops": flops_per_s / flops_peak if flops_peak and flops_per_s is not None else None,
        "bytes": bytes_per_s / bandwidth if bandwidth and bytes_per_s is not None else None,
    }
    over = {what: f for what, f in fractions.items() if f is not None and f > 1}
    source = peaks.get("source") or "recorded"
    if "flops" in over:
        fractions["flops"] = None
        reasons.append(
            f"{flops_per_s / 1e12:.3g} TFLOP/s achieved, above the {source} {dtype} matmul ceiling of "  # type: ignore[operator]
            f"{flops_peak / 1e12:.3g} TFLOP/s: the ceiling is too low (e.g. calibrated on a busy machine); "
            "`bench calibrate` on a quiet machine re-measures it"
        )
    if "bytes" in over:
        fractions["bytes"] = None
        reasons.append(
            f"{bytes_per_s / 1e9:.3g} GB/s of minimum traffic achieved, above the {source} bandwidth of "  # type: ignore[operator]
            f"{bandwidth / 1e9:.3g} GB/s: the data stayed in cache, or the ceiling is too low"
        )
    out = {**fractions, "source": peaks.get("source"), "reason": "; ".join(reasons) or None}
    if over:
        out["over_ceiling"] = over
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
