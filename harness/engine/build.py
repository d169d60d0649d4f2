"""Loading and building a case inside a worker: the variant and backend, the module (built by
the case's implementation, attnbench.workloads.impls), its transform and inputs, and the
prepared step. Shared by the timing, memory and profiling phases."""

from __future__ import annotations

import time
from typing import Any

import torch

from attnbench.backends.base import DTYPES, Backend, Step
from attnbench.core.cases import Case
from attnbench.core.errors import Unsupported
from attnbench.core.registry import get_backend, get_impl, get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.transforms import Applied, TransformUnsupported, apply_transform
from attnbench.workloads.base import AttentionVariant, Shape
from attnbench.workloads.impls.base import Implementation


def load_case(case: Case, settings: RunSettings) -> tuple[type[AttentionVariant], Backend]:
    """The variant and backend of a case that can run here; raises Unsupported (with the reason)
    where the backend or the case's implementation cannot run it."""
    load_plugins()
    cls = get_workload(case.variant)
    backend = get_backend(case.backend)(settings.options_for(case.backend))
    reason = backend.supports(case)
    if reason:
        raise Unsupported(reason)
    reason = impl_refusal(case)
    if reason:
        raise Unsupported(reason)
    return cls, backend


def impl_refusal(case: Case) -> str | None:
    """Why the case's implementation is missing here or cannot run the case, or None. Cheap (no
    device work): the driver asks it before starting a worker, the worker again where it runs."""
    if case.impl == "native":
        return None
    impl, cls = get_impl(case.impl), get_workload(case.variant)
    missing = impl.availability()
    if missing:
        return f"implementation {impl.name} is not available here: {missing}"
    params = cls.make_params(case.params_dict)
    reason = impl.supports(cls, params, case.scope, case.backend) or impl.supports_dtype(cls, params, case.dtype)
    return f"{impl.name}: {reason}" if reason else None


def case_metrics(cls: type[AttentionVariant], impl: type[Implementation], module: torch.nn.Module) -> dict[str, Any]:
    """The record's workload_metrics: the variant's own figures read off its own module (native),
    and what the implementation knows (e.g. its mask or block-mask time)."""
    own = cls.case_metrics(module) if impl.name == "native" else {}
    return {**own, **impl.case_metrics(module)}


def build_transformed(
    cls: type[AttentionVariant], backend: Backend, case: Case, seed: int
) -> tuple[Step, float, Applied, tuple[torch.Tensor, ...]]:
    """The prepared step, the seconds preparation took, the case's transform as applied to
    the built module (the identity for "none"), and the inputs."""
    params = cls.make_params(case.params_dict)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    module = get_impl(case.impl).build(cls, params, shape, case.scope)  # native: cls.build
    inputs = cls.make_inputs(shape, case.scope, DTYPES[case.dtype], backend.device, gen)
    try:
        applied = apply_transform(case, module, inputs, seed)
    except TransformUnsupported as exc:
        raise Unsupported(str(exc)) from None
    t0 = time.perf_counter()
    step = backend.prepare(applied.module, inputs, case)
    return step, time.perf_counter() - t0, applied, inputs


def build_step(
    cls: type[AttentionVariant], backend: Backend, case: Case, seed: int
) -> tuple[Step, float, torch.nn.Module]:
    """The prepared step for the case, the seconds preparation took, and the module."""
    step, prepare_s, applied, _ = build_transformed(cls, backend, case, seed)
    return step, prepare_s, applied.metrics_module or applied.module
