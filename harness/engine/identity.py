"""The workload hash each record carries: what code and configuration produced its numbers."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

from attnbench.workloads.base import AttentionVariant, NoParams


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
    """sha256 over the variant's source files and its resolved parameters (16 hex digits).

    Two records with different hashes measured different code or configuration, so their
    numbers are not compared (verdict `changed`), as asv does with benchmark versions.
    """
    h = hashlib.sha256()
    h.update(cls.name.encode())
    h.update(_files_digest(tuple(_source_files(cls))).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
