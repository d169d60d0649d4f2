"""Check the layer contracts (pyproject.toml's [tool.importlinter]) and count import circles.

import-linter walks a package's folder on disk, but attnbench is spread over three folders
(harness/ is the package, workloads/ and backends/ its subpackages; pyproject.toml's
package-dir). So this lays them out as the installed package does, in a temporary folder,
and runs `lint-imports` there. Then it counts strongly connected components of the module
import graph, function-level imports included (only `if TYPE_CHECKING:` ones are left out).

Usage: python tools/lint_layers.py   (exit 0: every contract kept and no circle)
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness" / "core"))  # layout.py imports nothing: usable before any install
from layout import make_import_root  # noqa: E402


def lay_out(dest: Path) -> Path:
    """Copy the three folders into dest/attnbench as an install would; returns that folder.
    Copies, not links: import-linter does not follow linked folders."""
    return make_import_root(ROOT, dest, copy=True) / "attnbench"


def _module_name(path: Path, package_root: Path) -> str:
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(a.name for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        self.found.add(module)
        self.found.update(f"{module}.{a.name}" for a in node.names)


def import_graph(package_root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name resolves to its longest known module)."""
    files = {_module_name(p, package_root): p for p in package_root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        targets = set()
        for imported in visitor.found:
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="attnbench-layers-") as tmp:
        package = lay_out(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # The environment's own lint-imports first (the venv running this may not be on PATH).
        beside = Path(sys.executable).with_name("lint-imports")
        lint = str(beside) if beside.is_file() else shutil.which("lint-imports") or "lint-imports"
        proc = subprocess.run([lint, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tmp, env=env, text=True)
        found = circles(import_graph(package))
    print(f"import circles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    return 1 if proc.returncode or found else 0


if __name__ == "__main__":
    raise SystemExit(main())
