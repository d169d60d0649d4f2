"""torch-xla on its CPU device (PJRT_DEVICE=CPU), for real. Runs in its own environment.

torch-xla pins its own torch, so .ci/run makes a second virtual environment with
torch 2.9 and torch_xla 2.9 and runs `pytest -m xla` there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BENCH, cli_env

pytestmark = pytest.mark.xla
pytest.importorskip("torch_xla", reason="torch_xla is not installed in this environment")


def _run(tmp: Path, *args: str) -> dict[str, dict[str, Any]]:
    out = tmp / "run"
    env = cli_env(PJRT_DEVICE="CPU", ATTNBENCH_PLUGINS="tests.plugins.recompiles")
    r = subprocess.run(
        [*BENCH, "run", "--suite", "smoke", "--backends", "xla", "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    return {f"{r['variant']}/{r['mode']}": r for r in recs}


@pytest.fixture(scope="module")
def xla_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return _run(
        tmp_path_factory.mktemp("xla"),
        *("--variants", "full.sdpa,sparse.bigbird,test.recompiles", "--seq-lens", "200"),
        *("--mode", "forward,train", "--max-time-per-case", "0.3"),
    )


@pytest.mark.parametrize("key", ["full.sdpa/forward", "full.sdpa/train", "sparse.bigbird/forward"])
def test_xla_cases_are_verified_and_keep_compile_time_apart(xla_run: dict, key: str) -> None:
    rec = xla_run[key]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["verification"]["verified"] is True  # XLA's output against float64
    assert rec["backend_settings"]["device_hw"] == "CPU"
    details = rec["backend_details"]
    assert details["compiles_before_timing"] >= 1  # the first call compiled
    assert details["compiles_during_timing"] == 0  # steady state: no compilation while timed
    assert rec["compile_s"] > rec["time_s"]["median"]  # compiling costs more than one steady call
    assert "wait_device_ops" in rec["sync"] and "torch_xla.sync()" in rec["sync"]
    assert rec["peak_memory_bytes"] is not None and "XLA:CPU" in rec["memory_method"]


def test_recompiling_in_the_timed_region_is_counted_and_flagged(xla_run: dict) -> None:
    rec = xla_run["test.recompiles/forward"]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["backend_details"]["compiles_during_timing"] > 0
    assert rec["stable"] is False
    assert any("compilation(s) during the timed region" in n for n in rec["notes"])
