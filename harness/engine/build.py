"""Loading and building a case inside a worker: the variant and backend, the module, its
transform and inputs, and the prepared step. Shared by the timing and profiling phases."""

from __future__ import annotations

import time

import torch

from attnbench.backends.base import DTYPES, Backend, Step
from attnbench.core.cases import Case
from attnbench.core.errors import Unsupported
from attnbench.core.registry import get_backend, get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.transforms import Applied, TransformUnsupported, apply_transform
from attnbench.workloads.base import AttentionVariant, Shape


def load_case(case: Case, settings: RunSettings) -> tuple[type[AttentionVariant], Backend]:
    load_plugins()
    cls = get_workload(case.variant)
    backend = get_backend(case.backend)(settings.options_for(case.backend))
    reason = backend.supports(case)
    if reason:
        raise Unsupported(reason)
    return cls, backend


def build_transformed(
    cls: type[AttentionVariant], backend: Backend, case: Case, seed: int
) -> tuple[Step, float, Applied, tuple[torch.Tensor, ...]]:
    """The prepared step, the seconds preparation took, the case's transform as applied to
    the built module (the identity for "none"), and the inputs."""
    params = cls.make_params(case.params_dict)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    module = cls.build(params, shape, case.scope)
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
