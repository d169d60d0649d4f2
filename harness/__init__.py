"""attnbench: a hardware-aware benchmarking and profiling suite for transformer attention.

This package is the repository's `harness/` folder; `workloads/` and `backends/` are its
subpackages `attnbench.workloads` and `attnbench.backends` (pyproject.toml's package-dir).
The layers and what each may import: docs/architecture.md.
"""

__version__ = "0.2.0"
