"""The host fingerprint recorded in run.json and shown by `bench env`."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

PACKAGES = (
    "attnbench",
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch_xla",
    "ray",
    "nvidia-ml-py",
    "psutil",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    mem = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem.total,
    }


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_info(src: Path | None = None) -> dict[str, Any]:
    """The commit of a checkout (by default the attnbench source that runs), and whether git sees
    changes in it: untracked files included, since a new file a variant imports changes what runs."""
    src = src or Path(__file__).resolve().parents[2]  # the checkout (this file is harness/core/environment.py)
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None, "reason": "attnbench is not running from a git checkout"}
        status = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"commit": None, "dirty": None, "reason": f"git unavailable: {exc}"}


def fingerprint() -> dict[str, Any]:
    return {"host": host_info(), "packages": package_versions(), "git": git_info()}
