from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs made by the tests are recorded in a throwaway history, never the checkout's
# results/history.sqlite (subprocesses inherit it through cli_env).
os.environ.setdefault(
    "ATTNBENCH_HISTORY", str(Path(tempfile.mkdtemp(prefix="attnbench-test-history-")) / "history.sqlite")
)
# Calibration and the ONNX export cache likewise live in a throwaway folder: a test never
# sees this machine's real calibration, and exports are really made.
os.environ.setdefault("ATTNBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="attnbench-test-cache-"))
FAULTY = "tests.plugins.faulty"


@pytest.fixture
def faulty_plugins(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the misbehaving test workloads here and in every worker."""
    monkeypatch.setenv("ATTNBENCH_PLUGINS", FAULTY)
    from harness.registry import load_plugins

    load_plugins()
    return FAULTY


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running `bench` in a subprocess that can import the tests package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


BENCH = [sys.executable, "-m", "harness.cli"]
