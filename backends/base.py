"""The backend contract: availability, support, preparation, and the meters it owns.

A backend knows how to run a module on its device and how to time, weigh and meter it
correctly there: each one supplies its own clock (with the synchronisation its device
needs), memory meter and energy meter, and says which it used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from harness.cases import Case

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

Step = Callable[[], object]


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None  # why not, when unavailable


@dataclass(frozen=True)
class MemoryReading:
    peak_bytes: int | None
    method: str
    reason: str | None = None  # why peak_bytes is None


@dataclass(frozen=True)
class EnergyReading:
    joules: float | None  # for the whole metered window
    method: str | None
    reason: str | None = None  # why joules is None


class Timer(ABC):
    """Times `calls` back-to-back calls of a step, synchronising as the device requires."""

    clock: ClassVar[str]
    sync: ClassVar[str]

    @abstractmethod
    def time(self, step: Step, calls: int) -> float:
        """Seconds for `calls` calls, device work included."""


class MemoryMeter(ABC):
    """Measures one call's peak in a worker process of its own (never the timed one)."""

    def prepare_process(self) -> None:
        """Called first in the memory worker, before anything is allocated."""
        return

    @abstractmethod
    def start(self) -> None:
        """Take the baseline (inputs already exist) and reset the peak."""

    @abstractmethod
    def stop(self) -> MemoryReading:
        """Peak above the baseline since start()."""


class EnergyMeter(ABC):
    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> EnergyReading: ...


class NullEnergyMeter(EnergyMeter):
    """For devices without a readable counter: always null, with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(None, None, self.reason)


class Backend(ABC):
    """One device runtime. Subclasses set `name` and implement the abstract methods."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    dtypes: ClassVar[tuple[str, ...]] = tuple(DTYPES)

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, and why not. Cheap; no device work at import."""

    @classmethod
    def free_memory_bytes(cls) -> int | None:
        """Memory a case could still use on this device, for the analytic fit check; None if unknown."""
        return None

    def supports(self, case: Case) -> str | None:
        """None if the case can run here, else the reason it cannot."""
        if case.dtype not in self.dtypes:
            return f"backend {self.name} does not run dtype {case.dtype} (it runs {', '.join(self.dtypes)})"
        return None

    @abstractmethod
    def setup(self, case: Case) -> dict[str, Any]:
        """Configure the process for this case (threads, device); return the settings to record."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    def prepare(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Step:
        """Place the workload on the device and return one call of it (forward, or forward+backward)."""
        dtype = DTYPES[case.dtype]
        module = module.to(self.device, dtype)
        inputs = tuple(t.to(self.device) for t in inputs)
        return eager_step(module, inputs, case.mode)

    @abstractmethod
    def timer(self) -> Timer: ...

    @abstractmethod
    def memory_meter(self) -> MemoryMeter: ...

    @abstractmethod
    def energy_meter(self) -> EnergyMeter: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The device as run.json records it: name, kind, versions, peak figures and how obtained."""


def eager_step(module: nn.Module, inputs: tuple[Tensor, ...], mode: str) -> Step:
    """One eager call. Training computes gradients for inputs and weights with autograd.grad,
    so nothing accumulates between calls."""
    if mode == "forward":
        module.requires_grad_(False)

        def forward() -> object:
            return module(*inputs)

        return forward

    leaves = [t.requires_grad_(True) for t in inputs] + [p for p in module.parameters() if p.requires_grad]
    probe = module(*inputs)
    grad_out = torch.randn_like(probe)  # fixed upstream gradient
    del probe

    def train() -> object:
        out = module(*inputs)
        # An input a variant ignores (LSH's k) gets a zero gradient rather than an error.
        return torch.autograd.grad(out, leaves, grad_out, allow_unused=True, materialize_grads=True)

    return train
