"""Energy meters: RAPL through a fake powercap tree (with a wrap-around), NVML through a fake counter.

This machine has neither counter, so the real readers are driven by stand-ins for the
hardware only (files shaped like /sys/class/powercap, an object answering like pynvml);
everything above them is the code a real run uses. The real NVML path runs in
scripts/gpu_check.sh on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnbench.backends.base import NullEnergyMeter, Timer
from attnbench.backends.energy import CounterEnergyMeter, NvmlCounter, nvml_meter, rapl_counters, rapl_meter
from attnbench.engine.worker import measure_energy

WRAP_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def _zone(root: Path, name: str, label: str, energy_uj: int, wrap_uj: int = WRAP_UJ) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{wrap_uj}\n")
    return z


def _set(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    zones = {
        "pkg0": _zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "dram0": _zone(root, "intel-rapl:0:1", "dram", 500_000),
        "core0": _zone(root, "intel-rapl:0:0", "core", 700_000),  # inside the package figure: not summed
        "pkg1": _zone(root, "intel-rapl:1", "package-1", 2_000_000),
    }
    zones["root"] = root
    return zones


def test_rapl_finds_package_and_dram_domains_only(powercap: dict[str, Path]) -> None:
    counters, reason = rapl_counters(powercap["root"])
    assert reason is None
    assert sorted(c.name for c in counters) == ["dram-0", "package-0", "package-1"]
    assert all(c.wrap_j == pytest.approx(WRAP_UJ / 1e6) for c in counters)


def test_rapl_sums_domains_over_the_window(powercap: dict[str, Path]) -> None:
    meter = rapl_meter(powercap["root"])
    assert isinstance(meter, CounterEnergyMeter)
    meter.min_updates, meter.min_window_s = 3, 0.0
    meter.start()
    for step in range(1, 4):  # three counter updates
        _set(powercap["pkg0"], 1_000_000 + step * 2_000_000)  # +2 J each
        _set(powercap["dram0"], 500_000 + step * 250_000)  # +0.25 J each
        _set(powercap["core0"], 700_000 + step * 9_000_000)  # ignored
        _set(powercap["pkg1"], 2_000_000 + step * 1_000_000)  # +1 J each
        meter.poll()
    reading = meter.stop()
    assert reading.reason is None
    assert reading.joules == pytest.approx(3 * (2 + 0.25 + 1))
    assert reading.details["domains_j"]["package-0"] == pytest.approx(6.0)
    assert reading.details["counter_updates"] == 3
    assert "rapl" in (reading.method or "")


def test_rapl_wrap_around_is_added_back(powercap: dict[str, Path]) -> None:
    near_top = WRAP_UJ - 1_000_000  # 1 J below the wrap
    _set(powercap["pkg0"], near_top)
    meter = rapl_meter(powercap["root"])
    meter.min_updates, meter.min_window_s = 1, 0.0
    meter.start()
    _set(powercap["pkg0"], 2_000_000)  # wrapped: 1 J to the top, then 2 J
    meter.poll()
    reading = meter.stop()
    assert reading.details["wraps"] == 1
    assert reading.details["domains_j"]["package-0"] == pytest.approx(3.0)
    assert reading.joules == pytest.approx(3.0)


def test_too_few_counter_updates_give_null_with_reason(powercap: dict[str, Path]) -> None:
    meter = rapl_meter(powercap["root"])
    meter.start()
    meter.poll()  # nothing changed
    reading = meter.stop()
    assert reading.joules is None
    assert "updated only 0 times" in (reading.reason or "")


def test_no_powercap_tree_means_null_with_reason(tmp_path: Path) -> None:
    meter = rapl_meter(tmp_path / "absent")
    assert isinstance(meter, NullEnergyMeter)
    reading = meter.stop()
    assert reading.joules is None and "no RAPL counter" in (reading.reason or "")


def test_unreadable_energy_file_says_how_to_fix(powercap: dict[str, Path]) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    (powercap["pkg0"] / "energy_uj").chmod(0)
    meter = rapl_meter(powercap["root"])
    assert isinstance(meter, NullEnergyMeter)
    assert "not readable" in meter.reason


class FakeNvml:
    """Answers like pynvml for one board: the energy counter in millijoules, stepped by the test."""

    class NVMLError(Exception):
        pass

    def __init__(self, supported: bool = True) -> None:
        self.mj = 123_456_789
        self.supported = supported

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:  # pynvml's name
        if not self.supported:
            raise self.NVMLError("Not Supported")
        return self.mj


def test_nvml_counter_in_joules_over_a_window() -> None:
    nvml = FakeNvml()
    meter = nvml_meter(nvml, handle=object(), device_name="Fake GPU")
    assert isinstance(meter, CounterEnergyMeter)
    meter.min_window_s = 0.0
    meter.start()
    for _ in range(5):
        nvml.mj += 40_000  # 40 J per update: a 400 W board updating every 100 ms
        meter.poll()
    reading = meter.stop()
    assert reading.joules == pytest.approx(200.0)
    assert "nvml" in (reading.method or "")


def test_nvml_without_energy_counter_is_null_with_reason() -> None:
    meter = nvml_meter(FakeNvml(supported=False), handle=object(), device_name="Old GPU")
    assert isinstance(meter, NullEnergyMeter)
    assert "Old GPU" in meter.reason and "Not Supported" in meter.reason


def test_nvml_counter_going_backwards_is_an_error_not_a_number() -> None:
    nvml = FakeNvml()
    counter = NvmlCounter(nvml, object(), "Fake GPU")
    meter = CounterEnergyMeter([counter], "nvml", min_updates=1, min_window_s=0.0)
    meter.start()
    nvml.mj -= 1000
    with pytest.raises(RuntimeError, match="went backwards"):
        meter.poll()


class CallCounter(Timer):
    clock = "test"
    sync = "none"

    def __init__(self) -> None:
        self.calls = 0

    def time(self, step: object, calls: int) -> float:
        self.calls += calls
        return 0.001 * calls


def test_worker_lengthens_the_window_until_the_counter_has_updated_enough() -> None:
    """The worker keeps calling until `enough()`; joules are divided by the calls made."""
    nvml = FakeNvml()
    meter = nvml_meter(nvml, handle=object(), device_name="Fake GPU")
    meter.min_window_s = 0.0
    timer = CallCounter()
    polls = {"n": 0}
    real_poll = meter.poll

    def poll() -> None:
        polls["n"] += 1
        if polls["n"] % 3 == 0:  # the counter moves on every third poll only
            nvml.mj += 3_000
        real_poll()

    meter.poll = poll  # type: ignore[method-assign]
    reading, calls = measure_energy(lambda: None, timer, meter, per_call_s=0.001)
    assert reading.joules == pytest.approx(15.0)  # 5 updates of 3 J
    assert polls["n"] == 15 + 1  # 15 between blocks, one more as the window closes
    assert calls == timer.calls == 15 * 10  # blocks of ~10 ms of 1 ms calls


def test_worker_skips_the_energy_window_without_a_counter() -> None:
    timer = CallCounter()
    reading, calls = measure_energy(lambda: None, timer, NullEnergyMeter("none here"), per_call_s=0.001)
    assert reading.joules is None and reading.reason == "none here"
    assert calls == 0 and timer.calls == 0
