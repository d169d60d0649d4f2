"""The package's layers: import-linter contracts, no import circles, one import package, and
commands on stored results that never load torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OLD = ROOT / "tests" / "fixtures" / "v0.1.0"


def test_layer_contracts_are_kept_and_there_is_no_import_circle() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lint_layers.py")], capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Contracts: 4 kept, 0 broken." in out
    assert "import circles: 0" in out


def test_one_import_package_and_no_old_top_level_names() -> None:
    """Nothing imports the old top-level packages (they would shadow other projects' modules)."""
    offenders = []
    for folder in ("harness", "workloads", "backends", "tests", "tools", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                words = line.split()
                if (
                    len(words) >= 2
                    and words[0] in ("import", "from")
                    and words[1].split(".")[0]
                    in (
                        "harness",
                        "workloads",
                        "backends",
                    )
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_every_package_folder_is_in_the_distribution() -> None:
    """pyproject.toml lists the packages by import name (package-dir maps the folders), so a new
    subpackage must be listed there or an install lacks it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"harness": "attnbench", "workloads": "attnbench.workloads", "backends": "attnbench.backends"}
    found = set()
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed


def _loads_torch(tmp_path: Path, argv: list[str]) -> tuple[int, bool, str]:
    """Run one bench command in a fresh interpreter; its exit code and whether torch got imported."""
    code = (
        "import sys\n"
        "from attnbench.cli.main import main\n"
        f"rc = main({argv!r})\n"
        "print('TORCH', 'torch' in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return proc.returncode, "TORCH True" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize(
    "command",
    [
        ["compare", "{old}/smoke", "{old}/resumed", "--noise-runs", "0", "--json", "{tmp}/c.json"],
        ["compare", "latest~1", "latest", "--history", "{tmp}/h.sqlite", "--noise-runs", "0"],
        ["report", "{old}/smoke", "{old}/resumed", "--out", "{tmp}/report"],
        ["report", "{old}/smoke", "--format", "terminal"],
        ["history", "list", "--history", "{tmp}/h.sqlite", "--json"],
        ["history", "show", "--history", "{tmp}/h.sqlite", "--variant", "full.sdpa", "--seq-len", "256"],
        ["history", "export", "latest", "{tmp}/exported", "--history", "{tmp}/h.sqlite"],
        ["export", "{old}/smoke", "--format", "bmf", "-o", "{tmp}/bmf.json"],
        ["export", "{old}/smoke", "--format", "pytest-benchmark", "-o", "{tmp}/pb.json"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_commands_on_stored_results_never_import_torch(tmp_path: Path, command: list[str]) -> None:
    shutil.copy(OLD / "history.sqlite", tmp_path / "h.sqlite")  # the fixture stays frozen
    argv = [a.format(old=OLD, tmp=tmp_path) for a in command]
    rc, torch_loaded, out = _loads_torch(tmp_path, argv)
    assert rc == 0, out
    assert not torch_loaded, out
    if command[0] == "compare" and "--json" in command:
        assert json.loads((tmp_path / "c.json").read_text())["schema"] == "attnbench.compare/1"
