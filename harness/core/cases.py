"""Cases (one measured configuration) and sweeps (axes that expand into cases)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# The variant the others are measured against: reports' speedups (bench report --baseline) and
# the sweep that runs it beside layer-only variants (attnbench.engine.expand).
BASELINE_VARIANT = "full.sdpa"


@dataclass(frozen=True)
class Case:
    """Everything that defines what is measured. Same fields -> same case_id, anywhere."""

    variant: str
    params: tuple[tuple[str, Any], ...]  # the variant's resolved parameters, sorted by name
    scope: str  # core | layer
    backend: str
    dtype: str
    mode: str  # forward | train
    batch: int
    heads: int
    head_dim: int
    seq_len: int
    threads: int | None = None  # None: the backend's default for the host
    transform: str = "none"  # an optimisation applied to the built module (attnbench.engine.transforms)
    # The variant's definition revision for these parameters: 1 as first defined, raised by a
    # correction that changes what the case computes (AttentionVariant.definition_revision).
    revision: int = 1
    # Parameters added after the variant was first defined whose value here reproduces the
    # earlier definition (AttentionVariant.neutral_params): left out of the identity.
    neutral_params: tuple[str, ...] = ()
    # The code that computes the attention (attnbench.workloads.impls): "native" is the variant's own.
    impl: str = "native"

    @property
    def family(self) -> str:
        return self.variant.split(".", 1)[0]

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        # What the case computes, and nothing that leaves it unchanged: defaults that reproduce
        # an earlier definition are left out, so every case_id from before they existed stays valid.
        neutral = set(d.pop("neutral_params"))
        d["params"] = {k: v for k, v in self.params if k not in neutral}
        if self.transform == "none":
            del d["transform"]
        if self.impl == "native":  # every case from before the impl axis was native
            del d["impl"]
        if self.revision == 1:
            del d["revision"]
        return d

    @property
    def case_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.variant}-{self.backend}-n{self.seq_len}-{digest}"

    def group_key(self, derived: tuple[str, ...] = ()) -> tuple:
        """Everything but the length (and parameters derived from it): one scaling curve."""
        d = self.identity()
        d.pop("seq_len")
        d["params"] = {k: v for k, v in d["params"].items() if k not in derived}
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in d.items()))

    def label(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in self.params)
        t = f" +{self.transform}" if self.transform != "none" else ""
        t += f" impl={self.impl}" if self.impl != "native" else ""
        where = f"{self.backend}/{self.dtype}/{self.mode}" + (f"/{self.scope}" if self.scope != "core" else "")
        return f"{self.variant}{'[' + p + ']' if p else ''}{t} {where} n={self.seq_len}"


@dataclass(frozen=True)
class Sweep:
    """The axes of a run. Every axis is a tuple; the cases are their product."""

    variants: tuple[str, ...]
    backends: tuple[str, ...]
    seq_lens: tuple[int, ...]
    batch: tuple[int, ...] = (1,)
    heads: tuple[int, ...] = (8,)
    head_dim: tuple[int, ...] = (64,)
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = ("forward",)
    scopes: tuple[str, ...] = ("core",)
    threads: tuple[int | None, ...] = (None,)
    transforms: tuple[str, ...] = ("none",)  # absent in runs made before it existed: the default
    impls: tuple[str, ...] = ("native",)  # absent in runs made before it existed: the default
    # variant -> parameter -> values to sweep; unnamed parameters take their defaults
    params: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = field(default=())
    # backend -> axis ("dtypes" or "batch") -> values replacing the sweep's for that backend
    per_backend: tuple[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]], ...] = field(default=())

    def params_for(self, variant: str) -> dict[str, tuple[Any, ...]]:
        return dict(dict(self.params).get(variant, ()))

    def axis_for(self, backend: str, axis: str) -> tuple[Any, ...]:
        return dict(dict(self.per_backend).get(backend, ())).get(axis, getattr(self, axis))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = {v: {k: list(vals) for k, vals in ps} for v, ps in self.params}
        d["per_backend"] = {b: {k: list(vals) for k, vals in axes} for b, axes in self.per_backend}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sweep:
        d = dict(d)
        params = d.pop("params", {})
        per_backend = d.pop("per_backend", {})  # absent in runs made before it existed
        axes = {k: tuple(v) for k, v in d.items()}
        return cls(**axes, params=freeze_params(params), per_backend=freeze_params(per_backend))


def freeze_params(params: dict[str, dict[str, Any]]) -> tuple:
    return tuple(sorted((v, tuple(sorted((k, tuple(vals)) for k, vals in ps.items()))) for v, ps in params.items()))
