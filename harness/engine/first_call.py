"""How long a case's first timed call may run: the slow-case rule's base, or more where the
case's work says it needs more (docs/measurement.md, "Slow cases").

No call of a case has run before its first, so nothing measured can scale that call's limit.
What can is the case's own size: its executed FLOPs over the host CPU's measured matmul
ceiling is the least time the call can take. FIRST_CALL_FACTOR times that covers a kernel at
a tenth of the ceiling (the fused SDPA kernel reaches about three quarters of it on this
project's VM), the first call's own start-up, and a busy machine. Only where the host CPU
runs the case (cpu, onnxruntime) and only from a calibration taken on a quiet machine: an
accelerator's first call is no function of its FLOPs alone (compilation, transfers), and a
busy calibration's ceiling is too low, which would only raise the limit more.
"""

from __future__ import annotations

from attnbench.backends.peaks import is_busy, load_calibration
from attnbench.core.cases import Case
from attnbench.core.registry import get_workload
from attnbench.workloads.shape import Shape

FIRST_CALL_FACTOR = 10.0
HOST_CPU_BACKENDS = ("cpu", "onnxruntime")
HOST_CPU_KEY = "cpu"  # the calibration cache's key for the host CPU (both backends' peak_key)


def least_first_call_s(case: Case) -> float | None:
    """The case's executed FLOPs at the host CPU's calibrated matmul ceiling for its dtype, in
    seconds; None off the host CPU, without a quiet calibration, or without a FLOP count."""
    if case.backend not in HOST_CPU_BACKENDS:
        return None
    entry = load_calibration().get(HOST_CPU_KEY)
    if not entry or is_busy(entry):
        return None
    ceiling = (entry.get("matmul_flops_per_s") or {}).get(case.dtype)
    if not isinstance(ceiling, (int, float)) or ceiling <= 0:
        return None
    cls = get_workload(case.variant)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    flops = cls.case_flops(cls.make_params(case.params_dict), shape, case.scope, case.mode, executed=True)
    return flops / ceiling if flops else None


def first_call_limit(base_s: float, case: Case) -> float:
    """The first timed call's limit: max(base, FIRST_CALL_FACTOR × least_first_call_s)."""
    least = least_first_call_s(case)
    return base_s if least is None else max(base_s, FIRST_CALL_FACTOR * least)
