"""Hardware ceilings: measured (`bench calibrate`) and datasheet, kept apart and labelled.

A figure is only hardware-aware when it can be placed against what the device could do:
each case's FLOP/s and bytes/s are divided by the peak matrix-multiply rate (per dtype)
and the memory bandwidth of its device. Measured peaks are cached per machine
fingerprint; datasheet peaks (dense, no structured sparsity, boost clock) are a fallback
for known accelerators and are never presented as measured.
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


def peaks_for(device_key: str, device_name: str) -> dict[str, Any]:
    """The ceilings a run records for a device: measured if calibrated here, else datasheet, else null."""
    measured = load_calibration().get(device_key)
    sheet = datasheet_for(device_name)
    if measured:
        return {
            "source": "calibrated",
            "reason": None,
            "matmul_flops_per_s": measured["matmul_flops_per_s"],
            "memory_bytes_per_s": measured["memory_bytes_per_s"],
            "calibrated_at": measured.get("calibrated_at"),
            "threads": measured.get("threads"),
            "method": measured.get("method"),
            "datasheet": sheet,
        }
    if sheet:
        return {
            "source": "datasheet",
            "reason": f"not calibrated on this machine (run `bench calibrate`); datasheet: {sheet['source_note']}",
            "matmul_flops_per_s": sheet["matmul_flops_per_s"],
            "memory_bytes_per_s": sheet["memory_bytes_per_s"],
            "datasheet": sheet,
        }
    return {
        "source": None,
        "reason": f"no calibration for {device_key} on this machine and no datasheet entry; run `bench calibrate`",
        "matmul_flops_per_s": {},
        "memory_bytes_per_s": None,
        "datasheet": None,
    }


def fraction_of_peak(
    peaks: dict[str, Any] | None, dtype: str, flops_per_s: float | None, bytes_per_s: float | None
) -> dict[str, Any]:
    """A case's achieved rates over its device's ceilings (None where a ceiling is unknown)."""
    if not peaks:
        return {"flops": None, "bytes": None, "source": None, "reason": "the device recorded no peak figures"}
    flops_peak = (peaks.get("matmul_flops_per_s") or {}).get(dtype)
    bandwidth = peaks.get("memory_bytes_per_s")
    reasons = []
    if peaks.get("reason") and peaks.get("source") is None:
        reasons.append(peaks["reason"])
    elif not flops_peak:
        reasons.append(f"no {dtype} matmul peak for this device")
    return {
        "flops": flops_per_s / flops_peak if flops_peak and flops_per_s is not None else None,
        "bytes": bytes_per_s / bandwidth if bandwidth and bytes_per_s is not None else None,
        "source": peaks.get("source"),
        "reason": "; ".join(reasons) or None,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
