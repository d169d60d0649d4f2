"""`bench run` with no arguments: the README's first command, end to end (slow: about a minute)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BENCH, cli_env


@pytest.mark.slow
def test_bench_run_without_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([*BENCH, "run"], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "results").iterdir()
    run = json.loads((folder / "run.json").read_text())
    assert run["suite"] == "default" and run["status"] == "complete"
    records = [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines()]
    assert len(records) == run["cases_total"] and max(r["seq_len"] for r in records) == 4096
    assert all(r["status"] == "ok" for r in records), [r["reason"] for r in records if r["status"] != "ok"]
    # Core scope: full.sdpa also runs in layer scope, as the layer-only designs' baseline.
    by = {(r["variant"], r["seq_len"]): r for r in records if r["scope"] == "core"}
    # The memory figures the issue asks to tell apart: two n×n buffers vs a fused kernel.
    assert by["full.naive", 4096]["peak_memory_bytes"] > 0.75 * 2**30
    assert by["full.sdpa", 4096]["peak_memory_bytes"] < 64 * 2**20
