"""Sparse attention: cost about linear in n, and never an n×n tensor.

One module per variant; importing the package registers them all.
"""

from attnbench.workloads.sparse import bigbird, lsh, sliding_window  # noqa: F401
