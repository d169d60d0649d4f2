"""The backend contract: availability, support, preparation, and the meters it owns.

A backend knows how to run a module on its device and how to time, weigh and meter it
correctly there: each one supplies its own clock (with the synchronisation its device
needs), memory meter and energy meter, and says which it used.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from attnbench.core.registry import declare_base
from attnbench.core.sdpa import SdpaChoice

if TYPE_CHECKING:
    from attnbench.core.cases import Case

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
class Option:
    """A backend setting a user may give (`--backend-option NAME.KEY=VALUE`)."""

    default: Any
    help: str
    parse: Callable[[str], Any] = str


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_list(text: str | list[str]) -> tuple[str, ...]:
    items = text if isinstance(text, list) else str(text).replace("+", ",").split(",")
    return tuple(t.strip() for t in items if str(t).strip())


@dataclass(frozen=True)
class MemoryReading:
    peak_bytes: int | None
    method: str
    reason: str | None = None  # why peak_bytes is None
    details: dict[str, Any] = field(default_factory=dict)  # further figures, e.g. reserved, NVML


@dataclass(frozen=True)
class EnergyReading:
    joules: float | None  # for the whole metered window
    method: str | None
    reason: str | None = None  # why joules is None
    details: dict[str, Any] = field(default_factory=dict)  # per domain, window, counter updates


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
    """Reads a cumulative energy counter around a window of calls.

    The worker keeps calling (in blocks) and polling until `enough()`: a counter that
    updates every few tens of milliseconds needs a window spanning several updates.
    """

    available: ClassVar[bool] = True
    max_window_s: float = 10.0

    @abstractmethod
    def start(self) -> None: ...

    def poll(self) -> None:
        """Read the counters between blocks of calls (wrap-around and update counting)."""
        return

    def enough(self) -> bool:
        return True

    @abstractmethod
    def stop(self) -> EnergyReading: ...


class NullEnergyMeter(EnergyMeter):
    """For devices without a readable counter: always null, with the reason."""

    available: ClassVar[bool] = False

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
    modes: ClassVar[tuple[str, ...]] = ("forward", "train")
    options: ClassVar[dict[str, Option]] = {}
    # Whether one call goes through torch's dispatcher, so the aten ops used can be recorded.
    records_aten_ops: ClassVar[bool] = True
    # Fewest warm-up calls: lazy or compiling backends may build more than one graph at first.
    min_warmup_calls: ClassVar[int] = 1
    # Whether the "available" selector picks it; False for backends that convert the model first.
    in_available: ClassVar[bool] = True
    # Whether `bench calibrate` measures this backend's device (else it shares another's peaks).
    calibrates: ClassVar[bool] = False
    # The driver `bench profile` uses (attnbench.engine.profiling.DRIVERS): torch.profiler unless the
    # runtime has its own ("onnxruntime", "xla").
    profiler: ClassVar[str] = "torch"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.opts = self.parse_options(options or {})

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the user's values; ValueError names a bad key or value."""
        out = {k: o.default for k, o in cls.options.items()}
        for key, value in raw.items():
            if key not in cls.options:
                known = ", ".join(cls.options) or "none"
                raise ValueError(f"backend {cls.name} has no option '{key}' (its options: {known})")
            try:
                out[key] = cls.options[key].parse(value)
            except ValueError as exc:
                raise ValueError(f"backend option {cls.name}.{key}={value!r}: {exc}") from None
        return out

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, and why not. Cheap; no device work at import."""

    @classmethod
    def free_memory_bytes(cls) -> int | None:
        """Memory a case could still use on this device, for the analytic fit check; None if unknown."""
        return None

    @classmethod
    def sdpa_choice(cls, case: Case) -> SdpaChoice:
        """The kernel torch's scaled_dot_product_attention will run for the case on this backend,
        for memory estimates. Cheap, and in the driver: no device context may be created here.
        The default, for runtimes that trace or export the graph, is the materialised math path."""
        return SdpaChoice("math", how=f"assumed: backend {cls.name} runs SDPA as its decomposition", graph=True)

    def supports(self, case: Case) -> str | None:
        """None if the case can run here, else the reason it cannot."""
        if case.dtype not in self.dtypes:
            return f"backend {self.name} does not run dtype {case.dtype} (it runs {', '.join(self.dtypes)})"
        if case.mode not in self.modes:
            return f"backend {self.name} does not run mode {case.mode} (it runs {', '.join(self.modes)})"
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

    def infer(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Tensor:
        """One forward call through this backend's execution path, for verification."""
        module = module.to(self.device, DTYPES[case.dtype])
        with torch.no_grad():
            return module(*(t.to(self.device) for t in inputs))

    def compile_seconds(self, prepare_s: float, first_call_s: float) -> float:
        """One-off preparation kept out of steady-state time; for eager backends, preparation alone."""
        return prepare_s

    def timed_region_start(self) -> None:
        """Called just before sampling starts (e.g. read compile counters)."""
        return

    def timed_region_stop(self) -> list[str]:
        """Called just after sampling; returns problems that make the figures untrustworthy."""
        return []

    def peak_key(self) -> str:
        """The key of this device's measured peaks in the calibration cache."""
        return self.name

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op for synchronous devices)."""
        return

    def profiler_activities(self) -> tuple[str, ...]:
        """torch.profiler activities for this device: "cpu", plus "cuda" where kernels run on a GPU."""
        return ("cpu",)

    def start_profiling(self, folder: Path) -> None:
        """Called in the profile worker before the case is prepared, e.g. to switch on a runtime's own
        profiler, which writes into `folder`. Never called in a timed or memory worker."""
        return

    def details(self) -> dict[str, Any]:
        """What this backend learned while preparing the case (export cache, providers, kernels)."""
        return {}

    @classmethod
    def environment(cls) -> dict[str, Any]:
        """For `bench env`: device, versions, and which memory and energy methods a case would get."""
        return {}

    @abstractmethod
    def timer(self) -> Timer: ...

    @abstractmethod
    def memory_meter(self) -> MemoryMeter: ...

    @abstractmethod
    def energy_meter(self) -> EnergyMeter: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The device as run.json records it: name, kind, versions, peak figures and how obtained."""


# torch's names for its SDPA kernels (torch.nn.attention.SDPBackend), as SdpaChoice names them.
SDPA_KERNEL_NAMES = {
    "FLASH_ATTENTION": "flash",
    "EFFICIENT_ATTENTION": "efficient",
    "CUDNN_ATTENTION": "cudnn",
    "MATH": "math",
}
SDPA_PROBE_LEN = 256  # the choice does not depend on the length; a short probe keeps it cheap


def probe_sdpa_kernel(case: Case, device: str) -> tuple[str, str]:
    """(kernel, how): torch's own selection (`torch._fused_sdp_choice`, what F.scaled_dot_product_attention
    consults) for the case's dtype, batch, heads, head size, causality and mode, on `device`.
    Empty probe tensors, of the case's shape but at most SDPA_PROBE_LEN long; "math" with the
    reason where torch cannot say (an older or newer torch without the function)."""
    try:
        from torch.nn.attention import SDPBackend

        n = min(case.seq_len, SDPA_PROBE_LEN)
        shape = (case.batch, case.heads, n, case.head_dim)
        q = torch.empty(shape, dtype=DTYPES[case.dtype], device=device, requires_grad=case.mode == "train")
        causal = bool(case.params_dict.get("causal", False))
        chosen = SDPBackend(torch._fused_sdp_choice(q, q, q, None, 0.0, causal)).name
    except Exception as exc:  # private API: a torch without it gets the conservative estimate
        return "math", f"assumed math: torch did not say ({type(exc).__name__}: {exc})"
    kernel = SDPA_KERNEL_NAMES.get(chosen, "math")
    return kernel, f"torch._fused_sdp_choice on {device}: {chosen}"


def eager_step(module: nn.Module, inputs: tuple[Tensor, ...], mode: str) -> Step:
    """One eager call. Training computes gradients for inputs and weights with autograd.grad,
    so nothing accumulates between calls. A module whose `train_call` is set trains its own
    way (Transformer-XL one segment per step): train_call(inputs, upstream gradient) returns
    the same gradients, inputs' then weights' in `leaves` order."""
    if mode == "forward":
        module.requires_grad_(False)

        def forward() -> object:
            return module(*inputs)

        return forward

    leaves = [t.requires_grad_(True) for t in inputs] + [p for p in module.parameters() if p.requires_grad]
    train_call = getattr(module, "train_call", None)
    # The probe only gives the output's shape; with a graph it would hold what train_call avoids.
    with torch.no_grad() if train_call is not None else contextlib.nullcontext():
        probe = module(*inputs)
    grad_out = torch.randn_like(probe)  # fixed upstream gradient
    del probe

    if train_call is not None:

        def own_train() -> object:
            return train_call(inputs, grad_out)

        return own_train

    def train() -> object:
        out = module(*inputs)
        # An input a variant ignores (LSH's k) gets a zero gradient rather than an error.
        return torch.autograd.grad(out, leaves, grad_out, allow_unused=True, materialize_grads=True)

    return train


declare_base("backend", Backend)
