"""What a case's numbers can be compared with: three hashes each record carries.

- `definition_hash` (decides comparability): *what* the case computes. The case's identity
  (variant, resolved parameters, shape, dtype, mode, scope, transform, revision), its useful
  FLOP formula evaluated at its shape, and its definition evaluated where the worker verifies the
  case (fixed inputs, at the variant's `verify_length`, which runs the path being timed): the
  reference mask and the float64 reference output. A kernel edit leaves all of these alone; a
  change to the parameters, the mask, the reference or the useful-FLOP formula changes the
  hash. Executed FLOPs and memory formulas follow the kernel (padding, scratch), so a kernel
  that needs less memory is compared, not refused. Being a
  fingerprint of behaviour, not of source, a refactor of the reference that computes the same
  keeps it. Workloads with no core form (adaptive.*, hierarchical.han) have no reference apart
  from their module, so their source stands in: any edit changes their hash, as before.
- `implementation_hash`: *how* it is computed. The variant's source files (executed-FLOP and
  memory formulas included) and the modules
  around it (the layer, its backend's module), and the library versions. Two records with the
  same definition and different implementations are compared, with a note "code changed", so
  a slower kernel is a regression.
- `workload_hash` (records before the two above existed): source and parameters together;
  read as before.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch

from attnbench.core.cases import Case
from attnbench.core.environment import package_versions
from attnbench.core.registry import get_backend, get_impl, get_workload
from attnbench.workloads.base import AttentionVariant, NoParams, Shape

HASH_HEX = 16
# The verification inputs' seed: fixed, so the probe of the definition is the same in every run
# (a run's --seed changes its timing inputs, not what the case is).
PROBE_SEED = 20261205
# Output values are hashed rounded to 2⁻²⁰ relative steps: float64 BLAS differences between
# machines (~1e-16) do not move them, a changed definition does.
ROUND_BITS = 20


def _source_files(cls: type) -> list[str]:
    """Files defining the variant: its own class and its family bases, not the common base."""
    classes: list[type] = []
    for klass in cls.__mro__:
        if klass is AttentionVariant:  # the common base and everything above it
            break
        classes.append(klass)
    params = getattr(cls, "Params", None)
    if isinstance(params, type) and params is not NoParams:
        classes.append(params)
    files: list[str] = []
    for klass in classes:
        try:
            path = inspect.getsourcefile(klass)
        except TypeError:  # built-in or dynamically made class: no source to hash
            continue
        if path and path not in files:
            files.append(path)
    return sorted(files)


@functools.cache
def _files_digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).name.encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def workload_hash(cls: type, params: dict[str, Any]) -> str:
    """sha256 over the variant's source files and its resolved parameters (16 hex digits):
    the hash records carried before the definition and implementation hashes."""
    h = hashlib.sha256()
    h.update(cls.name.encode())
    h.update(_files_digest(tuple(_source_files(cls))).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:HASH_HEX]


# ----------------------------------------------------------------------------- the definition


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().to("cpu")
    if t.is_floating_point():
        t = t.double()
        _, exponent = torch.frexp(t)  # keep ROUND_BITS significant bits, whatever the scale
        step = torch.ldexp(torch.ones_like(t), exponent - ROUND_BITS)
        t = torch.where(t == 0, t, torch.round(t / step) * step)
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def definition_probe(n: int, mask: torch.Tensor | None, reference: torch.Tensor) -> str:
    """The definition evaluated where the worker verifies the case: the length, the reference
    mask and the float64 reference output on the fixed verification inputs (PROBE_SEED)."""
    parts = [str(n), _tensor_digest(mask) if mask is not None else "no mask", _tensor_digest(reference)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:HASH_HEX]


def definition_hash(case: Case, probe: str | None) -> str | None:
    """What the case computes (see the module docstring), from its identity, its cost formulas
    and the worker's probe of its definition; 16 hex digits. Workloads with no core form have no
    reference apart from their module: their source stands in for the probe. None when a
    workload with a core form was not verified (nothing says what it computed)."""
    cls = get_workload(case.variant)
    if probe is None:
        if "core" in cls.scopes:
            return None
        probe = "source:" + _files_digest(tuple(_source_files(cls)))
    params = cls.make_params(case.params_dict)
    shape = Shape(case.batch, case.heads, case.head_dim, case.seq_len)
    # The useful FLOPs define the work; executed FLOPs and the memory a call needs follow the
    # kernel (a padded block, a bounded scratch), so they belong to the implementation.
    formulas = [cls.case_flops(params, shape, case.scope, case.mode)]
    what = case.identity()
    what.pop("impl", None)  # every implementation computes the variant's one definition
    h = hashlib.sha256()
    h.update(json.dumps(what, sort_keys=True, default=str).encode())
    h.update(json.dumps(formulas).encode())
    h.update(probe.encode())
    return h.hexdigest()[:HASH_HEX]


# ----------------------------------------------------------------------------- the implementation


# The libraries each backend's kernels come from, besides torch (environment.PACKAGES names them).
BACKEND_LIBRARIES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnx"), "xla": ("torch_xla",)}


def _versions(backend: str) -> dict[str, str | None]:
    installed = _package_versions()
    wanted = ("torch", *BACKEND_LIBRARIES.get(backend, ()))
    return {"python": sys.version.split()[0], **{name: installed.get(name) for name in wanted}}


@functools.cache
def _package_versions() -> dict[str, str | None]:
    return package_versions()


def implementation_hash(case: Case) -> str:
    """How the case is computed: the variant's source, the layer and backend modules around it,
    the library versions; 16 hex digits."""
    cls = get_workload(case.variant)
    files = list(_source_files(cls))
    backend_file = inspect.getsourcefile(get_backend(case.backend))
    if backend_file and backend_file not in files:
        files.append(backend_file)
    if case.scope == "layer":
        from attnbench.workloads import layer

        files.append(inspect.getsourcefile(layer) or "")
    if case.impl != "native":  # the implementation's own module computes it
        files.append(inspect.getsourcefile(get_impl(case.impl)) or "")
    h = hashlib.sha256()
    h.update(_files_digest(tuple(sorted(f for f in files if f))).encode())
    h.update(json.dumps(_versions(case.backend), sort_keys=True).encode())
    return h.hexdigest()[:HASH_HEX]
