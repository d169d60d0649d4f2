"""The host fingerprint recorded in run.json and shown by `bench env`."""

from __future__ import annotations

import datetime as dt
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
# The checkout of the attnbench source that runs (this file is harness/core/environment.py).
CHECKOUT = Path(__file__).resolve().parents[2]


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


# CI systems check out a pull request or a pipeline's commit on a detached HEAD, and name its
# branch in their environment: (branch variable, the commit it describes). GitHub's ref name
# is a tag's name on a tag push (GITHUB_REF_TYPE=tag), which is no branch.
CI_BRANCHES = (("GITHUB_REF_NAME", "GITHUB_SHA"), ("CI_COMMIT_BRANCH", "CI_COMMIT_SHA"))


def _git(src: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10)


def git_branch(src: Path | None = None, commit: str | None = None) -> str | None:
    """The branch a checkout is on: its symbolic branch, or on a detached HEAD the branch the
    CI names (GITHUB_REF_NAME, CI_COMMIT_BRANCH) when the CI's commit is the one checked out
    (a second checkout of another commit in the same job, such as bench ab's baseline, is not
    on it); None otherwise, or outside a git checkout."""
    src = src or CHECKOUT
    try:
        symbolic = _git(src, "symbolic-ref", "--short", "-q", "HEAD")
        if symbolic.returncode == 0 and symbolic.stdout.strip():
            return symbolic.stdout.strip()
        if commit is None:
            head = _git(src, "rev-parse", "HEAD")
            if head.returncode != 0:
                return None
            commit = head.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if os.environ.get("GITHUB_REF_TYPE") == "tag":
        return None
    for name, sha in CI_BRANCHES:
        branch, ci_commit = os.environ.get(name), os.environ.get(sha)
        if branch and (not ci_commit or ci_commit == commit):
            return branch
    return None


def _commit_time(src: Path) -> str | None:
    """The commit's committer time, ISO 8601 in UTC like every timestamp the project writes."""
    shown = _git(src, "show", "-s", "--format=%cI", "HEAD")
    try:
        when = dt.datetime.fromisoformat(shown.stdout.strip())
    except ValueError:
        return None
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def git_info(src: Path | None = None) -> dict[str, Any]:
    """The commit of a checkout (by default the attnbench source that runs), whether git sees
    changes in it (untracked files included, since a new file a variant imports changes what
    runs), its branch (git_branch) and the commit's time (the history orders a branch's runs by it)."""
    src = src or CHECKOUT
    unknown = {"commit": None, "dirty": None, "branch": None, "commit_time": None}
    try:
        commit = _git(src, "rev-parse", "HEAD")
        if commit.returncode != 0:
            return {**unknown, "reason": "attnbench is not running from a git checkout"}
        sha = commit.stdout.strip()
        status = _git(src, "status", "--porcelain")
        return {
            "commit": sha,
            "dirty": bool(status.stdout.strip()),
            "branch": git_branch(src, sha),
            "commit_time": _commit_time(src),
        }
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**unknown, "reason": f"git unavailable: {exc}"}


def fingerprint() -> dict[str, Any]:
    return {"host": host_info(), "packages": package_versions(), "git": git_info()}
