"""Optimisation strategies as a sweep axis: compile, reduced precision, int8, pruning, distillation.

A transform takes the module a case builds (the untransformed "teacher") and returns what is
timed instead. Each transform states, next to its code, the fidelity it is expected to keep:
its outputs are compared with the untransformed module run in float64 on the same inputs
(relative error ||y - y_ref|| / ||y_ref|| and cosine similarity); a case beyond its tolerance
is flagged in the record and its notes, never hidden and never turned into an error.

Transforms run on the torch-executing backends (cpu, cuda): elsewhere the module is not what
runs (ONNX Runtime exports it; int8 through ONNX Runtime's own quantiser is not implemented).
The "none" transform is the identity and leaves the case, its id and its record as they were.

Each transform is a `Transform` class (base.py) registered by name (registry.py), one module
per kind; importing this package registers the built-in kinds. To add one: a module with a
`@register_transform` class, named in BUILTIN_MODULES below.

The worker calls `apply_transform` after building the module and before `backend.prepare`,
`Applied.timed_start/timed_stop` around sampling, and `Applied.finish` after timing.
"""

from __future__ import annotations

import importlib

from attnbench.engine.transforms.base import Applied, Transform, TransformUnsupported
from attnbench.engine.transforms.fidelity import Tolerance, fidelity_of, measure_fidelity
from attnbench.engine.transforms.registry import TRANSFORMS, apply_transform, check_names, register_transform

# The built-in kinds, in the order they are listed to users (`--transforms`' choices).
BUILTIN_MODULES = ("none", "torch_compile", "autocast", "int8", "heads", "prune_24", "distill")
for _module in BUILTIN_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "TRANSFORMS",
    "Applied",
    "Tolerance",
    "Transform",
    "TransformUnsupported",
    "apply_transform",
    "check_names",
    "fidelity_of",
    "measure_fidelity",
    "register_transform",
]
