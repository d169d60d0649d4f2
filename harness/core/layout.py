"""How the repository's folders become the package `attnbench`, for code that must lay them out
itself: running a given checkout rather than the installed one (bench ab's sides,
tools/aa_experiment.py, scripts/gpu_check.sh on a machine with no install), shipping the
driver's code to Ray nodes, and checking the layer contracts (tools/lint_layers.py).

A checkout's folders are not its import names: harness/ is the package `attnbench`, and
workloads/ and backends/ are `attnbench.workloads` and `attnbench.backends` (pyproject.toml's
package-dir). So a checkout's code is imported through an *import root*: a folder holding
`attnbench/`, made of links to the checkout's files (or copies), put first on PYTHONPATH.
Checkouts from before that layout (top-level `harness`, `workloads`, `backends` packages) run
as they always did, from their own folder.

Also a script, for shells: `python harness/core/layout.py CHECKOUT DEST` makes DEST an import
root for CHECKOUT and prints it. It imports nothing, so it runs before attnbench is importable.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "attnbench"
# The subpackages a checkout keeps in folders of their own: import name -> folder.
SUBPACKAGE_FOLDERS = {"workloads": "workloads", "backends": "backends"}


@dataclass(frozen=True)
class CheckoutCommand:
    """How to run `bench` from one checkout: the module for `python -m`, and the folder to
    put first on PYTHONPATH."""

    module: str
    pythonpath: Path


def is_checkout(path: Path) -> bool:
    return (path / "harness" / "__main__.py").is_file() or (path / "harness" / "cli.py").is_file()


def lay_out_package(package: Path, subpackages: dict[str, Path], dest: Path, copy: bool = False) -> Path:
    """Make dest the package: the entries of `package` (the folder of `attnbench` itself), and
    each subpackage's folder under its import name. Links by default; copies (without
    __pycache__) where links would not be followed. dest must not exist. Returns dest."""
    dest.mkdir(parents=True)
    for entry in sorted(package.iterdir()):
        if entry.name == "__pycache__" or entry.name in subpackages:
            continue
        if not copy:
            (dest / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        elif entry.is_dir():
            shutil.copytree(entry, dest / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(entry, dest / entry.name)
    for name, folder in subpackages.items():
        if copy:
            shutil.copytree(folder, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).symlink_to(folder, target_is_directory=True)
    return dest


def make_import_root(checkout: Path, dest: Path, copy: bool = False) -> Path:
    """Make dest an import root for checkout (dest/attnbench is the checkout's package).
    Returns dest."""
    checkout = checkout.resolve()
    folders = {name: checkout / folder for name, folder in SUBPACKAGE_FOLDERS.items()}
    lay_out_package(checkout / "harness", folders, dest / PACKAGE, copy=copy)
    return dest


def bench_command(checkout: Path, scratch: Path) -> CheckoutCommand:
    """How to run bench from checkout; scratch is an empty folder this may use (and the
    caller removes)."""
    checkout = checkout.resolve()
    if (checkout / "harness" / "cli.py").is_file():  # before one namespace: `harness` was top-level
        return CheckoutCommand("harness.cli", checkout)
    return CheckoutCommand(PACKAGE, make_import_root(checkout, scratch))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python harness/core/layout.py CHECKOUT DEST\n")
        raise SystemExit(2)
    print(make_import_root(Path(sys.argv[1]), Path(sys.argv[2])))
