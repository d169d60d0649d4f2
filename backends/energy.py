"""Energy meters over cumulative hardware counters: RAPL (CPU package, DRAM) and NVML (GPU).

Both expose a counter that only grows (RAPL wraps around at `max_energy_range_uj`) and
updates periodically, so a reading is the difference between two polls around a window
of calls, with every wrap between polls added back, and the window must span several
updates to mean anything. Nothing here estimates: if a counter cannot be read, the meter
is a NullEnergyMeter carrying the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from attnbench.backends.base import EnergyMeter, EnergyReading, NullEnergyMeter

POWERCAP_ROOT = Path("/sys/class/powercap")


class Counter(Protocol):
    """A cumulative energy counter."""

    name: str
    wrap_j: float | None  # the value at which the counter returns to 0; None if it never does

    def read_j(self) -> float: ...


@dataclass
class RaplCounter:
    """One RAPL domain: /sys/class/powercap/intel-rapl:N[:M]/energy_uj (microjoules)."""

    name: str
    path: Path
    wrap_j: float | None

    def read_j(self) -> float:
        return int((self.path / "energy_uj").read_text()) / 1e6


class NvmlCounter:
    """NVML's total energy since driver load (millijoules, 64-bit: it does not wrap in practice)."""

    wrap_j: float | None = None

    def __init__(self, nvml: Any, handle: Any, name: str) -> None:
        self.nvml = nvml
        self.handle = handle
        self.name = name

    def read_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3


class CounterEnergyMeter(EnergyMeter):
    """Sums the increase of each counter over the window, adding back wrap-arounds.

    Poll at least once per wrap period (RAPL's is minutes to hours); the worker polls
    after every block of calls, which is milliseconds.
    """

    def __init__(
        self,
        counters: list[Counter],
        method: str,
        min_updates: int = 5,
        min_window_s: float = 0.2,
        max_window_s: float = 10.0,
    ) -> None:
        self.counters = counters
        self.method = method
        self.min_updates = min_updates
        self.min_window_s = min_window_s
        self.max_window_s = max_window_s
        self._last: list[float] = []
        self._total: list[float] = []
        self._updates = 0
        self._wraps = 0
        self._t0 = 0.0

    def start(self) -> None:
        self._last = [c.read_j() for c in self.counters]
        self._total = [0.0] * len(self.counters)
        self._updates = 0
        self._wraps = 0
        self._t0 = time.perf_counter()

    def poll(self) -> None:
        changed = False
        for i, counter in enumerate(self.counters):
            now = counter.read_j()
            delta = now - self._last[i]
            if delta < 0:
                if counter.wrap_j is None:
                    raise RuntimeError(f"energy counter {counter.name} went backwards ({self._last[i]} -> {now} J)")
                delta += counter.wrap_j
                self._wraps += 1
            if delta != 0:
                changed = True
            self._total[i] += delta
            self._last[i] = now
        if changed:
            self._updates += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def enough(self) -> bool:
        return self._updates >= self.min_updates and self.elapsed() >= self.min_window_s

    def stop(self) -> EnergyReading:
        self.poll()
        window = self.elapsed()
        details = {
            "window_s": window,
            "counter_updates": self._updates,
            "wraps": self._wraps,
            "domains_j": {c.name: t for c, t in zip(self.counters, self._total, strict=True)},
        }
        if self._updates < self.min_updates:
            return EnergyReading(
                None,
                self.method,
                f"the counter updated only {self._updates} times in {window:.2f} s "
                f"(need {self.min_updates}); the reading would be mostly quantisation",
                details,
            )
        return EnergyReading(sum(self._total), self.method, None, details)


def rapl_counters(root: Path = POWERCAP_ROOT) -> tuple[list[RaplCounter], str | None]:
    """Package and DRAM domains of every socket, or ([], why not)."""
    if not root.is_dir():
        return [], f"no RAPL counter on this host ({root} absent)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.is_dir())
    if not zones:
        return [], f"no RAPL counter on this host (no intel-rapl zone under {root})"
    counters: list[RaplCounter] = []
    for zone in zones:
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        parts = zone.name.split(":")
        # Top-level zones are packages; among sub-zones only DRAM is not already inside the package figure.
        if len(parts) == 2 and name.startswith("package"):
            label = name if name != "package" else f"package-{parts[1]}"
        elif len(parts) == 3 and name == "dram":
            label = f"dram-{parts[1]}"
        else:
            continue
        try:
            wrap = int((zone / "max_energy_range_uj").read_text()) / 1e6
            (zone / "energy_uj").read_text()
        except PermissionError:
            return [], (
                f"RAPL counters exist but {zone / 'energy_uj'} is not readable by this user "
                "(root only since Linux 5.10; e.g. `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`)"
            )
        except (OSError, ValueError) as exc:
            return [], f"RAPL zone {zone.name} unreadable: {exc}"
        counters.append(RaplCounter(label, zone, wrap))
    if not counters:
        return [], f"no RAPL package domain under {root}"
    return counters, None


def rapl_meter(root: Path = POWERCAP_ROOT) -> EnergyMeter:
    counters, reason = rapl_counters(root)
    if not counters:
        return NullEnergyMeter(reason or "no RAPL counter")
    domains = ", ".join(c.name for c in counters)
    method = (
        f"rapl: powercap energy_uj of {domains}, summed; whole sockets during the window, "
        "so other processes and idle power are included"
    )
    return CounterEnergyMeter(counters, method, min_updates=5, min_window_s=0.2)


def rapl_status(root: Path = POWERCAP_ROOT) -> tuple[str | None, str | None]:
    """(method, None) when RAPL is readable here, else (None, reason)."""
    meter = rapl_meter(root)
    if isinstance(meter, NullEnergyMeter):
        return None, meter.reason
    return meter.method, None  # type: ignore[attr-defined]


def nvml_meter(nvml: Any, handle: Any, device_name: str) -> EnergyMeter:
    """NVML's cumulative energy counter (Volta and newer); null with NVML's reason otherwise."""
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # NVMLError_NotSupported and friends
        return NullEnergyMeter(f"NVML energy counter not available on {device_name}: {exc}")
    method = (
        f"nvml: nvmlDeviceGetTotalEnergyConsumption on {device_name}; whole board during the window, "
        "idle power and other processes on the GPU included"
    )
    # The counter updates every ~20-100 ms depending on the board: a window of >= 1 s and
    # 5 updates keeps quantisation under a few percent.
    return CounterEnergyMeter([NvmlCounter(nvml, handle, device_name)], method, min_updates=5, min_window_s=1.0)
