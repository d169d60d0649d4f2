"""The `xla` backend: torch-xla on the configured PJRT device (TPU in the field, CPU here).

torch-xla is lazy: a call only records a graph; `torch_xla.sync()` cuts it and starts
execution asynchronously, and `wait_device_ops()` waits for it. So each timed call ends
in a sync and the clock is read only after waiting for the device. The first call traces
and compiles: its compile time (torch-xla's CompileTime metric) goes to `compile_s`,
and any compilation during the timed region (a graph that changes between calls) is
counted and makes the case unstable, because steady state was never reached.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnbench.backends.base import (
    DTYPES,
    Availability,
    Backend,
    EnergyMeter,
    MemoryMeter,
    MemoryReading,
    NullEnergyMeter,
    Step,
    Timer,
    eager_step,
)
from attnbench.backends.cpu import RssPeakMeter
from attnbench.backends.energy import rapl_meter
from attnbench.backends.peaks import peaks_for
from attnbench.core.cases import Case
from attnbench.core.registry import register_backend


def _compiles() -> tuple[int, float]:
    """(number of compilations, seconds spent compiling) so far in this process."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    if not data:
        return 0, 0.0
    return int(data[0]), float(data[1]) / 1e9


class XlaTimer(Timer):
    clock: ClassVar[str] = "time.perf_counter"
    sync: ClassVar[str] = "torch_xla.sync() after every call; xm.wait_device_ops() before and after the block"

    def time(self, step: Step, calls: int) -> float:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        xm.wait_device_ops()
        return time.perf_counter() - t0


class XlaDeviceMemoryMeter(MemoryMeter):
    """Peak device memory from torch-xla, where the device reports allocator statistics (TPU, GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0

    def start(self) -> None:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()
        self._base = int(xm.get_memory_info(self.device).get("bytes_used", 0))

    def stop(self) -> MemoryReading:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()
        info = xm.get_memory_info(self.device)
        peak = info.get("peak_bytes_used")
        if peak is None:
            return MemoryReading(None, "xla-memory-info", "the device reports no peak (peak_bytes_used)", dict(info))
        return MemoryReading(
            max(0, int(peak) - self._base),
            "xla-memory-info: peak_bytes_used minus bytes_used after inputs (peak is per process, not reset)",
            None,
            dict(info),
        )


@register_backend
class XlaBackend(Backend):
    name: ClassVar[str] = "xla"
    summary: ClassVar[str] = "torch-xla on the PJRT device (PJRT_DEVICE: TPU, CPU, CUDA); compile kept apart"
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    calibrates: ClassVar[bool] = True
    min_warmup_calls: ClassVar[int] = 3
    profiler: ClassVar[str] = "xla"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._before_prepare = (0, 0.0)
        self._region_start = 0
        self._warmup_compiles = 0

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("torch_xla") is None:
            return Availability(
                False,
                "torch_xla is not installed; it needs its own environment: "
                "pip install 'torch==2.9.*' 'torch_xla==2.9.*' (and PJRT_DEVICE=CPU or TPU)",
            )
        return Availability(True)

    @classmethod
    def _hw(cls) -> str:
        import torch_xla
        import torch_xla.core.xla_model as xm

        return str(xm.xla_device_hw(torch_xla.device()))

    @property
    def hw(self) -> str:
        return self._hw()

    @classmethod
    def free_memory_bytes(cls) -> int | None:
        return None  # asking would start a PJRT client in the parent

    def setup(self, case: Case) -> dict[str, Any]:
        import torch_xla

        if case.threads:
            torch.set_num_threads(case.threads)
        return {
            "pjrt_device": os.environ.get("PJRT_DEVICE"),
            "device_hw": self.hw,
            "torch_xla": torch_xla.__version__,
            "host_threads": torch.get_num_threads(),
        }

    @property
    def device(self) -> torch.device:
        import torch_xla

        return torch_xla.device()

    def synchronize(self) -> None:
        import torch_xla
        import torch_xla.core.xla_model as xm

        torch_xla.sync()
        xm.wait_device_ops()

    def infer(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Tensor:
        out = super().infer(module, inputs, case)
        self.synchronize()
        return out

    def prepare(self, module: nn.Module, inputs: tuple[Tensor, ...], case: Case) -> Step:
        import torch_xla

        self._before_prepare = _compiles()
        module = module.to(self.device, DTYPES[case.dtype])
        inputs = tuple(t.to(self.device) for t in inputs)
        torch_xla.sync()  # materialise weights and inputs on the device now, not in the first call
        inner = eager_step(module, inputs, case.mode)
        torch_xla.sync()  # the training probe and its fixed upstream gradient, so no call carries them

        def step() -> object:
            out = inner()
            torch_xla.sync()
            return out

        return step

    def compile_seconds(self, prepare_s: float, first_call_s: float) -> float:
        count, seconds = _compiles()
        self._warmup_compiles = count - self._before_prepare[0]
        return prepare_s + (seconds - self._before_prepare[1])

    def timed_region_start(self) -> None:
        self._region_start = _compiles()[0]

    def timed_region_stop(self) -> list[str]:
        recompiles = _compiles()[0] - self._region_start
        self._recompiles = recompiles
        if recompiles:
            return [f"{recompiles} compilation(s) during the timed region (torch-xla CompileTime metric)"]
        return []

    def details(self) -> dict[str, Any]:
        return {
            "compiles_before_timing": self._warmup_compiles,
            "compiles_during_timing": getattr(self, "_recompiles", None),
        }

    def timer(self) -> Timer:
        return XlaTimer()

    def memory_meter(self) -> MemoryMeter:
        if self.hw == "CPU":
            return _XlaHostMemoryMeter()
        return XlaDeviceMemoryMeter(self.device)

    def energy_meter(self) -> EnergyMeter:
        if self.hw == "CPU":
            return rapl_meter()  # XLA's CPU device is the host's sockets
        return NullEnergyMeter(f"torch-xla exposes no energy counter for {self.hw} devices")

    def peak_key(self) -> str:
        return f"xla:{self.hw}"

    def describe(self) -> dict[str, Any]:
        import torch_xla

        hw = self.hw
        if hw == "CPU":
            from attnbench.core.environment import cpu_model

            name = f"XLA CPU ({cpu_model()})"
        else:
            name = f"XLA {hw}"
            try:
                import torch_xla.runtime as xr

                name = f"{hw} {xr.global_runtime_device_attributes()[0].get('device_kind', '')}".strip()
            except Exception:
                pass
        return {
            "backend": self.name,
            "name": name,
            "kind": hw.lower(),
            "pjrt_device": os.environ.get("PJRT_DEVICE"),
            "torch_xla": torch_xla.__version__,
            "torch": torch.__version__,
            "peaks": peaks_for(self.peak_key(), name),
        }

    @classmethod
    def environment(cls) -> dict[str, Any]:
        if not cls.availability().available:
            return {}
        return {
            "device": f"PJRT_DEVICE={os.environ.get('PJRT_DEVICE', '(unset: torch-xla picks)')}",
            "clock": XlaTimer.clock + "; " + XlaTimer.sync,
            "memory_method": "host RSS peak on XLA:CPU; torch-xla get_memory_info peak elsewhere",
            "energy_method": "RAPL on XLA:CPU where readable; none on TPU",
        }


class _XlaHostMemoryMeter(RssPeakMeter):
    """XLA's CPU device allocates in host memory, so the process peak is its device peak."""

    def start(self) -> None:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()  # the warm-up call may still be executing
        super().start()

    def stop(self) -> MemoryReading:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()
        reading = super().stop()
        return MemoryReading(
            reading.peak_bytes, reading.method + " (XLA:CPU device memory is host memory)", reading.reason
        )
