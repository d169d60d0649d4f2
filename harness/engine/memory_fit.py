"""Whether a case can fit in its device's free memory, by the variant's analytic estimate.

The estimate follows the kernel torch will run: the backend says which one SDPA selects for
the case (`Backend.sdpa_choice`), and variants that call SDPA count that kernel's memory. A
case's implementation may count its own (`Implementation.peak_estimate`: masked_sdpa's dense
mask); None leaves the variant's estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.backends.base import DTYPES
from attnbench.core.cases import Case
from attnbench.core.registry import get_backend, get_impl, get_workload
from attnbench.core.sdpa import SdpaChoice
from attnbench.engine.build import impl_refusal
from attnbench.workloads.shape import Shape

MEMORY_HEADROOM = 0.9  # share of free memory a case may be expected to use


def memory_refusal(case: Case) -> str | None:
    """Why the case cannot fit in the free memory of its device here, by its analytic estimate, or None."""
    if impl_refusal(case):
        return None  # it never runs: it is recorded unsupported, with the reason
    need = peak_estimate(case)
    free = get_backend(case.backend).free_memory_bytes()
    if free is not None and need.bytes > MEMORY_HEADROOM * free:
        return f"needs about {need.bytes / 2**30:.1f} GiB by its analytic estimate; {free / 2**30:.1f} GiB is free"
    return None


@dataclass(frozen=True)
class PeakEstimate:
    bytes: int  # the case's inputs and the variant's estimate of its peak above them
    sdpa: SdpaChoice  # the kernel the backend said torch's SDPA would run, which the estimate assumed


def peak_estimate(case: Case) -> PeakEstimate:
    """The case's memory need by its variant's analytic estimate, for the kernel its backend will run."""
    cls = get_workload(case.variant)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    itemsize = DTYPES[case.dtype].itemsize
    params = cls.make_params(case.params_dict)
    sdpa = get_backend(case.backend).sdpa_choice(case)
    need = get_impl(case.impl).peak_estimate(cls, params, shape, case.scope, itemsize, case.mode, sdpa)
    if need is None:  # the implementation's memory is the variant's (native)
        need = cls.case_peak_estimate(params, shape, case.scope, itemsize, case.mode, sdpa)
    need += 3 * case.batch * case.heads * case.seq_len * case.head_dim * itemsize  # inputs
    return PeakEstimate(need, sdpa)
