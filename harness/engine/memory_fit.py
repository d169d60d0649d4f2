"""Whether a case can fit in its device's free memory, by the variant's analytic estimate."""

from __future__ import annotations

from attnbench.backends.base import DTYPES
from attnbench.core.cases import Case
from attnbench.core.registry import get_backend, get_workload
from attnbench.workloads.shape import Shape

MEMORY_HEADROOM = 0.9  # share of free memory a case may be expected to use


def memory_refusal(case: Case) -> str | None:
    """Why the case cannot fit in the free memory of its device here, by its analytic estimate, or None."""
    cls = get_workload(case.variant)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    itemsize = DTYPES[case.dtype].itemsize
    params = cls.make_params(case.params_dict)
    need = cls.case_peak_estimate(params, shape, case.scope, itemsize, case.mode)
    need += 3 * case.batch * case.heads * case.seq_len * case.head_dim * itemsize  # inputs
    free = get_backend(case.backend).free_memory_bytes()
    if free is not None and need > MEMORY_HEADROOM * free:
        return f"needs about {need / 2**30:.1f} GiB by its analytic estimate; {free / 2**30:.1f} GiB is free"
    return None
