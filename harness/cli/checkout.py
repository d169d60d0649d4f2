"""Running the code of a given attnbench checkout rather than the installed one (bench ab's
sides, tools/aa_experiment.py, scripts/gpu_check.sh on a machine with no install).

A checkout's folders are not its import names: harness/ is the package `attnbench`, and
workloads/ and backends/ are `attnbench.workloads` and `attnbench.backends`
(pyproject.toml's package-dir). So a checkout's code is imported through an *import root*:
a folder holding `attnbench/`, made of links to the checkout's files, put first on
PYTHONPATH. Checkouts from before that layout (top-level `harness`, `workloads`,
`backends` packages) run as they always did, from their own folder.

Also a script, for shells: `python harness/cli/checkout.py CHECKOUT DEST` makes DEST an
import root for CHECKOUT and prints it. It imports nothing of attnbench for that reason.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# The package's folders in a checkout, by import name under attnbench.
SUBPACKAGE_FOLDERS = {"workloads": "workloads", "backends": "backends"}


@dataclass(frozen=True)
class CheckoutCommand:
    """How to run `bench` from one checkout: the module for `python -m`, and the folder to
    put first on PYTHONPATH."""

    module: str
    pythonpath: Path


def is_checkout(path: Path) -> bool:
    return (path / "harness" / "__main__.py").is_file() or (path / "harness" / "cli.py").is_file()


def make_import_root(checkout: Path, dest: Path) -> Path:
    """Make dest an import root for checkout: dest/attnbench links to harness/'s entries, plus
    attnbench/workloads and attnbench/backends to those folders. Returns dest."""
    checkout = checkout.resolve()
    package = dest / "attnbench"
    package.mkdir(parents=True, exist_ok=False)
    for entry in sorted((checkout / "harness").iterdir()):
        if entry.name != "__pycache__" and entry.name not in SUBPACKAGE_FOLDERS:
            (package / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGE_FOLDERS.items():
        (package / name).symlink_to(checkout / folder, target_is_directory=True)
    return dest


def bench_command(checkout: Path, scratch: Path) -> CheckoutCommand:
    """How to run bench from checkout; scratch is an empty folder this may use (and the
    caller removes)."""
    checkout = checkout.resolve()
    if (checkout / "harness" / "cli.py").is_file():  # before one namespace: `harness` was top-level
        return CheckoutCommand("harness.cli", checkout)
    return CheckoutCommand("attnbench", make_import_root(checkout, scratch))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python harness/cli/checkout.py CHECKOUT DEST\n")
        raise SystemExit(2)
    print(make_import_root(Path(sys.argv[1]), Path(sys.argv[2])))
