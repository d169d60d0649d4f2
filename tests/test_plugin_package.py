"""A real plugin distribution, pip-installed, adds a variant and a backend through entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BENCH, ROOT, cli_env

EXAMPLE = ROOT / "examples" / "attnbench-example-plugin"


@pytest.mark.slow  # pip-installs a package: run by CI (-m slow), kept out of the default run
def test_example_plugin_package_installs_and_runs_a_case(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"),
            *("--target", str(site), str(EXAMPLE)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    assert list(site.glob("attnbench_example_plugin-*.dist-info/entry_points.txt"))
    env = cli_env(PYTHONPATH=f"{site}:{cli_env()['PYTHONPATH']}", COLUMNS="200")  # no wrapped names
    listed = subprocess.run([*BENCH, "list"], capture_output=True, text=True, timeout=120, env=env)
    assert "example.strided" in listed.stdout and "example-cpu-single" in listed.stdout
    assert "plugin failed" not in listed.stdout
    out = tmp_path / "run"
    run = subprocess.run(
        [
            *BENCH,
            *("run", "--suite", "smoke", "--variants", "example.strided", "--backends", "example-cpu-single"),
            *("--seq-lens", "96", "--max-time-per-case", "0.1", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    (rec,) = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert rec["status"] == "ok", rec["reason"]
    assert rec["backend"] == "example-cpu-single" and rec["variant"] == "example.strided"
    assert rec["verification"]["verified"] is True  # checked against its dense mask like any variant
    assert rec["backend_settings"] == {"threads": 1, "pinned_by": "attnbench-example-plugin"}
