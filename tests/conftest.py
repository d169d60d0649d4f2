from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _throwaway_dir(prefix: str) -> str:
    """A temporary folder removed when the test session ends (one per session piled up in /tmp)."""
    path = tempfile.mkdtemp(prefix=prefix)
    owner = os.getpid()

    def remove() -> None:
        # A forked child inherits this hook; only the session that made the folder removes it.
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


# Runs made by the tests are recorded in a throwaway history, never the checkout's
# results/history.sqlite (subprocesses inherit it through cli_env).
if "ATTNBENCH_HISTORY" not in os.environ:
    os.environ["ATTNBENCH_HISTORY"] = str(Path(_throwaway_dir("attnbench-test-history-")) / "history.sqlite")
# Calibration and the ONNX export cache likewise live in a throwaway folder: a test never
# sees this machine's real calibration, and exports are really made.
if "ATTNBENCH_CACHE_DIR" not in os.environ:
    os.environ["ATTNBENCH_CACHE_DIR"] = _throwaway_dir("attnbench-test-cache-")
# With that cache empty, every `bench run` would first calibrate its device (a few seconds):
# tests that want the first-run calibration clear this (tests/test_first_run_calibration.py).
os.environ.setdefault("ATTNBENCH_NO_CALIBRATE", "1")
FAULTY = "tests.plugins.faulty"


@pytest.fixture
def faulty_plugins(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the misbehaving test workloads here and in every worker."""
    monkeypatch.setenv("ATTNBENCH_PLUGINS", FAULTY)
    from attnbench.core.registry import load_plugins

    load_plugins()
    return FAULTY


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running `bench` in a subprocess that can import the tests package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


BENCH = [sys.executable, "-m", "attnbench"]
