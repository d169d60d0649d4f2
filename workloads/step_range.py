"""Named profiler ranges around the steps of a variant, cheap when no profiler runs."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.profiler import record_function

_profiler_enabled = torch._C._autograd._profiler_enabled
_NO_RANGE = contextlib.nullcontext()


def step_range(name: str) -> contextlib.AbstractContextManager[Any]:
    """A named profiler range around one step of a variant ("lsh.hash"), so `bench profile`
    can attribute time and memory to it.

    `record_function` costs microseconds per use even when no profiler runs (it enters the
    dispatcher); guarded by the profiler's own flag, an unprofiled call pays a C flag read.
    """
    if torch.compiler.is_compiling():  # the profiler flag is opaque to dynamo: reading it breaks the graph
        return _NO_RANGE
    return record_function(name) if _profiler_enabled() else _NO_RANGE
