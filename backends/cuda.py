"""The `cuda` backend: torch on an NVIDIA GPU, timed with CUDA events.

Kernel launches return before the GPU has run them, so a host clock read after a call
measures the launch, not the work. Events recorded on the stream around the block of
calls, with the end event synchronised before reading, time the device's own execution.
Memory is the caching allocator's peak (allocated, and reserved) above a baseline taken
after the inputs exist, with the process's device memory from NVML beside it; NVML's
device is matched to torch's by UUID (CUDA_VISIBLE_DEVICES renumbers devices for torch,
never for NVML). Energy is NVML's cumulative counter.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any, ClassVar

import torch

from attnbench.backends.base import (
    Availability,
    Backend,
    EnergyMeter,
    MemoryMeter,
    MemoryReading,
    NullEnergyMeter,
    Option,
    Step,
    Timer,
    parse_bool,
)
from attnbench.backends.energy import nvml_meter
from attnbench.backends.peaks import peaks_for
from attnbench.core.cases import Case
from attnbench.core.registry import register_backend
from attnbench.core.sdpa import SdpaChoice

FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MiB; B200: 126 MiB)


def _nvml() -> Any | None:
    """pynvml, initialised, or None where NVML is absent (no driver, or not an NVIDIA machine)."""
    if importlib.util.find_spec("pynvml") is None:
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def nvml_handle(nvml: Any, index: int) -> tuple[Any, str]:
    """NVML's handle for torch's device `index`, matched by UUID, else by PCI bus id."""
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        text = text if text.startswith("GPU-") else f"GPU-{text}"
        try:
            return nvml.nvmlDeviceGetHandleByUUID(text), f"uuid {text}"
        except Exception:
            pass
    bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    return nvml.nvmlDeviceGetHandleByPciBusId(bus), f"pci {bus}"


def nvml_energy_meter(index: int) -> EnergyMeter:
    nvml = _nvml()
    if nvml is None:
        return NullEnergyMeter("NVML is not available (no NVIDIA driver, or nvidia-ml-py missing)")
    try:
        handle, _ = nvml_handle(nvml, index)
    except Exception as exc:
        return NullEnergyMeter(f"no NVML device matches torch's cuda:{index}: {exc}")
    return nvml_meter(nvml, handle, torch.cuda.get_device_name(index))


class CudaEventTimer(Timer):
    clock: ClassVar[str] = "torch.cuda.Event pair on the current stream (elapsed_time)"
    sync: ClassVar[str] = "device synchronised before the start event; end event synchronised before reading"

    def __init__(self, flush: bool) -> None:
        self.flush_buffer = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda") if flush else None

    def time(self, step: Step, calls: int) -> float:
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()  # evicts the L2 between samples, outside the timed region
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


class CudaMemoryMeter(MemoryMeter):
    """Allocator peak above the baseline after inputs exist; reserved and NVML's figure beside it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._base = 0
        self._base_reserved = 0

    def start(self) -> None:
        torch.cuda.synchronize(self.index)
        torch.cuda.reset_peak_memory_stats(self.index)
        self._base = torch.cuda.memory_allocated(self.index)
        self._base_reserved = torch.cuda.memory_reserved(self.index)

    def stop(self) -> MemoryReading:
        torch.cuda.synchronize(self.index)
        peak = torch.cuda.max_memory_allocated(self.index) - self._base
        details: dict[str, Any] = {
            "allocated_baseline_bytes": self._base,
            "reserved_peak_bytes": torch.cuda.max_memory_reserved(self.index) - self._base_reserved,
            "reserved_total_peak_bytes": torch.cuda.max_memory_reserved(self.index),
        }
        details.update(self._nvml_process_memory())
        return MemoryReading(
            max(0, peak),
            "cuda-allocator: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus allocated "
            "after inputs; reserved and NVML process memory in memory_details",
            None,
            details,
        )

    def _nvml_process_memory(self) -> dict[str, Any]:
        nvml = _nvml()
        if nvml is None:
            return {"nvml_process_bytes": None, "nvml_reason": "NVML unavailable"}
        try:
            handle, matched = nvml_handle(nvml, self.index)
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception as exc:
            return {"nvml_process_bytes": None, "nvml_reason": f"NVML query failed: {exc}"}
        mine = [p for p in procs if p.pid == os.getpid()]
        if not mine or mine[0].usedGpuMemory is None:
            return {
                "nvml_process_bytes": None,
                "nvml_device": matched,
                "nvml_reason": "NVML lists no memory for this pid (e.g. a container's pid namespace)",
            }
        return {"nvml_process_bytes": int(mine[0].usedGpuMemory), "nvml_device": matched}


@register_backend
class CudaBackend(Backend):
    name: ClassVar[str] = "cuda"
    summary: ClassVar[str] = "torch eager on an NVIDIA GPU; CUDA events, allocator peak, NVML energy"
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")
    calibrates: ClassVar[bool] = True
    options: ClassVar[dict[str, Option]] = {
        "device": Option(0, "CUDA device index, as torch numbers them", int),
        "flush_cache": Option(False, "flush the GPU's L2 cache before every timed block of calls", parse_bool),
    }

    @classmethod
    def availability(cls) -> Availability:
        if torch.version.cuda is None:
            return Availability(False, f"this torch ({torch.__version__}) is a build without CUDA")
        if not torch.cuda.is_available():
            return Availability(False, "no CUDA device visible (driver missing or CUDA_VISIBLE_DEVICES empty)")
        return Availability(True)

    @classmethod
    def free_memory_bytes(cls) -> int | None:
        # Through NVML, so the parent never creates a CUDA context of its own on the device.
        nvml = _nvml()
        if nvml is None or not torch.cuda.is_available():
            return None
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            return int(nvml.nvmlDeviceGetMemoryInfo(handle).free)
        except Exception:
            return None

    @classmethod
    def sdpa_choice(cls, case: Case) -> SdpaChoice:
        # torch decides on the device itself (GPU generation, dtype, head size), but the driver
        # must not create a CUDA context: a short-lived process asks torch, once per kind of case.
        kernel, how = _probe_in_subprocess(case.dtype, case.batch, case.heads, case.head_dim, _causal(case), case.mode)
        return SdpaChoice(kernel, "cuda", 1, how)

    @property
    def index(self) -> int:
        return int(self.opts["device"])

    def setup(self, case: Case) -> dict[str, Any]:
        if self.index >= torch.cuda.device_count():
            from attnbench.core.errors import Unsupported

            raise Unsupported(f"cuda device {self.index} does not exist ({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(self.index)
        if case.threads:
            torch.set_num_threads(case.threads)
        return {
            "device_index": self.index,
            "flush_cache": self.opts["flush_cache"],
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.version(),
            "host_threads": torch.get_num_threads(),
        }

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.index)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def profiler_activities(self) -> tuple[str, ...]:
        return ("cpu", "cuda")

    def timer(self) -> Timer:
        return CudaEventTimer(flush=self.opts["flush_cache"])

    def memory_meter(self) -> MemoryMeter:
        return CudaMemoryMeter(self.index)

    def energy_meter(self) -> EnergyMeter:
        return nvml_energy_meter(self.index)

    def peak_key(self) -> str:
        return f"cuda:{torch.cuda.get_device_name(self.index)}"

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.index)
        props = torch.cuda.get_device_properties(self.index)
        nvml = _nvml()
        driver = None
        matched = None
        if nvml is not None:
            try:
                driver = nvml.nvmlSystemGetDriverVersion()
                _, matched = nvml_handle(nvml, self.index)
            except Exception:
                pass
        return {
            "backend": self.name,
            "name": name,
            "kind": "gpu",
            "index": self.index,
            "nvml_match": matched,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "sm_count": props.multi_processor_count,
            "driver": driver,
            "cuda_runtime": torch.version.cuda,
            "torch": torch.__version__,
            "peaks": peaks_for(self.peak_key(), name),
        }

    @classmethod
    def environment(cls) -> dict[str, Any]:
        if not cls.availability().available:
            return {}
        name = torch.cuda.get_device_name(0)
        energy = nvml_energy_meter(0)
        return {
            "device": f"{name} (+{torch.cuda.device_count() - 1} more)" if torch.cuda.device_count() > 1 else name,
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
            "clock": CudaEventTimer.clock,
            "memory_method": "cuda-allocator peak (+ reserved, + NVML process memory)",
            "energy_method": getattr(energy, "method", None),
            "energy_reason": getattr(energy, "reason", None),
            "peaks": peaks_for(f"cuda:{name}", name),
        }


def host_vs_event_seconds(step: Step, calls: int) -> tuple[float, float]:
    """(host clock after synchronize, CUDA events) for the same calls: the GPU check compares them."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    seconds = CudaEventTimer(flush=False).time(step, calls)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, seconds


def _causal(case: Case) -> bool:
    return bool(case.params_dict.get("causal", False))


_PROBE = """
import json, sys
from attnbench.backends.base import probe_sdpa_kernel
from attnbench.core.cases import Case
dtype, b, h, d, causal, mode = json.loads(sys.argv[1])
case = Case("full.sdpa", (("causal", causal),), "core", "cuda", dtype, mode, b, h, d, 256)
print(json.dumps(probe_sdpa_kernel(case, "cuda:0")))
"""


@functools.lru_cache(maxsize=64)
def _probe_in_subprocess(dtype: str, batch: int, heads: int, head_dim: int, causal: bool, mode: str) -> tuple[str, str]:
    args = json.dumps([dtype, batch, heads, head_dim, causal, mode])
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, args], capture_output=True, text=True, timeout=120, check=False
        )
        kernel, how = json.loads(done.stdout.strip().splitlines()[-1])
        return str(kernel), str(how)
    except Exception as exc:  # no answer: the conservative (materialised) estimate, and why
        return "math", f"assumed math: the CUDA probe process gave no answer ({type(exc).__name__})"
