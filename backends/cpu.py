"""The `cpu` backend: torch eager on the host CPU, with a pinned thread count."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import platform
import threading
import time
from typing import Any, ClassVar

import psutil
import torch

from attnbench.backends.base import (
    Availability,
    Backend,
    EnergyMeter,
    MemoryMeter,
    MemoryReading,
    Step,
    Timer,
    probe_sdpa_kernel,
)
from attnbench.backends.energy import rapl_meter, rapl_status
from attnbench.backends.peaks import peaks_for
from attnbench.core.cases import Case
from attnbench.core.environment import cpu_model
from attnbench.core.registry import register_backend
from attnbench.core.sdpa import SdpaChoice

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class PerfCounterTimer(Timer):
    clock: ClassVar[str] = "time.perf_counter"
    sync: ClassVar[str] = "none needed: eager CPU ops return when done"

    def time(self, step: Step, calls: int) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        return time.perf_counter() - t0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM missing from /proc/self/status")


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _isolate_large_allocations() -> bool:
    """Make glibc map every block over 64 KiB on its own and unmap it on free.

    By default glibc raises its mmap threshold as large blocks are freed (up to 32 MiB),
    after which such blocks come from the heap, where fragmentation can leave the resident
    size well above what is alive (seen here: 54-85 MiB for 36 MiB of live tensors,
    depending on the heap left by warm-up). Fixed from process start, resident memory
    follows live tensors, so the peak depends on the workload, not on allocator history.
    It also changes allocation cost, which is why memory is measured in a process of its
    own and never in the one that is timed. Returns whether glibc accepted it.
    """
    libc = _libc()
    try:
        return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except AttributeError:
        return False


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS so the baseline is not inflated by earlier calls."""
    libc = _libc()
    with contextlib.suppress(AttributeError):
        if libc:
            libc.malloc_trim(0)


class RssPeakMeter(MemoryMeter):
    """Process peak resident memory above a baseline taken after the inputs exist.

    On Linux the kernel's high-water mark is reset (/proc/self/clear_refs, 5) at start and
    read at stop, so no short peak is missed. Elsewhere RSS is polled every millisecond,
    which can miss peaks shorter than that; the method says which was used.
    """

    def __init__(self) -> None:
        self._baseline = 0
        self._polled_peak = 0
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.method = "rss-hwm: /proc/self VmHWM reset via clear_refs, minus baseline RSS after inputs"

    def prepare_process(self) -> None:
        if _isolate_large_allocations():
            self.method += "; glibc mmap threshold fixed at 64 KiB from process start"
        else:
            self.method += "; allocator not pinned (not glibc): reused heap blocks may inflate the peak"

    def start(self) -> None:
        gc.collect()
        _malloc_trim()
        try:
            self._baseline = _rss_bytes()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return
        except OSError:
            pass
        self.method = "rss-poll: psutil RSS every 1 ms, minus baseline RSS after inputs (can miss short peaks)"
        proc = psutil.Process()
        self._baseline = self._polled_peak = proc.memory_info().rss
        self._stop.clear()

        def poll() -> None:
            while not self._stop.wait(0.001):
                self._polled_peak = max(self._polled_peak, proc.memory_info().rss)

        self._poller = threading.Thread(target=poll, daemon=True)
        self._poller.start()

    def stop(self) -> MemoryReading:
        if self._poller is not None:
            self._stop.set()
            self._poller.join()
            self._poller = None
            peak = self._polled_peak
        else:
            peak = _hwm_bytes()
        return MemoryReading(max(0, peak - self._baseline), self.method)


@register_backend
class CpuBackend(Backend):
    name: ClassVar[str] = "cpu"
    summary: ClassVar[str] = "torch eager on the host CPU; threads pinned (default: physical cores)"
    calibrates: ClassVar[bool] = True

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._threads: int | None = None

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    @classmethod
    def free_memory_bytes(cls) -> int | None:
        return psutil.virtual_memory().available

    @classmethod
    def sdpa_choice(cls, case: Case) -> SdpaChoice:
        kernel, how = probe_sdpa_kernel(case, "cpu")
        return SdpaChoice(kernel, "cpu", case.threads or cls.default_threads(), how)

    @staticmethod
    def default_threads() -> int:
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1

    def setup(self, case: Case) -> dict[str, Any]:
        self._threads = case.threads or self.default_threads()
        torch.set_num_threads(self._threads)
        return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def timer(self) -> Timer:
        return PerfCounterTimer()

    def memory_meter(self) -> MemoryMeter:
        return RssPeakMeter()

    def energy_meter(self) -> EnergyMeter:
        return rapl_meter()

    @classmethod
    def environment(cls) -> dict[str, Any]:
        energy_method, energy_reason = rapl_status()
        return {
            "device": cpu_model(),
            "versions": {"torch": torch.__version__},
            "clock": PerfCounterTimer.clock,
            "memory_method": RssPeakMeter().method,
            "energy_method": energy_method,
            "energy_reason": energy_reason,
            "peaks": peaks_for("cpu", cpu_model()),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "name": cpu_model(),
            "kind": "cpu",
            "arch": platform.machine(),
            "torch": torch.__version__,
            "parallel": torch.__config__.parallel_info().splitlines()[1:3],
            "peaks": peaks_for(self.peak_key(), cpu_model()),
        }
