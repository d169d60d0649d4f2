"""Registries of attention variants, backends and implementations, with outside plugins.

Built-ins are registered explicitly; third parties plug in through the entry-point
groups ``attnbench.workloads``, ``attnbench.backends`` and ``attnbench.impls`` (an entry point may name a
module that registers on import, or a class), or through ``ATTNBENCH_PLUGINS``, a
comma-separated list of modules to import (handy for tests and local experiments).
"""

from __future__ import annotations

import difflib
import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeVar

from attnbench.core.errors import UserError

if TYPE_CHECKING:
    from attnbench.backends.base import Backend
    from attnbench.workloads.base import AttentionVariant
    from attnbench.workloads.impls.base import Implementation

WORKLOAD_GROUP = "attnbench.workloads"
BACKEND_GROUP = "attnbench.backends"
IMPL_GROUP = "attnbench.impls"
PLUGINS_ENV = "ATTNBENCH_PLUGINS"

BUILTIN_WORKLOAD_MODULES = (
    "attnbench.workloads.full",
    "attnbench.workloads.sparse",
    "attnbench.workloads.adaptive",
    "attnbench.workloads.hierarchical",
)
# Implementations of the variants (the `impl` axis); `native` is the variant's own module.
BUILTIN_IMPL_MODULES = (
    "attnbench.workloads.impls",
    "attnbench.workloads.impls.flex",
    "attnbench.workloads.impls.hf",
    "attnbench.workloads.impls.flash_attn",
    "attnbench.workloads.impls.xformers",
)
BUILTIN_BACKEND_MODULES = (
    "attnbench.backends.cpu",
    "attnbench.backends.onnxruntime",
    "attnbench.backends.cuda",
    "attnbench.backends.xla",
)

WORKLOADS: dict[str, type[AttentionVariant]] = {}
BACKENDS: dict[str, type[Backend]] = {}
IMPLS: dict[str, type[Implementation]] = {}
# Plugins that failed to load: name -> reason. Shown by `bench list`, never fatal.
PLUGIN_ERRORS: dict[str, str] = {}

_loaded = False

W = TypeVar("W", bound="type[AttentionVariant]")
B = TypeVar("B", bound="type[Backend]")
I = TypeVar("I", bound="type[Implementation]")  # noqa: E741 - mirrors W and B


def register_workload(cls: W) -> W:
    WORKLOADS[cls.name] = cls
    return cls


def register_backend(cls: B) -> B:
    BACKENDS[cls.name] = cls
    return cls


def register_impl(cls: I) -> I:
    IMPLS[cls.name] = cls
    return cls


# The base class of each kind, declared by the module that defines it (workloads/base.py,
# backends/base.py), so this module can check a plugin's class without importing them.
_BASES: dict[str, type] = {}


def declare_base(kind: str, base: type) -> None:
    """`kind` is "workload", "backend" or "impl"; a plugin class must subclass its base."""
    _BASES[kind] = base


def _register_loaded(obj: object) -> None:
    """An entry point may resolve to a module (registered on import) or a class."""
    if not isinstance(obj, type) or not getattr(obj, "name", None):
        return
    if "workload" in _BASES and issubclass(obj, _BASES["workload"]):
        register_workload(obj)  # type: ignore[arg-type]
    elif "backend" in _BASES and issubclass(obj, _BASES["backend"]):
        register_backend(obj)  # type: ignore[arg-type]
    elif "impl" in _BASES and issubclass(obj, _BASES["impl"]):
        register_impl(obj)  # type: ignore[arg-type]


def load_plugins() -> None:
    """Import built-ins and entry points once per process, and ATTNBENCH_PLUGINS as it is now.

    The environment variable is re-read on every call (imports are cached) because a fork
    server preloaded earlier may serve workers for a parent whose setting differs.
    """
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_WORKLOAD_MODULES + BUILTIN_BACKEND_MODULES + BUILTIN_IMPL_MODULES:
            _import_builtin(module)
        for group in (WORKLOAD_GROUP, BACKEND_GROUP, IMPL_GROUP):
            for ep in entry_points(group=group):
                try:
                    _register_loaded(ep.load())
                except Exception as exc:  # a broken plugin must not break the suite
                    PLUGIN_ERRORS[f"{group}:{ep.name}"] = f"{type(exc).__name__}: {exc}"
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except Exception as exc:
            PLUGIN_ERRORS[f"{PLUGINS_ENV}:{module}"] = f"{type(exc).__name__}: {exc}"


def _import_builtin(module: str) -> None:
    """A built-in module still being written (absent from this checkout) is skipped; one that
    exists and fails to import is a bug and raises."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise


def _unknown(kind: str, name: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return UserError(f"unknown {kind} '{name}'; {hint}known {kind}s: {', '.join(sorted(known))} (see `bench list`)")


def get_workload(name: str) -> type[AttentionVariant]:
    load_plugins()
    if name not in WORKLOADS:
        raise _unknown("variant", name, list(WORKLOADS))
    return WORKLOADS[name]


def get_backend(name: str) -> type[Backend]:
    load_plugins()
    if name not in BACKENDS:
        raise _unknown("backend", name, list(BACKENDS))
    return BACKENDS[name]


def get_impl(name: str) -> type[Implementation]:
    load_plugins()
    if name not in IMPLS:
        raise _unknown("implementation", name, list(IMPLS))
    return IMPLS[name]
